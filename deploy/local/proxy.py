"""Invocation: ``/function/NAME[.NAMESPACE][/path]`` proxied to one replica."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from urllib.parse import quote

import aiohttp
import yarl
from aiohttp import web

from deploy.local.api import (
    METRICS_KEY,
    SCALER_KEY,
    error_response,
    function_label,
    split_namespace,
)
from deploy.local.replicas import Replica
from deploy.local.scaler import CallRejectedError
from deploy.local.settings import DEFAULT_NAMESPACE

logger = logging.getLogger(__name__)

SESSION_KEY = web.AppKey("proxy_session", aiohttp.ClientSession)
UPSTREAM_TIMEOUT_KEY = web.AppKey("upstream_timeout_s", float)

EXIT_WAIT_S = 0.5
"""How long a failed call waits for its replica's exit, to report the exit code and stderr."""

_HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection",
        "Keep-Alive",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
        "Host",
        "Content-Length",
    )
)


_PATH_SAFE = "/%:@!$&'()*+,;=-._~"
"""Characters kept as they are in a forwarded path: RFC 3986 pchar, '/' and '%' (so existing
escapes stay as sent)."""
_QUERY_SAFE = _PATH_SAFE + "?"


def upstream_target(request: web.Request) -> str:
    """Return the path and query to send to the replica, percent-encoded as the caller sent them.

    The path is whatever follows ``/function/NAME`` in the raw request target, so escapes such
    as ``%20``, ``%2F``, ``%3F``, ``%23`` or ``%00`` reach the replica unchanged. Characters
    that may not appear in a URL at all are percent-encoded.
    """
    raw_path = request.rel_url.raw_path
    segments = raw_path.split("/", 3)  # "", "function", "NAME[.NAMESPACE]", tail
    tail = segments[3] if len(segments) == 4 else ""
    target = "/" + quote(tail, safe=_PATH_SAFE)
    query = request.rel_url.raw_query_string
    if query:
        target += "?" + quote(query, safe=_QUERY_SAFE)
    return target


def _forward_headers(request: web.Request, call_id: str, start_ns: str) -> dict[str, str]:
    headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
    client = request.remote or ""
    previous = request.headers.get("X-Forwarded-For")
    headers["X-Forwarded-For"] = f"{previous}, {client}" if previous else client
    headers.setdefault("X-Forwarded-Host", request.host)
    headers["X-Call-Id"] = call_id
    headers["X-Start-Time"] = start_ns
    return headers


async def _crash_message(replica: Replica, call_id: str, exc: BaseException) -> str:
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(replica.exited.wait(), EXIT_WAIT_S)
    if replica.exited.is_set():
        state = f"exited with code {replica.exit_code}"
    else:
        state = "is still running"
    return (
        f"Replica {replica.replica_id} of {replica.function_name!r} failed while serving call "
        f"{call_id} ({type(exc).__name__}: {exc}); the replica {state}. Its stderr ends with: "
        f"{replica.stderr_tail() or '(nothing)'}"
    )


BUSY_LOG_INTERVAL_S = 10.0
"""Within this interval, further 429 rejections of one function are counted, not logged."""


class _BusyRejectionLog:
    """Log a function's 429 rejections at most once per interval, with the count since.

    A burst against full replicas makes many rejections that callers retry. One line per
    interval keeps the log readable. The count of suppressed rejections appears on the next
    line logged, so the last batch of a burst is not counted in the log (the metrics count
    every retry).
    """

    def __init__(self, interval_s: float = BUSY_LOG_INTERVAL_S):
        self.interval_s = interval_s
        self._last_logged: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def record(self, name: str, call_id: str, message: str) -> None:
        now = time.monotonic()
        last = self._last_logged.get(name)
        if last is not None and now - last < self.interval_s:
            self._suppressed[name] = self._suppressed.get(name, 0) + 1
            return
        suppressed = self._suppressed.pop(name, 0)
        self._last_logged[name] = now
        more = f" ({suppressed} more since the last report)" if suppressed else ""
        logger.warning("Call %s to %s rejected with 429%s: %s", call_id, name, more, message)


_BUSY_LOG = _BusyRejectionLog()


async def invoke(request: web.Request) -> web.StreamResponse:
    started = time.perf_counter()
    name, namespace = split_namespace(request.match_info["name"])
    scaler = request.app[SCALER_KEY]
    fn = scaler.functions.get(name)
    if fn is None or namespace not in ("", DEFAULT_NAMESPACE):
        return error_response(404, f"Function {request.match_info['name']!r} not found.", "name")

    body = await request.read()
    call_id = request.headers.get("X-Call-Id") or str(uuid.uuid4())
    start_ns = request.headers.get("X-Start-Time") or str(time.time_ns())
    try:
        replica = await scaler.acquire(fn)
    except CallRejectedError as exc:
        if exc.status_code == 429:
            _BUSY_LOG.record(name, call_id, str(exc))
        else:
            logger.warning(
                "Call %s to %s rejected with %d: %s", call_id, name, exc.status_code, exc
            )
        return _finish(request, fn, error_response(exc.status_code, str(exc)), started, call_id)

    timeout = aiohttp.ClientTimeout(total=request.app[UPSTREAM_TIMEOUT_KEY])
    try:
        url = yarl.URL(replica.base_url + upstream_target(request), encoded=True)
        async with request.app[SESSION_KEY].request(
            request.method,
            url,
            data=body,
            headers=_forward_headers(request, call_id, start_ns),
            timeout=timeout,
            allow_redirects=False,
        ) as upstream:
            payload = await upstream.read()
            response = web.Response(body=payload, status=upstream.status)
            for key, value in upstream.headers.items():
                if key.lower() not in _HOP_BY_HOP:
                    response.headers.add(key, value)
    except TimeoutError:
        message = (
            f"Replica {replica.replica_id} of {name!r} did not answer call {call_id} within "
            f"{request.app[UPSTREAM_TIMEOUT_KEY]:g} s (upstream_timeout_s)."
        )
        logger.error("%s", message)
        response = error_response(504, message)
    except aiohttp.ClientError as exc:
        message = await _crash_message(replica, call_id, exc)
        logger.error("%s", message)
        response = error_response(502, message)
    except Exception as exc:  # noqa: BLE001 - a proxy bug must cost one call, not the server
        logger.exception(
            "Proxying call %s to replica %s of %s failed", call_id, replica.replica_id, name
        )
        response = error_response(
            502,
            f"The runtime failed to proxy call {call_id} to replica {replica.replica_id} of "
            f"{name!r} ({type(exc).__name__}: {exc}); see the runtime log.",
        )
    finally:
        scaler.release(fn, replica)
    return _finish(request, fn, response, started, call_id)


def _finish(request, fn, response: web.Response, started: float, call_id: str) -> web.Response:
    duration_s = time.perf_counter() - started
    fn.invocation_count += 1
    request.app[METRICS_KEY].record(function_label(fn.name), response.status, duration_s)
    response.headers["X-Duration-Seconds"] = f"{duration_s:.6f}"
    response.headers.setdefault("X-Call-Id", call_id)
    return response


def add_invoke_routes(app: web.Application) -> None:
    app.router.add_route("*", "/function/{name}", invoke)
    app.router.add_route("*", "/function/{name}/{tail:.*}", invoke)
