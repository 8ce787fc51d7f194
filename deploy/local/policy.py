"""Scaling policy of one function, read from its OpenFaaS labels and envVars."""

from __future__ import annotations

import re
from dataclasses import dataclass

from deploy.errors import DeploymentInvalidError
from deploy.local.settings import DEFAULT_MAX_REPLICAS_PER_FUNCTION
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
"""OpenFaaS's default ``com.openfaas.scale.max``."""
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
_GO_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(ns|us|µs|ms|s|m|h)")
_ASCII_INTEGER = re.compile(r"[0-9]+")
_MAX_DIGITS = 18
"""Maximum digit count of a whole number in a label or envVar, so that the value fits an int64."""


def parse_go_duration(text: str) -> float:
    """Parse a Go duration such as ``"30s"``, ``"1m30s"`` or ``"1.5h"`` into seconds.

    A bare number is read as seconds. Raises ValueError for anything else.
    """
    text = text.strip()
    if re.fullmatch(r"[0-9]+(?:\.[0-9]+)?", text):
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


def _parse_whole_number(raw: str, name: str) -> int:
    """Parse ASCII decimal digits with optional spaces around; ``name`` starts the error.

    ``int()`` alone also takes signs, underscores and non-ASCII digits such as ``"\u0660"``.
    Raises DeploymentInvalidError for anything else or for more than ``_MAX_DIGITS`` digits.
    """
    text = raw.strip()
    if not _ASCII_INTEGER.fullmatch(text):
        raise DeploymentInvalidError(
            f"{name} must be a whole number written in ASCII digits, got {raw!r}; fix it."
        )
    if len(text) > _MAX_DIGITS:
        raise DeploymentInvalidError(
            f"{name} has {len(text)} digits, more than the {_MAX_DIGITS} allowed; "
            "use a smaller number."
        )
    return int(text)


def _int_label(
    labels: dict[str, str], key: str, default: int, minimum: int, maximum: int | None = None
) -> int:
    raw = labels.get(key)
    if raw is None or raw == "":
        return default
    value = _parse_whole_number(raw, f"Label {key!r}")
    if value < minimum:
        raise DeploymentInvalidError(f"Label {key!r} must be at least {minimum}, got {value}.")
    if maximum is not None and value > maximum:
        raise DeploymentInvalidError(
            f"Label {key!r} is {value}, above this runtime's limit of {maximum} replicas per "
            f"function (max_replicas_per_function); set it to at most {maximum}."
        )
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
    def from_deployment(
        cls,
        deployment: FunctionDeployment,
        *,
        max_replicas_cap: int = DEFAULT_MAX_REPLICAS_PER_FUNCTION,
    ) -> ScalePolicy:
        """Read the policy; raise DeploymentInvalidError naming the bad label or envVar.

        ``max_replicas_cap`` is the runtime's limit on replicas per function: a min or max
        label above it is rejected, and the default max is lowered to it. Raises ValueError
        when the cap is below 1.
        """
        if max_replicas_cap < 1:
            raise ValueError(f"max_replicas_cap must be at least 1, got {max_replicas_cap}.")
        labels = deployment.labels
        default_max = min(DEFAULT_MAX_REPLICAS, max_replicas_cap)
        min_replicas = _int_label(
            labels, LABEL_SCALE_MIN, DEFAULT_MIN_REPLICAS, 0, max_replicas_cap
        )
        max_replicas = _int_label(labels, LABEL_SCALE_MAX, default_max, 1, max_replicas_cap)
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
            max_inflight = _parse_whole_number(raw_limit, f"envVars.{MAX_INFLIGHT_ENV}")

        return cls(
            min_replicas=min_replicas,
            max_replicas=max_replicas,
            scale_to_zero=zero_raw == "true",
            zero_duration_s=zero_duration_s,
            target_inflight=target,
            max_inflight=max_inflight,
        )
