"""Call functions through a gateway (``{gateway_url}/function/{name}``) under the function contract.

A call retries on 429 (every replica is at its ``max_inflight``) and on 503 (the replica is
draining or the gateway has no replica yet) until a retry deadline, with capped exponential
backoff and jitter. Both statuses mean "busy", as an of-watchdog with ``max_inflight``
returns them, so a call waits for a free replica the way a gateway that retries them would.
Every other error status, a timeout and an unreachable gateway fail the call at once with
:class:`FunctionCallError`. So does a successful reply of the wrong shape (kind
``bad_response``): an ``output`` that is not an object, or a ``telemetry`` field of the wrong
type, since a later stage or the run's metrics would fail on it.
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
BAD_RESPONSE_KIND = "bad_response"
"""Error kind of a call whose reply is not the contract's JSON or has a field of the wrong type."""

_NUMBER_TELEMETRY_FIELDS = (
    "duration_ms",
    "compute_ms",
    "init_ms",
    "memory_limit_mb",
    "peak_rss_mb",
    "cost_gb_s",
    "started_at",
)
_STRING_TELEMETRY_FIELDS = ("stage", "request_id", "replica_id", "status")


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


class ResponseShapeError(ValueError):
    """A field of a function's reply is missing or of the wrong type.

    The message names the field by its path in the reply (``output``, ``telemetry.extra``,
    ``clips[0].index``) and the expected type, without the function's name.
    """

    @classmethod
    def wrong_type(cls, field: str, value: object, expected: str) -> ResponseShapeError:
        return cls(f"{field} as {json_type_name(value)}; expected {expected}")

    @classmethod
    def missing(cls, field: str, expected: str) -> ResponseShapeError:
        return cls(f"no {field}; expected {expected}")


def json_type_name(value: object) -> str:
    """Return the Python type name of a decoded JSON value, with ``null`` for None."""
    return "null" if value is None else type(value).__name__


def is_number(value: object) -> bool:
    """Return True for an int or float, but not a bool."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def bad_response_error(
    stage: str,
    input: str,
    error: ResponseShapeError,
    telemetry: dict[str, Any],
    *,
    status_code: int | None = 200,
) -> FunctionCallError:
    """Build the ``bad_response`` failure of a call to ``stage`` whose reply has a bad field.

    ``telemetry`` becomes the failure's telemetry with ``status`` set to ``bad_response``.
    """
    message = (
        f"{stage} returned {error}. Check that the deployed {stage} function comes from the "
        "same version of the pipeline as the orchestrator, and read its log."
    )
    request_id = telemetry.get("request_id", "")
    logger.warning("Call to %s for request %s failed: %s", stage, request_id, message)
    telemetry["status"] = BAD_RESPONSE_KIND
    return FunctionCallError(
        stage,
        input,
        message,
        status_code=status_code,
        kind=BAD_RESPONSE_KIND,
        telemetry=telemetry,
    )


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
                stage, input, request_id, start, extra, BAD_RESPONSE_KIND,
                f"{url} returned HTTP {response.status_code} with a body that is not the "
                f"function contract's JSON: {response.text[:200]!r}",
                status_code=response.status_code,
            )  # fmt: skip
        if response.status_code == 200 and payload.get("ok") is True:
            return self._success(stage, input, request_id, start, payload, extra)

        telemetry = _error_reply_telemetry(payload, stage, request_id, start, extra)
        raw_error = payload.get("error")
        error: dict[str, Any] = raw_error if isinstance(raw_error, dict) else {}
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

    def _success(
        self,
        stage: str,
        input: str,
        request_id: str,
        start: float,
        payload: dict[str, Any],
        extra: dict[str, Any],
    ) -> CallResult:
        """Return the result of a 200 ``ok`` reply, or raise ``bad_response`` on a bad field."""
        try:
            telemetry = _reply_telemetry(payload, stage, request_id, start, extra)
        except ResponseShapeError as exc:
            telemetry = _client_telemetry(stage, request_id, start, BAD_RESPONSE_KIND)
            telemetry["extra"] = dict(extra)
            raise bad_response_error(stage, input, exc, telemetry) from exc
        output = payload.get("output")
        if not isinstance(output, dict):
            shape = ResponseShapeError.wrong_type("output", output, "an object")
            if "output" not in payload:
                shape = ResponseShapeError.missing("output", "an object")
            raise bad_response_error(stage, input, shape, telemetry)
        return CallResult(stage, output, telemetry)

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
            telemetry = _error_reply_telemetry(payload, stage, request_id, start, extra)
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
    """Return the body as a JSON object, or None if it is not one.

    JSON nested deeper than the interpreter's recursion limit raises RecursionError, not
    ValueError, so both count as "not JSON".
    """
    try:
        payload = response.json()
    except (ValueError, RecursionError):
        return None
    return payload if isinstance(payload, dict) else None


def _reply_telemetry(
    payload: dict[str, Any], stage: str, request_id: str, start: float, extra: dict[str, Any]
) -> dict[str, Any]:
    """Return the reply's telemetry with ``extra`` merged.

    A field the reply leaves out, or the whole telemetry, comes from the client's clock, so
    every call's telemetry has the same fields.

    Raises:
        ResponseShapeError: ``telemetry`` or one of its fields has the wrong type.
    """
    reply_telemetry = payload.get("telemetry")
    if reply_telemetry is None:
        reply_telemetry = {}
    elif isinstance(reply_telemetry, dict):
        _check_telemetry_fields(reply_telemetry)
    else:
        raise ResponseShapeError.wrong_type("telemetry", reply_telemetry, "an object")
    status = "ok" if payload.get("ok") is True else "error"
    telemetry = {**_client_telemetry(stage, request_id, start, status), **reply_telemetry}
    telemetry["extra"] = {**(telemetry.get("extra") or {}), **extra}
    return telemetry


def _error_reply_telemetry(
    payload: dict[str, Any], stage: str, request_id: str, start: float, extra: dict[str, Any]
) -> dict[str, Any]:
    """Return the telemetry of an error reply, from the client's clock if the reply's is bad.

    The call fails with the function's own error, which is more useful than a bad telemetry field.
    """
    try:
        return _reply_telemetry(payload, stage, request_id, start, extra)
    except ResponseShapeError as exc:
        logger.warning("%s returned %s in an error reply for request %s", stage, exc, request_id)
        telemetry = _client_telemetry(stage, request_id, start, "error")
        telemetry["extra"] = dict(extra)
        return telemetry


def _check_telemetry_fields(telemetry: dict[str, Any]) -> None:
    """Raise ResponseShapeError if a known telemetry field is present with the wrong type.

    The run's metrics sum and average the number fields, so a string there would fail later.
    """
    for name in _NUMBER_TELEMETRY_FIELDS:
        value = telemetry.get(name)
        if value is not None and not is_number(value):
            raise ResponseShapeError.wrong_type(f"telemetry.{name}", value, "a number")
    for name in _STRING_TELEMETRY_FIELDS:
        value = telemetry.get(name)
        if value is not None and not isinstance(value, str):
            raise ResponseShapeError.wrong_type(f"telemetry.{name}", value, "a string")
    cold_start = telemetry.get("cold_start")
    if cold_start is not None and not isinstance(cold_start, bool):
        raise ResponseShapeError.wrong_type("telemetry.cold_start", cold_start, "a boolean")
    extra = telemetry.get("extra")
    if extra is not None and not isinstance(extra, dict):
        raise ResponseShapeError.wrong_type("telemetry.extra", extra, "an object")


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
