"""Settings of the embedded runtime: one value object, defaults as named constants."""

from __future__ import annotations

import dataclasses
import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_HOST = "127.0.0.1"
DEFAULT_RUN_DIR = Path("runs") / "local-runtime"
DEFAULT_NAMESPACE = "openfaas-fn"
DEFAULT_READY_PATH = "/_/ready"
"""Path the runtime polls when a deployment names neither a ready nor a health path."""
READY_PATH_ANNOTATION = "com.openfaas.ready.http.path"
HEALTH_PATH_ANNOTATION = "com.openfaas.health.http.path"

READY_TIMEOUT_S = 60.0
SCALE_FROM_ZERO_TIMEOUT_S = 90.0
START_CHECK_S = 1.0
STOP_GRACE_S = 5.0
UPSTREAM_TIMEOUT_S = 600.0
HEALTH_POLL_INTERVAL_S = 0.05
SCALER_INTERVAL_S = 0.25
SCALE_DOWN_IDLE_S = 15.0
RESTART_BACKOFF_S = 0.5
RESTART_BACKOFF_MAX_S = 15.0
STDERR_TAIL_LINES = 20
DEFAULT_MAX_REPLICAS_PER_FUNCTION = 50
"""Runtime-wide cap on one function's replicas; every replica is a local process."""
REPLICA_START_BATCH = 8
"""Replicas one reconcile step starts before it yields to the event loop."""


@dataclass(frozen=True)
class RuntimeSettings:
    """Settings that control where the embedded runtime listens and how it runs replicas.

    Durations are in seconds. ``port=0`` picks a free port (read it back from
    ``LocalRuntime.url``). Basic auth on ``/system/*`` is off unless ``auth_enabled``. When it
    is on, credentials come from ``username``/``password`` if given, else from the files
    ``basic-auth-user`` and ``basic-auth-password`` in ``secrets_dir``, else from the
    environment variables ``OPENFAAS_USERNAME`` and ``OPENFAAS_PASSWORD``.
    """

    host: str = DEFAULT_HOST
    port: int = 0
    run_dir: Path = DEFAULT_RUN_DIR
    ready_timeout_s: float = READY_TIMEOUT_S
    """How long a new replica may take to return 200 on its ready path."""
    scale_from_zero_timeout_s: float = SCALE_FROM_ZERO_TIMEOUT_S
    """How long a call waits for a ready replica before it gets 504."""
    start_check_s: float = START_CHECK_S
    """How long a deploy waits to catch an envProcess that exits at once."""
    stop_grace_s: float = STOP_GRACE_S
    """Time between SIGTERM and SIGKILL when a replica is stopped."""
    upstream_timeout_s: float = UPSTREAM_TIMEOUT_S
    """Maximum time a replica may take to respond to one call. After it, the call gets 504."""
    health_poll_interval_s: float = HEALTH_POLL_INTERVAL_S
    scaler_interval_s: float = SCALER_INTERVAL_S
    scale_down_idle_s: float = SCALE_DOWN_IDLE_S
    """Idle time after which a replica added for load above the floor is stopped."""
    restart_backoff_s: float = RESTART_BACKOFF_S
    """First delay before retrying a replica that failed to start; doubles per failure."""
    restart_backoff_max_s: float = RESTART_BACKOFF_MAX_S
    max_replicas_per_function: int = DEFAULT_MAX_REPLICAS_PER_FUNCTION
    """Highest replica count of any function. A deployment whose ``com.openfaas.scale.min``
    or ``com.openfaas.scale.max`` label is above it is rejected with 400. A function without
    a max label gets the lower of this cap and 20, OpenFaaS's default max."""
    auth_enabled: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    secrets_dir: Path | None = None

    def __post_init__(self) -> None:
        if self.max_replicas_per_function < 1:
            raise ValueError(
                f"max_replicas_per_function must be at least 1, got "
                f"{self.max_replicas_per_function}."
            )
        object.__setattr__(self, "run_dir", Path(self.run_dir))
        if self.secrets_dir is not None:
            object.__setattr__(self, "secrets_dir", Path(self.secrets_dir))

    def __repr__(self) -> str:
        shown = []
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if item.name == "password" and value is not None:
                value = "***"
            shown.append(f"{item.name}={value!r}")
        return f"RuntimeSettings({', '.join(shown)})"

    @property
    def functions_log_dir(self) -> Path:
        return self.run_dir / "functions"


def is_loopback_host(host: str) -> bool:
    """Tell whether binding ``host`` listens on loopback only.

    ``localhost`` and loopback addresses (127.0.0.0/8, ::1) count as loopback. Any other name
    counts as not loopback because it is not resolved here, and so does the empty string,
    which binds every interface.
    """
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.removeprefix("[").removesuffix("]")).is_loopback
    except ValueError:
        return False
