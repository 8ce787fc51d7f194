"""Deployment regimes: how many replicas a function keeps, and how a cold start is forced."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class ColdStrategy(enum.Enum):
    """How the ``cold`` regime makes the next call start a new replica."""

    AUTO = "auto"
    SCALE_TO_ZERO = "scale_to_zero"
    REDEPLOY = "redeploy"
    NONE = "none"


@dataclass
class RegimeConfig:
    """One deployment regime, as composed from ``conf/regime/*.yaml``.

    ``min_replicas`` and ``max_replicas`` become ``com.openfaas.scale.min``/``.max``;
    ``scale_to_zero`` and ``zero_duration_s`` become ``.zero``/``.zero-duration``;
    ``target_inflight`` is ``.target``, the in-flight requests per replica before scale-up.
    ``prescale_replicas`` replicas are made ready before the load (burst-ready);
    ``warmup_calls`` calls per function are made before the load (warm).
    """

    name: str = "warm"
    min_replicas: int = 1
    max_replicas: int = 5
    scale_to_zero: bool = False
    zero_duration_s: float = 30.0
    target_inflight: int = 1
    prescale_replicas: int = 0
    warmup_calls: int = 0
    cold_strategy: str = ColdStrategy.AUTO.value
