"""Call functions through a gateway (``{gateway_url}/function/{name}``) under the function contract.

A call retries on 429 (the replica is at its ``max_inflight``) and on 503 (the replica is
draining or the gateway has no replica yet) with exponential backoff, because a full replica
is not a failure the first time. Every other error status, a timeout and an unreachable
gateway fail the call with :class:`FunctionCallError`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import httpx

from pipeline.errors import InvocationError

logger = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({429, 503})


@dataclass(frozen=True)
class RetryPolicy:
    """Retries of a call that found every replica busy; times in seconds."""

    retries: int = 5
    backoff_s: float = 0.25
    """Wait before the first retry; it doubles on each retry up to ``max_backoff_s``."""
    max_backoff_s: float = 4.0

    def delay_s(self, attempt: int) -> float:
        return min(self.backoff_s * (2**attempt), self.max_backoff_s)


class FunctionCallError(InvocationError):
    """A function call failed.

    Attributes:
        kind: the ``error.kind`` the function returned, or ``unreachable``, ``timeout`` or
            ``bad_response`` when no valid reply arrived.
        telemetry: the telemetry dict of the failed call; when the function returned none,
            one built from the client's view (``duration_ms`` is the round trip).
    """

    def __init__(
        self,
        stage: str,
        input: str,
        message: str,
        *,
        status_code: int | None,
        kind: str,
        telemetry: dict[str, Any],
    ):
        super().__init__(stage, input, message, status_code)
        self.kind = kind
        self.telemetry = telemetry


@dataclass
class CallResult:
    """A successful call: the function's output and its telemetry with client-side extras."""

    stage: str
    output: dict[str, Any]
    telemetry: dict[str, Any]


class FunctionClient:
    """Invokes functions by name through one gateway; share one per request chain."""

    def __init__(
        self,
        gateway_url: str,
        http: httpx.AsyncClient,
        *,
        timeout_s: float,
        retry: RetryPolicy,
    ):
        self.gateway_url = gateway_url.rstrip("/")
        self.http = http
        self.timeout_s = timeout_s
        self.retry = retry

    def url(self, stage: str) -> str:
        return f"{self.gateway_url}/function/{stage}"

    async def call(
        self, stage: str, body: dict[str, Any], input: str, extra: dict[str, Any] | None = None
    ) -> CallResult:
        """POST ``body`` to ``stage`` and return its output.

        ``input`` names what the call works on, for error messages. ``extra`` is merged into
        the telemetry's ``extra`` with ``call_ms`` (round trip seen here, retries included),
        ``attempts`` and ``http_status``.

        Raises:
            FunctionCallError: the function returned an error or no valid reply arrived.
        """
        url = self.url(stage)
        request_id = str(body.get("request_id", ""))
        extra = dict(extra or {})
        start = time.perf_counter()
        attempt = 0
        while True:
            try:
                response = await self.http.post(url, json=body, timeout=self.timeout_s)
            except httpx.TimeoutException as exc:
                raise self._no_reply(
                    stage, input, request_id, start, extra, "timeout",
                    f"no reply from {url} within {self.timeout_s:g} s ({type(exc).__name__}); "
                    "raise call_timeout_s or check the function's log",
                ) from exc  # fmt: skip
            except httpx.TransportError as exc:
                raise self._no_reply(
                    stage, input, request_id, start, extra, "unreachable",
                    f"cannot reach {url}: {exc!r}; check that the gateway runs and the "
                    "function is deployed",
                ) from exc  # fmt: skip
            if response.status_code in RETRY_STATUSES and attempt < self.retry.retries:
                delay_s = self.retry.delay_s(attempt)
                attempt += 1
                logger.info(
                    "%s returned %d for request %s; retry %d/%d in %.2f s",
                    stage,
                    response.status_code,
                    request_id,
                    attempt,
                    self.retry.retries,
                    delay_s,
                )
                await asyncio.sleep(delay_s)
                continue
            break

        extra.update(
            call_ms=round((time.perf_counter() - start) * 1000.0, 3),
            attempts=attempt + 1,
            http_status=response.status_code,
        )
        payload = _json_or_none(response)
        if payload is None:
            raise self._no_reply(
                stage, input, request_id, start, extra, "bad_response",
                f"{url} returned HTTP {response.status_code} with a body that is not the "
                f"function contract's JSON: {response.text[:200]!r}",
                status_code=response.status_code,
            )  # fmt: skip
        telemetry = payload.get("telemetry")
        telemetry = (
            dict(telemetry)
            if isinstance(telemetry, dict)
            else _client_telemetry(stage, request_id, start, "error")
        )
        telemetry["extra"] = {**(telemetry.get("extra") or {}), **extra}
        if response.status_code == 200 and payload.get("ok") is True:
            output = payload.get("output")
            return CallResult(stage, output if isinstance(output, dict) else {}, telemetry)

        error = payload.get("error") if isinstance(payload.get("error"), dict) else {}
        raise FunctionCallError(
            str(error.get("stage") or stage),
            str(error.get("input") or input),
            str(
                error.get("message")
                or f"HTTP {response.status_code} from {url}: {payload.get('message') or payload}"
            ),
            status_code=response.status_code,
            kind=str(error.get("kind") or "upstream"),
            telemetry=telemetry,
        )

    def _no_reply(
        self,
        stage: str,
        input: str,
        request_id: str,
        start: float,
        extra: dict[str, Any],
        kind: str,
        message: str,
        status_code: int | None = None,
    ) -> FunctionCallError:
        telemetry = _client_telemetry(stage, request_id, start, kind)
        extra.setdefault("call_ms", telemetry["duration_ms"])
        telemetry["extra"] = extra
        logger.warning("Call to %s for request %s failed: %s", stage, request_id, message)
        return FunctionCallError(
            stage, input, message, status_code=status_code, kind=kind, telemetry=telemetry
        )


def _json_or_none(response: httpx.Response) -> dict[str, Any] | None:
    try:
        payload = response.json()
    except ValueError:
        return None
    return payload if isinstance(payload, dict) else None


def _client_telemetry(stage: str, request_id: str, start: float, status: str) -> dict[str, Any]:
    """Build the telemetry of a call that returned none, from the client's clock."""
    duration_ms = round((time.perf_counter() - start) * 1000.0, 3)
    return {
        "stage": stage,
        "request_id": request_id,
        "duration_ms": duration_ms,
        "compute_ms": 0.0,
        "init_ms": 0.0,
        "cold_start": False,
        "replica_id": "",
        "memory_limit_mb": 0,
        "peak_rss_mb": 0.0,
        "cost_gb_s": 0.0,
        "started_at": time.time() - duration_ms / 1000.0,
        "status": status,
        "extra": {},
    }
