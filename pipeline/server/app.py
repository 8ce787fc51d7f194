"""The aiohttp application that serves one stage as a function (the function HTTP contract).

``POST /`` reads the whole body (408 past ``VS_BODY_TIMEOUT_S``), then takes an in-flight
slot (429 past ``max_inflight``) and runs one invocation in a thread pool because a stage's
``invoke`` blocks.
``GET /_/health`` returns 200 as soon as the process serves. ``GET /_/ready`` returns 503
until the stage's models are loaded, then 200, and the load starts in the background at
startup. Every ``POST`` response carries the invocation's telemetry and the header
``X-Duration-Seconds``, and writes one JSON line to the ``pipeline.server.events`` logger.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from pipeline.errors import BadRequestError
from pipeline.ids import is_valid_request_id
from pipeline.server.responses import (
    ErrorKind,
    ErrorReply,
    error_body,
    error_reply,
    fallback_telemetry,
    success_body,
)
from pipeline.stages.base import Stage, StageResult
from pipeline.store import ArtifactStore
from pipeline.telemetry import Telemetry, replica_id

logger = logging.getLogger(__name__)
events = logging.getLogger("pipeline.server.events")
"""One JSON object per line: an invocation, or a lifecycle event (listening, ready, stopped)."""

ENV_PORT = "PORT"
ENV_HOST = "VS_HOST"
ENV_MAX_INFLIGHT = "max_inflight"
ENV_DRAIN_TIMEOUT_S = "VS_DRAIN_TIMEOUT_S"
ENV_BODY_TIMEOUT_S = "VS_BODY_TIMEOUT_S"
ENV_WORKER_THREADS = "VS_WORKER_THREADS"

DEFAULT_PORT = 8080
DEFAULT_HOST = "127.0.0.1"
DEFAULT_DRAIN_TIMEOUT_S = 30.0
DEFAULT_BODY_TIMEOUT_S = 30.0
DEFAULT_WORKER_THREADS = 16
"""Threads running invocations when ``max_inflight`` is 0 (no limit); calls beyond wait."""

MAX_BODY_BYTES = 1024 * 1024
"""Requests carry artifact URIs, never media bytes, so 1 MiB is far more than a body needs."""


@dataclass(frozen=True)
class ServerSettings:
    """Listening address and concurrency limits of the function server."""

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    max_inflight: int = 0
    """Calls served at once; one more gets 429. 0 means no limit."""
    drain_timeout_s: float = DEFAULT_DRAIN_TIMEOUT_S
    """How long a SIGTERM waits for in-flight calls before it cancels them."""
    body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S
    """How long a ``POST`` may take to send its whole body before it gets 408."""
    worker_threads: int = DEFAULT_WORKER_THREADS

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> ServerSettings:
        """Read the settings from the environment variables named by the ``ENV_*`` constants.

        Raises ValueError naming the variable when a value is not a valid number.
        """
        env = os.environ if environ is None else environ
        port = _env_number(env, ENV_PORT, DEFAULT_PORT, int)
        max_inflight = _env_number(env, ENV_MAX_INFLIGHT, 0, int)
        drain_timeout_s = _env_number(env, ENV_DRAIN_TIMEOUT_S, DEFAULT_DRAIN_TIMEOUT_S, float)
        body_timeout_s = _env_number(env, ENV_BODY_TIMEOUT_S, DEFAULT_BODY_TIMEOUT_S, float)
        worker_threads = _env_number(env, ENV_WORKER_THREADS, DEFAULT_WORKER_THREADS, int)
        if not 0 <= port <= 65535:
            raise ValueError(f"{ENV_PORT}={port} is not a TCP port; use 0 to 65535.")
        if max_inflight < 0:
            raise ValueError(f"{ENV_MAX_INFLIGHT}={max_inflight} must be 0 (no limit) or more.")
        if worker_threads < 1:
            raise ValueError(f"{ENV_WORKER_THREADS}={worker_threads} must be 1 or more.")
        if not (math.isfinite(body_timeout_s) and body_timeout_s > 0):
            raise ValueError(
                f"{ENV_BODY_TIMEOUT_S}={body_timeout_s} must be a finite number of seconds "
                f"above 0 (default {DEFAULT_BODY_TIMEOUT_S:g})."
            )
        return cls(
            host=env.get(ENV_HOST) or DEFAULT_HOST,
            port=port,
            max_inflight=max_inflight,
            drain_timeout_s=drain_timeout_s,
            body_timeout_s=body_timeout_s,
            worker_threads=max_inflight if max_inflight else worker_threads,
        )


def _env_number(env: Mapping[str, str], name: str, default: Any, kind: type) -> Any:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        return kind(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a valid {kind.__name__}.") from None


def emit_event(event: str, **fields: Any) -> None:
    """Write one JSON line to the events logger."""
    if events.isEnabledFor(logging.INFO):
        events.info("%s", json.dumps({"event": event, **fields}, default=str))


class FunctionServer:
    """Serves one stage instance over HTTP; models load once per process."""

    def __init__(self, stage: Stage, store: ArtifactStore, settings: ServerSettings):
        self.stage = stage
        self.store = store
        self.settings = settings
        self.bound_port: int | None = None
        self.load_error: str | None = None
        self._executor = ThreadPoolExecutor(
            max_workers=settings.worker_threads + 1, thread_name_prefix=f"vs-{stage.name}"
        )
        self._load_lock = threading.Lock()
        self._load_task: asyncio.Future[None] | None = None
        self._inflight = 0
        self._draining = False

    @property
    def ready(self) -> bool:
        return self.stage.init_ms > 0

    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app.router.add_post("/", self.handle_invoke)
        app.router.add_get("/_/health", self.handle_health)
        app.router.add_get("/_/ready", self.handle_ready)
        app.on_startup.append(self._start_loading)
        return app

    async def _start_loading(self, app: web.Application) -> None:
        loop = asyncio.get_running_loop()
        self._load_task = asyncio.ensure_future(loop.run_in_executor(self._executor, self._load))

    def _load(self) -> None:
        try:
            with self._load_lock:
                self.stage.ensure_loaded()
        except Exception as exc:
            self.load_error = str(exc)
            logger.exception("Stage %s failed to load its models", self.stage.name)
            emit_event("load_failed", stage=self.stage.name, message=str(exc))
            return
        self.load_error = None
        logger.info("Stage %s loaded in %.1f ms", self.stage.name, self.stage.init_ms)
        emit_event("ready", stage=self.stage.name, init_ms=round(self.stage.init_ms, 3))

    def _invoke(self, body: Any) -> StageResult:
        # A call that arrives while the models load waits here instead of loading them twice.
        with self._load_lock:
            self.stage.ensure_loaded()
        return self.stage.invoke(body, self.store)

    async def handle_health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "stage": self.stage.name})

    async def handle_ready(self, request: web.Request) -> web.Response:
        body = {
            "ready": self.ready,
            "stage": self.stage.name,
            "init_ms": round(self.stage.init_ms, 3),
            "error": self.load_error,
        }
        return web.json_response(body, status=200 if self.ready else 503)

    async def handle_invoke(self, request: web.Request) -> web.Response:
        start = time.perf_counter()
        if self._draining:
            return self._reply_shutting_down(start)

        # The body is read before an in-flight slot is taken, so a client that sends its body
        # slowly, or never, takes no slot. The read timeout then frees its connection.
        try:
            body = self._parse_json(await self._read_body(request))
        except TimeoutError:
            return self._reply_body_timeout(start)
        except BadRequestError as exc:
            return self._reply_exception(exc, None, start)

        if self._draining:
            return self._reply_shutting_down(start)
        limit = self.settings.max_inflight
        if limit and self._inflight >= limit:
            reply = ErrorReply(
                429,
                ErrorKind.BUSY,
                self.stage.name,
                "",
                f"The {self.stage.name} replica already runs {limit} call(s) "
                f"(max_inflight={limit}); retry later or add replicas.",
            )
            return self._reply_error(reply, None, _request_id_of(body), start, "rejected")

        self._inflight += 1
        try:
            loop = asyncio.get_running_loop()
            result = await loop.run_in_executor(self._executor, self._invoke, body)
            text = json.dumps(success_body(result.output, result.telemetry))
        except Exception as exc:
            return self._reply_exception(exc, body, start)
        finally:
            self._inflight -= 1

        self._log_call(result.telemetry, 200, None)
        return self._respond(text, 200, start)

    async def _read_body(self, request: web.Request) -> bytes:
        """Read the whole body; raises TimeoutError past ``body_timeout_s``."""
        try:
            return await asyncio.wait_for(request.read(), self.settings.body_timeout_s)
        except web.HTTPRequestEntityTooLarge:
            raise BadRequestError(
                f"{self.stage.name}: the request body is larger than {MAX_BODY_BYTES} bytes; "
                "send artifact URIs, not media bytes."
            ) from None

    def _parse_json(self, raw: bytes) -> Any:
        try:
            return json.loads(raw)
        except RecursionError:
            raise BadRequestError(
                f"{self.stage.name}: the request body is nested too deeply to parse; "
                'send a flat JSON object such as {"request_id": "r1", ...}.'
            ) from None
        except (UnicodeDecodeError, ValueError) as exc:
            raise BadRequestError(
                f"{self.stage.name}: the request body is not valid JSON ({exc}); "
                'send an object such as {"request_id": "r1", ...}.'
            ) from exc

    def _reply_shutting_down(self, start: float) -> web.Response:
        reply = ErrorReply(
            503,
            ErrorKind.SHUTTING_DOWN,
            self.stage.name,
            "",
            f"The {self.stage.name} replica is shutting down; retry on another replica.",
        )
        return self._reply_error(reply, None, "", start, "rejected")

    def _reply_body_timeout(self, start: float) -> web.Response:
        timeout_s = self.settings.body_timeout_s
        logger.info(
            "%s closed a connection whose request body did not arrive within %g s",
            self.stage.name,
            timeout_s,
        )
        reply = ErrorReply(
            408,
            ErrorKind.TIMEOUT,
            self.stage.name,
            "",
            f"The request body did not arrive within {timeout_s:g} s "
            f"({ENV_BODY_TIMEOUT_S}={timeout_s:g}); send the whole body at once, or raise "
            f"{ENV_BODY_TIMEOUT_S} for slow clients.",
        )
        response = self._reply_error(reply, None, "", start, "timeout")
        # The rest of the body may never come, so the connection is not reused.
        response.force_close()
        return response

    def _reply_exception(self, exc: Exception, body: Any, start: float) -> web.Response:
        reply = error_reply(exc, self.stage.name)
        request_id = _request_id_of(body)
        if reply.kind is ErrorKind.INTERNAL:
            logger.error(
                "Unexpected error in %s for request %s", self.stage.name, request_id, exc_info=exc
            )
        else:
            logger.info("%s rejected request %s: %s", self.stage.name, request_id, exc)
        telemetry = getattr(exc, "telemetry", None)
        output = getattr(exc, "output", None)
        return self._reply_error(
            reply,
            telemetry if isinstance(telemetry, Telemetry) else None,
            request_id,
            start,
            "error",
            output if isinstance(output, dict) else None,
        )

    def _reply_error(
        self,
        reply: ErrorReply,
        telemetry: Telemetry | None,
        request_id: str,
        start: float,
        status: str,
        output: dict[str, Any] | None = None,
    ) -> web.Response:
        if telemetry is None:
            telemetry = fallback_telemetry(
                self.stage.name, request_id, self.stage.init_ms, start, status
            )
        try:
            text = json.dumps(error_body(reply, telemetry, output))
        except (TypeError, ValueError):
            logger.exception("The partial output of %s is not JSON-serialisable", self.stage.name)
            text = json.dumps(error_body(reply, telemetry))
        self._log_call(telemetry, reply.status, reply.kind)
        return self._respond(text, reply.status, start)

    def _respond(self, text: str, status: int, start: float) -> web.Response:
        headers = {"X-Duration-Seconds": f"{time.perf_counter() - start:.6f}"}
        return web.Response(
            text=text, status=status, content_type="application/json", headers=headers
        )

    def _log_call(self, telemetry: Telemetry, status: int, kind: ErrorKind | None) -> None:
        emit_event(
            "invocation",
            stage=self.stage.name,
            request_id=telemetry.request_id,
            status=status,
            duration_ms=telemetry.duration_ms,
            compute_ms=round(telemetry.compute_ms, 3),
            cold_start=telemetry.cold_start,
            replica_id=telemetry.replica_id,
            error_kind=str(kind) if kind else None,
        )

    async def serve(self, stop: asyncio.Event | None = None) -> None:
        """Serve until ``stop`` is set or SIGTERM/SIGINT arrives, then drain and return.

        Draining stops accepting connections, returns 503 on kept-alive ones, and waits up to
        ``drain_timeout_s`` for in-flight calls to finish.
        """
        loop = asyncio.get_running_loop()
        stop = stop or asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        runner = web.AppRunner(
            self.make_app(),
            handle_signals=False,
            access_log=None,
            shutdown_timeout=self.settings.drain_timeout_s,
        )
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.settings.host, self.settings.port)
            await site.start()
            self.bound_port = runner.addresses[0][1]
            logger.info(
                "Serving %s on http://%s:%s", self.stage.name, self.settings.host, self.bound_port
            )
            emit_event(
                "listening",
                stage=self.stage.name,
                host=self.settings.host,
                port=self.bound_port,
                replica_id=replica_id(),
                max_inflight=self.settings.max_inflight,
            )
            await stop.wait()
            self._draining = True
            logger.info("Draining %s: %d call(s) in flight", self.stage.name, self._inflight)
        finally:
            await runner.cleanup()
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)
            self._executor.shutdown(wait=False, cancel_futures=True)
        emit_event("stopped", stage=self.stage.name, replica_id=replica_id())


def _request_id_of(body: Any) -> str:
    """Return the body's request id, or "" when it is missing or invalid and so unsafe to log."""
    if isinstance(body, dict) and is_valid_request_id(body.get("request_id")):
        return body["request_id"]
    return ""
