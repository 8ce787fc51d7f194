"""Scaling policy of one function, read from its OpenFaaS labels and envVars."""

from __future__ import annotations

import re
from dataclasses import dataclass

from deploy.errors import DeploymentInvalidError
from deploy.models import (
    LABEL_SCALE_MAX,
    LABEL_SCALE_MIN,
    LABEL_SCALE_TARGET,
    LABEL_SCALE_ZERO,
    LABEL_SCALE_ZERO_DURATION,
    FunctionDeployment,
)

DEFAULT_MIN_REPLICAS = 1
DEFAULT_MAX_REPLICAS = 20
DEFAULT_TARGET_INFLIGHT = 1
"""In-flight calls per replica before scale-up. OpenFaaS Pro defaults to 50 for its
``capacity`` type; 1 suits the pipeline's CPU-bound functions, which serve one call at a time."""
DEFAULT_ZERO_DURATION_S = 15 * 60.0
"""OpenFaaS Pro's default idle time before scale to zero (15m)."""
MAX_INFLIGHT_ENV = "max_inflight"
"""The of-watchdog's environment variable for the per-replica in-flight limit."""

_GO_DURATION_UNITS_S = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_GO_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")


def parse_go_duration(text: str) -> float:
    """Parse a Go duration such as ``"30s"``, ``"1m30s"`` or ``"1.5h"`` into seconds.

    A bare number is read as seconds. Raises ValueError for anything else.
    """
    text = text.strip()
    if re.fullmatch(r"\d+(?:\.\d+)?", text):
        return float(text)
    if not text:
        raise ValueError("empty duration")
    position = 0
    total_s = 0.0
    for match in _GO_DURATION_PART.finditer(text):
        if match.start() != position:
            break
        total_s += float(match.group(1)) * _GO_DURATION_UNITS_S[match.group(2)]
        position = match.end()
    if position != len(text):
        raise ValueError(f"{text!r} is not a Go duration such as 30s, 2m or 1m30s")
    return total_s


def _int_label(labels: dict[str, str], key: str, default: int, minimum: int) -> int:
    raw = labels.get(key)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw.strip())
    except ValueError as exc:
        raise DeploymentInvalidError(
            f"Label {key!r} must be an integer, got {raw!r}; fix the label."
        ) from exc
    if value < minimum:
        raise DeploymentInvalidError(f"Label {key!r} must be at least {minimum}, got {value}.")
    return value


@dataclass(frozen=True)
class ScalePolicy:
    """Replica bounds and autoscaling rules of one function."""

    min_replicas: int = DEFAULT_MIN_REPLICAS
    max_replicas: int = DEFAULT_MAX_REPLICAS
    scale_to_zero: bool = False
    zero_duration_s: float = DEFAULT_ZERO_DURATION_S
    target_inflight: int = DEFAULT_TARGET_INFLIGHT
    max_inflight: int = 0
    """Per-replica in-flight limit; 0 means no limit."""

    @classmethod
    def from_deployment(cls, deployment: FunctionDeployment) -> ScalePolicy:
        """Read the policy; raise DeploymentInvalidError naming the bad label or envVar."""
        labels = deployment.labels
        min_replicas = _int_label(labels, LABEL_SCALE_MIN, DEFAULT_MIN_REPLICAS, 0)
        max_replicas = _int_label(labels, LABEL_SCALE_MAX, DEFAULT_MAX_REPLICAS, 1)
        if min_replicas > max_replicas:
            raise DeploymentInvalidError(
                f"Label {LABEL_SCALE_MIN!r} ({min_replicas}) is above {LABEL_SCALE_MAX!r} "
                f"({max_replicas}); set min at most max."
            )
        target = _int_label(labels, LABEL_SCALE_TARGET, DEFAULT_TARGET_INFLIGHT, 1)

        zero_raw = labels.get(LABEL_SCALE_ZERO, "false").strip().lower()
        if zero_raw not in ("true", "false", ""):
            raise DeploymentInvalidError(
                f"Label {LABEL_SCALE_ZERO!r} must be 'true' or 'false', got {zero_raw!r}."
            )
        zero_duration_s = DEFAULT_ZERO_DURATION_S
        if LABEL_SCALE_ZERO_DURATION in labels:
            raw = labels[LABEL_SCALE_ZERO_DURATION]
            try:
                zero_duration_s = parse_go_duration(raw)
            except ValueError as exc:
                raise DeploymentInvalidError(
                    f"Label {LABEL_SCALE_ZERO_DURATION!r} is invalid: {exc}."
                ) from exc

        max_inflight = 0
        raw_limit = deployment.env_vars.get(MAX_INFLIGHT_ENV)
        if raw_limit:
            try:
                max_inflight = int(raw_limit)
            except ValueError as exc:
                raise DeploymentInvalidError(
                    f"envVars.{MAX_INFLIGHT_ENV} must be an integer, got {raw_limit!r}."
                ) from exc
            if max_inflight < 0:
                raise DeploymentInvalidError(
                    f"envVars.{MAX_INFLIGHT_ENV} must be 0 (no limit) or more, got {max_inflight}."
                )

        return cls(
            min_replicas=min_replicas,
            max_replicas=max_replicas,
            scale_to_zero=zero_raw == "true",
            zero_duration_s=zero_duration_s,
            target_inflight=target,
            max_inflight=max_inflight,
        )
