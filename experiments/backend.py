"""Start the embedded runtime or reach an OpenFaaS gateway, and check the credentials.

The embedded runtime is started on 127.0.0.1 with basic auth and a password generated for
this run, which is never logged. An OpenFaaS gateway is checked with ``GET /healthz`` (is it
there?) and ``GET /system/functions`` (are the credentials right?) before anything deploys.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from deploy.client import GatewayClient
from deploy.errors import DeployError, GatewayAuthError, GatewayError, GatewayUnreachableError
from deploy.local import LocalRuntime, RuntimeSettings
from experiments.config import LocalBackendConfig, OpenFaasBackendConfig
from experiments.errors import BackendError, ConfigError

logger = logging.getLogger(__name__)

LOCAL_USERNAME = "admin"
LOCAL_CLIENT_TIMEOUT_S = 30.0
PASSWORD_BYTES = 24


@dataclass
class Backend:
    """A reachable gateway: the client the runner uses and the URL the functions use."""

    kind: str
    client: GatewayClient
    url: str
    function_gateway_url: str
    runtime: LocalRuntime | None = None
    credentials: tuple[str, str | None] = field(default=("admin", None), repr=False)

    def new_client(self) -> GatewayClient:
        """Return another client of the same gateway, for use from another thread."""
        username, password = self.credentials
        return GatewayClient(
            self.url, username=username, password=password, timeout_s=self.client.timeout_s
        )

    def close(self) -> None:
        """Close the client and stop the embedded runtime with its replicas, if any."""
        self.client.close()
        if self.runtime is not None:
            logger.info("Stopping the embedded runtime at %s", self.url)
            self.runtime.stop()
            self.runtime = None


def open_backend(config: LocalBackendConfig | OpenFaasBackendConfig, run_dir: Path) -> Backend:
    """Start or reach the backend; raise BackendError saying what to fix."""
    if isinstance(config, LocalBackendConfig):
        return _start_local(config, run_dir)
    return _reach_openfaas(config)


def _start_local(config: LocalBackendConfig, run_dir: Path) -> Backend:
    password = secrets.token_urlsafe(PASSWORD_BYTES)
    settings = RuntimeSettings(
        host=config.host,
        port=config.port,
        run_dir=run_dir / "runtime",
        ready_timeout_s=config.ready_timeout_s,
        scale_from_zero_timeout_s=config.scale_from_zero_timeout_s,
        auth_enabled=True,
        username=LOCAL_USERNAME,
        password=password,
    )
    runtime = LocalRuntime(settings)
    try:
        runtime.start()
    except (DeployError, OSError) as exc:
        raise BackendError(
            f"Cannot start the embedded runtime on {config.host}:{config.port}: {exc}. "
            "Choose another backend.port, or 0 for a free one."
        ) from exc
    logger.info(
        "Started the embedded runtime at %s (functions log to %s)",
        runtime.url,
        settings.functions_log_dir,
    )
    client = GatewayClient(
        runtime.url, username=LOCAL_USERNAME, password=password, timeout_s=LOCAL_CLIENT_TIMEOUT_S
    )
    backend = Backend(
        kind="local",
        client=client,
        url=runtime.url,
        function_gateway_url=runtime.url,
        runtime=runtime,
        credentials=(LOCAL_USERNAME, password),
    )
    try:
        _check_gateway(client, runtime.url, "backend.port")
    except BackendError:
        backend.close()
        raise
    return backend


def _read_password(config: OpenFaasBackendConfig) -> str:
    if not config.password_file:
        return config.password
    path = Path(config.password_file).expanduser()
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(
            f"backend.password_file {str(path)!r} cannot be read: {exc.strerror}. Fix the "
            "path, or leave it empty and set OPENFAAS_PASSWORD."
        ) from exc


def _reach_openfaas(config: OpenFaasBackendConfig) -> Backend:
    password = _read_password(config)
    if not password:
        raise ConfigError(
            f"No password for the OpenFaaS gateway at {config.url}; set OPENFAAS_PASSWORD, "
            "backend.password_file or backend.password."
        )
    client = GatewayClient(
        config.url, username=config.username, password=password, timeout_s=config.timeout_s
    )
    _check_gateway(client, config.url, "backend.url")
    logger.info("Reached the OpenFaaS gateway at %s as %s", config.url, config.username)
    return Backend(
        kind="openfaas",
        client=client,
        url=config.url.rstrip("/"),
        function_gateway_url=(config.function_gateway_url or config.url).rstrip("/"),
        credentials=(config.username, password),
    )


def _check_gateway(client: GatewayClient, url: str, setting: str) -> None:
    try:
        client.healthz()
    except GatewayUnreachableError as exc:
        client.close()
        raise BackendError(f"{exc} (the gateway URL comes from {setting})") from exc
    except GatewayError as exc:
        client.close()
        raise BackendError(f"The gateway at {url} failed its health check: {exc}.") from exc
    try:
        client.list_functions()
    except GatewayAuthError as exc:
        client.close()
        raise BackendError(
            f"The gateway at {url} rejected the credentials of user {client.username!r}; set "
            "the right OPENFAAS_PASSWORD (or backend.password_file) and backend.username."
        ) from exc
    except GatewayError as exc:
        client.close()
        raise BackendError(f"Cannot list the functions of the gateway at {url}: {exc}.") from exc
