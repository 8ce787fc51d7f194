"""The embedded runtime: the aiohttp server, its lifecycle, and a thread-hosted handle."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from dataclasses import dataclass
from types import TracebackType

import aiohttp
from aiohttp import web

from deploy.errors import DeployError
from deploy.local.api import (
    CREDENTIALS_KEY,
    METRICS_KEY,
    SCALER_KEY,
    add_system_routes,
    basic_auth_middleware,
)
from deploy.local.auth import load_credentials
from deploy.local.metrics import GatewayMetrics
from deploy.local.proxy import SESSION_KEY, UPSTREAM_TIMEOUT_KEY, add_invoke_routes
from deploy.local.scaler import Scaler
from deploy.local.settings import RuntimeSettings, is_loopback_host

logger = logging.getLogger(__name__)

START_TIMEOUT_S = 30.0
"""Longest ``LocalRuntime.start`` waits for the server to listen."""


@dataclass(frozen=True)
class ReplicaSnapshot:
    """One replica as seen at a moment: ``url`` reaches the process directly."""

    replica_id: str
    pid: int | None
    url: str
    state: str
    inflight: int
    generation: int


class RuntimeServer:
    """The server and its scaler on the running event loop."""

    def __init__(self, settings: RuntimeSettings):
        self.settings = settings
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self.scaler: Scaler | None = None

    async def start(self) -> str:
        """Listen on ``settings.host:settings.port``; return the base URL."""
        settings = self.settings
        credentials = None
        if settings.auth_enabled:
            credentials = load_credentials(
                settings.username, settings.password, settings.secrets_dir
            )
        settings.functions_log_dir.mkdir(parents=True, exist_ok=True)

        connector = aiohttp.TCPConnector(limit=0, force_close=False)
        self._session = aiohttp.ClientSession(connector=connector, auto_decompress=False)
        self.scaler = Scaler(settings, self._session)

        app = web.Application(middlewares=[basic_auth_middleware], client_max_size=64 * 2**20)
        app[SCALER_KEY] = self.scaler
        app[METRICS_KEY] = GatewayMetrics()
        app[SESSION_KEY] = self._session
        app[UPSTREAM_TIMEOUT_KEY] = settings.upstream_timeout_s
        if credentials is not None:
            app[CREDENTIALS_KEY] = credentials
        add_system_routes(app)
        add_invoke_routes(app)

        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, settings.host, settings.port)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://{settings.host}:{port}"
        self.scaler.start()
        logger.info(
            "Embedded runtime listening on %s (basic auth %s, run dir %s)",
            self.url,
            "on" if credentials else "off",
            settings.run_dir,
        )
        if not is_loopback_host(settings.host):
            logger.warning(
                "The embedded runtime at %s listens beyond loopback; %s",
                self.url,
                "/system/* needs basic auth, but /function/* calls are open to anyone who "
                "can reach the port"
                if credentials
                else "basic auth is off, so anyone who can reach the port can deploy a "
                "function and so run any command as this user",
            )
        return self.url

    async def stop(self) -> None:
        """Stop every replica, then the server."""
        if self.scaler is not None:
            await self.scaler.shutdown()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()
        logger.info("Embedded runtime at %s stopped", self.url)


class LocalRuntime:
    """The embedded runtime served from a background thread with its own event loop.

    ``start()`` returns once the server listens; ``url`` is then its base URL. ``stop()``
    stops every replica (SIGTERM, SIGKILL after ``stop_grace_s``) and the server. Replicas
    also die with SIGKILL if the runtime's thread or process ends without ``stop()``.
    """

    def __init__(self, settings: RuntimeSettings | None = None):
        self.settings = settings or RuntimeSettings()
        self._server = RuntimeServer(self.settings)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        if not self._server.url:
            raise DeployError("The embedded runtime is not started; call start() first.")
        return self._server.url

    def start(self) -> LocalRuntime:
        if self._thread is not None:
            return self
        started: concurrent.futures.Future[str] = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=self._serve, args=(started,), name="local-runtime", daemon=True
        )
        self._thread.start()
        try:
            started.result(timeout=START_TIMEOUT_S)
        except concurrent.futures.TimeoutError as exc:
            raise DeployError(
                f"The embedded runtime did not start listening within {START_TIMEOUT_S:g} s."
            ) from exc
        except BaseException:
            self._thread.join()
            self._thread = None
            raise
        return self

    def _serve(self, started: concurrent.futures.Future[str]) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            try:
                url = loop.run_until_complete(self._server.start())
            except BaseException as exc:
                loop.run_until_complete(self._server.stop())
                started.set_exception(exc)
                return
            started.set_result(url)
            loop.run_forever()
            loop.run_until_complete(self._server.stop())
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def replicas(self, name: str) -> list[ReplicaSnapshot]:
        """Snapshot of a function's replicas (empty for an unknown function)."""
        if self._loop is None:
            raise DeployError("The embedded runtime is not started; call start() first.")
        future = asyncio.run_coroutine_threadsafe(self._snapshot(name), self._loop)
        return future.result(timeout=START_TIMEOUT_S)

    async def _snapshot(self, name: str) -> list[ReplicaSnapshot]:
        scaler = self._server.scaler
        fn = scaler.functions.get(name) if scaler is not None else None
        if fn is None:
            return []
        return [
            ReplicaSnapshot(
                replica_id=r.replica_id,
                pid=r.pid,
                url=r.base_url,
                state=r.state.value,
                inflight=r.inflight,
                generation=r.generation,
            )
            for r in fn.replicas
        ]

    def stop(self) -> None:
        if self._thread is None or self._loop is None:
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._thread = None
        self._loop = None

    def __enter__(self) -> LocalRuntime:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
