"""Deployment regimes: how many replicas a function keeps, and how a cold start is forced.

A regime is validated once (:func:`validate_regime`), turned into OpenFaaS scaling labels
(:func:`labels_for`), and applied before a load starts by :func:`settle`, which brings the
deployed functions into the regime's starting state.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

from deploy.errors import DeployError, DeploymentInvalidError, ReadinessTimeoutError
from deploy.models import (
    LABEL_SCALE_MAX,
    LABEL_SCALE_MIN,
    LABEL_SCALE_TARGET,
    LABEL_SCALE_TYPE,
    LABEL_SCALE_ZERO,
    LABEL_SCALE_ZERO_DURATION,
    FunctionDeployment,
    FunctionStatus,
)

logger = logging.getLogger(__name__)


class ColdStrategy(enum.Enum):
    """Method by which the ``cold`` regime makes the next call start a new replica."""

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


class RegimeKind(enum.Enum):
    """The starting state :func:`settle` establishes, derived from a regime's fields."""

    COLD = "cold"
    WARM = "warm"
    BURST_READY = "burst_ready"


SCALE_TYPE_CAPACITY = "capacity"
"""OpenFaaS Pro scaling mode that counts in-flight requests per replica, as ``target_inflight``."""

VS_DEPLOY_NONCE = "VS_DEPLOY_NONCE"
"""Environment variable changed by the ``redeploy`` cold strategy so the platform starts new
replicas."""

DEFAULT_ROLLOUT_GRACE_S = 30.0
"""Time the ``redeploy`` strategy waits after the new replicas report ready, so that a
rolling update can stop the old replicas."""

EMBEDDED_PROVIDER_NAMES = frozenset({"videosearcher-local"})
"""``/system/info`` provider names of the embedded runtime (``deploy.local``), which can
scale to zero."""

SCALE_TO_ZERO_PROVIDER_MARKERS = ("pro", "edge", "enterprise")
"""Words in a provider name that mark an OpenFaaS edition with scale to zero (Pro, Edge)."""


def validate_regime(regime: Any) -> RegimeConfig:
    """Return ``regime`` as a checked :class:`RegimeConfig`.

    ``regime`` is a RegimeConfig, a plain mapping or an OmegaConf node. Raise
    :class:`DeploymentInvalidError` naming the field when a value has the wrong type or the
    values contradict each other (min above max, negative counts, an unknown cold_strategy).
    """
    config = _as_regime_config(regime)
    name = config.name or "<unnamed>"

    def invalid(field_name: str, problem: str) -> DeploymentInvalidError:
        return DeploymentInvalidError(
            f"Regime {name!r}: field {field_name!r} {problem}; fix conf/regime/{name}.yaml "
            f"or the override regime.{field_name}=..."
        )

    if config.min_replicas < 0:
        raise invalid("min_replicas", f"is {config.min_replicas}, it must be 0 or more")
    if config.max_replicas < 1:
        raise invalid("max_replicas", f"is {config.max_replicas}, it must be 1 or more")
    if config.min_replicas > config.max_replicas:
        raise invalid(
            "min_replicas",
            f"({config.min_replicas}) is above max_replicas ({config.max_replicas})",
        )
    if config.prescale_replicas < 0:
        raise invalid("prescale_replicas", f"is {config.prescale_replicas}, it must be 0 or more")
    if config.prescale_replicas > config.max_replicas:
        raise invalid(
            "prescale_replicas",
            f"({config.prescale_replicas}) is above max_replicas ({config.max_replicas})",
        )
    if config.min_replicas == 0 and config.prescale_replicas > 0:
        raise invalid(
            "prescale_replicas",
            f"is {config.prescale_replicas} but min_replicas is 0, so the prescaled replicas "
            "would be scaled down again; set min_replicas to the prescale count",
        )
    if config.warmup_calls < 0:
        raise invalid("warmup_calls", f"is {config.warmup_calls}, it must be 0 or more")
    if config.min_replicas == 0 and config.warmup_calls > 0:
        raise invalid(
            "warmup_calls",
            f"is {config.warmup_calls} in a regime with min_replicas 0; a warm-up call would "
            "leave a warm replica, so set it to 0",
        )
    if config.target_inflight < 1:
        raise invalid("target_inflight", f"is {config.target_inflight}, it must be 1 or more")
    if config.scale_to_zero and config.zero_duration_s <= 0:
        raise invalid(
            "zero_duration_s",
            f"is {config.zero_duration_s}, it must be above 0 seconds when scale_to_zero is true",
        )
    choices = ", ".join(s.value for s in ColdStrategy)
    try:
        ColdStrategy(config.cold_strategy)
    except ValueError:
        raise invalid(
            "cold_strategy", f"is {config.cold_strategy!r}, choose one of: {choices}"
        ) from None
    return config


def _as_regime_config(regime: Any) -> RegimeConfig:
    if isinstance(regime, RegimeConfig):
        return dataclasses.replace(regime)

    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        merged = OmegaConf.merge(OmegaConf.structured(RegimeConfig), regime)
        return cast(RegimeConfig, OmegaConf.to_object(merged))
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or getattr(exc, "key", None) or "?"
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DeploymentInvalidError(
            f"Regime field {key!r} is invalid: {reason}. Fix conf/regime/*.yaml or the "
            "regime override."
        ) from exc
    except (TypeError, ValueError) as exc:
        raise DeploymentInvalidError(
            f"The regime must be a mapping of RegimeConfig fields, got {type(regime).__name__}."
        ) from exc


def regime_kind(regime: RegimeConfig) -> RegimeKind:
    """Return the starting state that a regime requests.

    ``min_replicas`` 0 means cold, a ``prescale_replicas`` above 0 means burst-ready, and
    anything else is warm. The regime's ``name`` is only a label and does not decide.
    """
    if regime.min_replicas == 0:
        return RegimeKind.COLD
    if regime.prescale_replicas > 0:
        return RegimeKind.BURST_READY
    return RegimeKind.WARM


def _go_duration(seconds: float) -> str:
    if float(seconds).is_integer():
        return f"{int(seconds)}s"
    return f"{seconds:g}s"


def labels_for(regime: Any, *, backend_kind: str = "local") -> dict[str, str]:
    """Return the ``com.openfaas.scale.*`` labels of a regime.

    ``.zero-duration`` is a Go duration such as ``10s``; ``.type`` is ``capacity`` because
    ``.target`` counts in-flight requests per replica. On ``backend_kind="openfaas"`` the min
    label is at least 1: OpenFaaS reads it as the replica count under load (default 1) and
    scales to zero only through the separate ``.zero`` label (OpenFaaS Pro autoscaling docs).
    """
    config = validate_regime(regime)
    min_replicas = config.min_replicas
    if backend_kind == "openfaas":
        min_replicas = max(1, min_replicas)
    return {
        LABEL_SCALE_MIN: str(min_replicas),
        LABEL_SCALE_MAX: str(config.max_replicas),
        LABEL_SCALE_ZERO: "true" if config.scale_to_zero else "false",
        LABEL_SCALE_ZERO_DURATION: _go_duration(config.zero_duration_s),
        LABEL_SCALE_TARGET: str(config.target_inflight),
        LABEL_SCALE_TYPE: SCALE_TYPE_CAPACITY,
    }


@dataclass(frozen=True)
class PlatformInfo:
    """Platform facts from a gateway's ``GET /system/info`` response.

    ``scale_to_zero`` is None when the platform does not state it, so it is inferred from
    the provider name.
    """

    provider: str = ""
    orchestration: str = ""
    version: str = ""
    scale_to_zero: bool | None = None

    @classmethod
    def from_info(cls, info: Any) -> PlatformInfo:
        """Read the OpenFaaS gateway's info body, or the provider's own, into a PlatformInfo.

        The gateway nests the provider as ``{"provider": {"provider": NAME, "orchestration":
        ..., "version": {"release": ...}}}``, and a provider returns the inner object itself.
        An explicit ``scaleToZero`` boolean at either level wins over the name.
        """
        if isinstance(info, PlatformInfo):
            return info
        if hasattr(info, "to_json"):
            info = info.to_json()
        if not isinstance(info, Mapping):
            raise DeploymentInvalidError(
                f"Platform info must be the JSON object of GET /system/info, got "
                f"{type(info).__name__}."
            )
        inner = info.get("provider")
        provider_body: Mapping[str, Any] = inner if isinstance(inner, Mapping) else info
        name = provider_body.get("provider") if inner is not None else None
        if not isinstance(name, str):
            name = inner if isinstance(inner, str) else ""
        version = provider_body.get("version") or info.get("version") or ""
        if isinstance(version, Mapping):
            version = version.get("release", "")
        explicit = None
        for body in (provider_body, info):
            for key in ("scaleToZero", "scale_to_zero"):
                if isinstance(body.get(key), bool):
                    explicit = body[key]
        return cls(
            provider=name,
            orchestration=str(provider_body.get("orchestration") or ""),
            version=str(version),
            scale_to_zero=explicit,
        )

    @property
    def supports_scale_to_zero(self) -> bool:
        """True for the embedded runtime and OpenFaaS Pro or Edge (faasd Pro) providers.

        OpenFaaS Community Edition (provider ``faas-netes-ce``, ``faas-netes``, ``faasd``)
        clamps every scale request to 1..5 replicas, so it cannot.
        """
        if self.scale_to_zero is not None:
            return self.scale_to_zero
        name = self.provider.strip().lower()
        if name in EMBEDDED_PROVIDER_NAMES:
            return True
        # NOTE: the provider names of the Pro editions are inferred from their product
        # names; set cold_strategy explicitly if a Pro gateway reports another name.
        words = name.replace("_", "-").split("-")
        return any(marker in words for marker in SCALE_TO_ZERO_PROVIDER_MARKERS)


def resolve_cold_strategy(regime: Any, platform_info: Any) -> ColdStrategy:
    """Choose how to force cold starts for ``regime`` on the platform ``platform_info``.

    ``auto`` becomes ``scale_to_zero`` where the platform supports it, else ``redeploy``;
    it becomes ``none`` for regimes that keep replicas (min_replicas above 0). An explicit
    strategy is kept as given. Requesting ``scale_to_zero`` on a platform without it logs a
    warning, because that platform keeps one replica.
    """
    config = validate_regime(regime)
    platform = PlatformInfo.from_info(platform_info)
    strategy = ColdStrategy(config.cold_strategy)

    if strategy is ColdStrategy.AUTO:
        if regime_kind(config) is not RegimeKind.COLD:
            return ColdStrategy.NONE
        if platform.supports_scale_to_zero:
            return ColdStrategy.SCALE_TO_ZERO
        return ColdStrategy.REDEPLOY
    if strategy is ColdStrategy.SCALE_TO_ZERO and not platform.supports_scale_to_zero:
        logger.warning(
            "Regime %s requests cold_strategy=scale_to_zero but provider %r does not report "
            "scale to zero; OpenFaaS Community Edition keeps 1 replica, use redeploy there",
            config.name,
            platform.provider,
        )
    return strategy


class RegimeClient(Protocol):
    """The gateway client operations :func:`settle` uses (``deploy.client.GatewayClient``)."""

    def status(self, name: str) -> FunctionStatus: ...

    def scale(self, name: str, replicas: int) -> Any: ...

    def update(self, deployment: FunctionDeployment) -> Any: ...

    def info(self) -> Any: ...

    def wait_ready(
        self, name: str, replicas: int = 1, *, timeout_s: float, progress: Any = None
    ) -> Any: ...

    def wait_scaled_to(
        self, name: str, replicas: int, *, timeout_s: float, progress: Any = None
    ) -> Any: ...


WarmupCall = Callable[[str], None]
"""Callable that makes one valid call to the named function, with a body the caller builds."""


@dataclass
class SettleReport:
    """Record of a :func:`settle` step: the regime kind, the cold strategy and the replicas reached.

    ``replicas`` maps each function to its available replicas when settle returned;
    ``deploy_nonce`` is the ``VS_DEPLOY_NONCE`` value set by the ``redeploy`` strategy.
    """

    regime: str
    kind: RegimeKind
    cold_strategy: ColdStrategy
    replicas: dict[str, int] = field(default_factory=dict)
    warmup_calls: dict[str, int] = field(default_factory=dict)
    deploy_nonce: str | None = None
    duration_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "regime": self.regime,
            "kind": self.kind.value,
            "cold_strategy": self.cold_strategy.value,
            "replicas": dict(self.replicas),
            "warmup_calls": dict(self.warmup_calls),
            "deploy_nonce": self.deploy_nonce,
            "duration_s": self.duration_s,
        }


class _Deadline:
    def __init__(self, timeout_s: float):
        self.timeout_s = timeout_s
        self.end = time.monotonic() + timeout_s

    def remaining(self, what: str) -> float:
        left = self.end - time.monotonic()
        if left <= 0:
            raise ReadinessTimeoutError(
                f"Settling the regime took longer than {self.timeout_s:g} s before {what}; "
                "raise the timeout or check the functions' logs."
            )
        return left


def settle(
    client: RegimeClient,
    deployments: Sequence[FunctionDeployment],
    regime: Any,
    *,
    timeout_s: float,
    progress: Any = None,
    warmup: WarmupCall | None = None,
    platform_info: Any = None,
    rollout_grace_s: float = DEFAULT_ROLLOUT_GRACE_S,
) -> SettleReport:
    """Bring deployed functions into the regime's starting state before a load.

    - cold: no replica is up. ``scale_to_zero`` scales every function to 0 and waits.
      ``redeploy`` updates each function with a new ``VS_DEPLOY_NONCE`` so that the platform
      starts fresh replicas. Where the platform keeps a replica, it waits for the new ones
      and then ``rollout_grace_s`` seconds for the old ones to stop.
    - warm: at least ``max(1, min_replicas)`` ready replicas per function.
    - burst_ready: ``prescale_replicas`` ready replicas per function.
    Warm and burst-ready then make ``warmup_calls`` calls per function through ``warmup``.

    ``timeout_s`` bounds the whole step; ``progress`` is passed to the client's waits.
    ``platform_info`` defaults to ``client.info()``. Raise :class:`ReadinessTimeoutError`
    when replicas do not come up in time, :class:`DeploymentInvalidError` for a bad regime
    or a missing ``warmup`` callable, and :class:`DeployError` when a warm-up call fails.
    """
    started = time.monotonic()
    config = validate_regime(regime)
    kind = regime_kind(config)
    if kind is not RegimeKind.COLD and config.warmup_calls > 0 and warmup is None:
        raise DeploymentInvalidError(
            f"Regime {config.name!r} requests {config.warmup_calls} warm-up call(s) per "
            "function but settle() got no warmup callable; pass warmup= or set "
            "regime.warmup_calls=0."
        )
    if platform_info is None:
        platform_info = client.info()
    strategy = resolve_cold_strategy(config, platform_info)
    if kind is not RegimeKind.COLD:
        strategy = ColdStrategy.NONE
    deadline = _Deadline(timeout_s)
    report = SettleReport(regime=config.name, kind=kind, cold_strategy=strategy)
    logger.info(
        "Settling %d function(s) into regime %s (%s, cold strategy %s)",
        len(deployments),
        config.name,
        kind.value,
        strategy.value,
    )

    if kind is RegimeKind.COLD:
        _settle_cold(
            client,
            deployments,
            strategy,
            deadline,
            progress,
            report,
            platform_info,
            rollout_grace_s,
        )
    else:
        target = config.prescale_replicas if kind is RegimeKind.BURST_READY else None
        _settle_ready(client, deployments, config, target, deadline, progress)
        _warm_up(deployments, config.warmup_calls, warmup, report)

    for deployment in deployments:
        report.replicas[deployment.service] = client.status(deployment.service).available_replicas
    report.duration_s = time.monotonic() - started
    logger.info(
        "Regime %s settled in %.1f s: replicas %s", config.name, report.duration_s, report.replicas
    )
    return report


def _settle_cold(
    client: RegimeClient,
    deployments: Sequence[FunctionDeployment],
    strategy: ColdStrategy,
    deadline: _Deadline,
    progress: Any,
    report: SettleReport,
    platform_info: Any,
    rollout_grace_s: float,
) -> None:
    if strategy is ColdStrategy.SCALE_TO_ZERO:
        for deployment in deployments:
            client.scale(deployment.service, 0)
        for deployment in deployments:
            client.wait_scaled_to(
                deployment.service,
                0,
                timeout_s=deadline.remaining(f"{deployment.service} scaled to 0"),
                progress=progress,
            )
        return

    if strategy is ColdStrategy.REDEPLOY:
        nonce = uuid.uuid4().hex[:12]
        report.deploy_nonce = nonce
        for deployment in deployments:
            env_vars = {**deployment.env_vars, VS_DEPLOY_NONCE: nonce}
            client.update(dataclasses.replace(deployment, env_vars=env_vars))
        if PlatformInfo.from_info(platform_info).supports_scale_to_zero:
            return
        # The platform keeps at least one replica: wait for the new ones.
        for deployment in deployments:
            client.wait_ready(
                deployment.service,
                1,
                timeout_s=deadline.remaining(f"{deployment.service} redeployed"),
                progress=progress,
            )
        # NOTE: the status API cannot tell an old replica from a new one during a rolling
        # update, so this grace period is what lets Kubernetes stop the old replicas.
        if rollout_grace_s > 0:
            time.sleep(min(rollout_grace_s, deadline.remaining("the rollout grace period")))


def _settle_ready(
    client: RegimeClient,
    deployments: Sequence[FunctionDeployment],
    config: RegimeConfig,
    prescale: int | None,
    deadline: _Deadline,
    progress: Any,
) -> None:
    targets: dict[str, int] = {}
    for deployment in deployments:
        name = deployment.service
        if prescale is not None:
            targets[name] = prescale
            client.scale(name, prescale)
            continue
        targets[name] = max(1, config.min_replicas)
        if client.status(name).replicas < targets[name]:
            client.scale(name, targets[name])
    for name, replicas in targets.items():
        client.wait_ready(
            name,
            replicas,
            timeout_s=deadline.remaining(f"{name} had {replicas} ready replica(s)"),
            progress=progress,
        )


def _warm_up(
    deployments: Sequence[FunctionDeployment],
    calls: int,
    warmup: WarmupCall | None,
    report: SettleReport,
) -> None:
    if calls == 0 or warmup is None:
        return
    for deployment in deployments:
        name = deployment.service
        for number in range(1, calls + 1):
            try:
                warmup(name)
            except Exception as exc:
                raise DeployError(
                    f"Warm-up call {number} of {calls} to function {name!r} failed: {exc}. "
                    "Check the function's logs, or set regime.warmup_calls=0."
                ) from exc
            report.warmup_calls[name] = number
