"""Call functions through a gateway (``{gateway_url}/function/{name}``) under the function contract.

A call retries on 429 (every replica is at its ``max_inflight``) and on 503 (the replica is
draining or the gateway has no replica yet) until a retry deadline, with capped exponential
backoff and jitter. Both statuses mean "busy", as an of-watchdog with ``max_inflight``
returns them, so a call waits for a free replica the way a gateway that retries them would.
Every other error status, a timeout and an unreachable gateway fail the call at once with
:class:`FunctionCallError`.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass
from typing import Any

import httpx

from pipeline.errors import InvocationError

logger = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({429, 503})
"""Statuses that mean every replica is busy or draining, so the call is retried."""
BUSY_KIND = "busy"
"""Error kind of a call that stayed busy past its retry deadline, when the reply names none."""


@dataclass(frozen=True)
class RetryPolicy:
    """Retries of a call that found every replica busy (HTTP 429 or 503); times in seconds.

    A call retries until ``deadline_s`` after its first attempt; 0 disables retries. The
    wait before retry ``n`` (from 0) is ``min(backoff_s * 2**n, max_backoff_s)``, shortened
    by a random fraction of at most ``jitter``. So callers rejected together spread out,
    and no wait is longer than ``max_backoff_s``.
    """

    deadline_s: float = 120.0
    backoff_s: float = 0.25
    max_backoff_s: float = 4.0
    jitter: float = 0.5
    """Largest fraction of a wait that is cut at random, from 0 (none) to 1."""

    def __post_init__(self) -> None:
        if self.deadline_s < 0:
            raise ValueError(f"deadline_s must not be negative, not {self.deadline_s}.")
        if self.backoff_s <= 0 or self.max_backoff_s < self.backoff_s:
            raise ValueError(
                f"backoff_s ({self.backoff_s}) must be above 0 and at most max_backoff_s "
                f"({self.max_backoff_s})."
            )
        if not 0.0 <= self.jitter <= 1.0:
            raise ValueError(f"jitter must be between 0 and 1, not {self.jitter}.")

    def delay_s(self, retry: int, rng: random.Random) -> float:
        """Return the wait before retry ``retry`` (0 for the first), in seconds."""
        # The exponent is capped so that a long deadline cannot overflow the float.
        ceiling = min(self.backoff_s * 2.0 ** min(retry, 62), self.max_backoff_s)
        return ceiling * (1.0 - self.jitter * rng.random())


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
    """Invokes functions by name through one gateway; share one per request chain.

    ``rng`` draws the retry jitter; None uses an unseeded generator.
    """

    def __init__(
        self,
        gateway_url: str,
        http: httpx.AsyncClient,
        *,
        timeout_s: float,
        retry: RetryPolicy,
        rng: random.Random | None = None,
    ):
        self.gateway_url = gateway_url.rstrip("/")
        self.http = http
        self.timeout_s = timeout_s
        self.retry = retry
        self.rng = rng or random.Random()

    def url(self, stage: str) -> str:
        return f"{self.gateway_url}/function/{stage}"

    @property
    def retry_deadline_s(self) -> float:
        """Retry deadline of a call: the policy's, but never past the call timeout."""
        return min(self.retry.deadline_s, self.timeout_s)

    async def call(
        self, stage: str, body: dict[str, Any], input: str, extra: dict[str, Any] | None = None
    ) -> CallResult:
        """POST ``body`` to ``stage`` and return its output.

        ``input`` names what the call works on, for error messages. ``extra`` is merged into
        the telemetry's ``extra`` with ``call_ms`` (round trip seen here, retries included),
        ``attempts`` (1 when the first attempt was not rejected as busy) and ``http_status``.
        It also gets ``throttled_ms``: the time from the first attempt to the start of the
        last one, or the whole call when it stayed busy.

        Raises:
            FunctionCallError: the function returned an error, no valid reply arrived, or
                every attempt until the retry deadline got 429 or 503 (kind ``busy``).
        """
        url = self.url(stage)
        request_id = str(body.get("request_id", ""))
        extra = dict(extra or {})
        start = time.perf_counter()
        deadline = start + self.retry_deadline_s
        attempts = 0
        while True:
            attempts += 1
            extra.update(attempts=attempts, throttled_ms=0.0 if attempts == 1 else _ms_since(start))
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
            if response.status_code not in RETRY_STATUSES:
                break
            remaining_s = deadline - time.perf_counter()
            if remaining_s <= 0:
                extra["throttled_ms"] = _ms_since(start)
                break
            delay_s = min(self.retry.delay_s(attempts - 1, self.rng), remaining_s)
            # The first retry of a call is logged at INFO; the rest would repeat it.
            logger.log(
                logging.INFO if attempts == 1 else logging.DEBUG,
                "%s returned %d for request %s on %s; retry %d in %.2f s (deadline %.0f s)",
                stage,
                response.status_code,
                request_id,
                input,
                attempts,
                delay_s,
                self.retry_deadline_s,
            )
            await asyncio.sleep(delay_s)

        extra.update(call_ms=_ms_since(start), http_status=response.status_code)
        payload = _json_or_none(response)
        if response.status_code in RETRY_STATUSES:
            raise self._busy(stage, input, request_id, start, response, payload, extra)
        if payload is None:
            raise self._no_reply(
                stage, input, request_id, start, extra, "bad_response",
                f"{url} returned HTTP {response.status_code} with a body that is not the "
                f"function contract's JSON: {response.text[:200]!r}",
                status_code=response.status_code,
            )  # fmt: skip
        telemetry = _reply_telemetry(payload, stage, request_id, start, extra)
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

    def _busy(
        self,
        stage: str,
        input: str,
        request_id: str,
        start: float,
        response: httpx.Response,
        payload: dict[str, Any] | None,
        extra: dict[str, Any],
    ) -> FunctionCallError:
        """Build the error of a call still rejected as busy at its retry deadline.

        A watchdog may send its 429 as plain text, so the body need not be the contract's JSON.
        """
        error: dict[str, Any] = {}
        cause = response.text[:200].strip() or "(empty body)"
        if payload is not None:
            if isinstance(payload.get("error"), dict):
                error = payload["error"]
            cause = str(error.get("message") or payload.get("message") or payload)
        elapsed_s = time.perf_counter() - start
        message = (
            f"{stage} stayed busy for input {input}: {extra['attempts']} attempt(s) over "
            f"{elapsed_s:.1f} s got HTTP {response.status_code} (retry deadline "
            f"{self.retry_deadline_s:g} s) with the message: {cause.rstrip('. ')}. Raise the "
            f"function's max_inflight (pipeline.functions.{stage}.max_inflight) or the "
            "regime's max_replicas (regime.max_replicas), or the orchestrator's retry_deadline_s."
        )
        logger.warning("Request %s: %s", request_id, message)
        if payload is None:
            telemetry = _client_telemetry(stage, request_id, start, "rejected")
            telemetry["extra"] = dict(extra)
        else:
            telemetry = _reply_telemetry(payload, stage, request_id, start, extra)
        return FunctionCallError(
            stage,
            input,
            message,
            status_code=response.status_code,
            kind=str(error.get("kind") or BUSY_KIND),
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


def _reply_telemetry(
    payload: dict[str, Any], stage: str, request_id: str, start: float, extra: dict[str, Any]
) -> dict[str, Any]:
    """Return the reply's telemetry, or one from the client's clock, with ``extra`` merged."""
    telemetry = payload.get("telemetry")
    if isinstance(telemetry, dict):
        telemetry = dict(telemetry)
    else:
        telemetry = _client_telemetry(stage, request_id, start, "error")
    telemetry["extra"] = {**(telemetry.get("extra") or {}), **extra}
    return telemetry


def _ms_since(start: float) -> float:
    return round((time.perf_counter() - start) * 1000.0, 3)


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
