"""The JSON envelopes of the function HTTP contract and the mapping from errors to statuses."""

from __future__ import annotations

import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, cast

from pipeline.errors import (
    ArtifactNotFoundError,
    BadRequestError,
    EngineUnavailableError,
    InvalidKeyError,
    InvocationError,
    StageError,
    StorageError,
)
from pipeline.telemetry import Telemetry, memory_limit_mb, replica_id


class ErrorKind(StrEnum):
    """The ``error.kind`` values a function returns; clients branch on these."""

    BAD_REQUEST = "bad_request"
    INVALID_KEY = "invalid_key"
    NOT_FOUND = "not_found"
    BAD_INPUT = "bad_input"
    ENGINE_UNAVAILABLE = "engine_unavailable"
    STAGE_FAILED = "stage_failed"
    STORAGE = "storage"
    UPSTREAM = "upstream"
    UNREACHABLE = "unreachable"
    TIMEOUT = "timeout"
    BAD_RESPONSE = "bad_response"
    BUSY = "busy"
    SHUTTING_DOWN = "shutting_down"
    INTERNAL = "internal"


@dataclass(frozen=True)
class ErrorReply:
    """An error as the server returns it: HTTP status, kind, stage, input and message."""

    status: int
    kind: ErrorKind
    stage: str
    input: str
    message: str

    def to_dict(self) -> dict[str, str]:
        return {
            "kind": str(self.kind),
            "stage": self.stage,
            "input": self.input,
            "message": self.message,
        }


def error_reply(exc: BaseException, stage: str) -> ErrorReply:
    """Map an exception raised by an invocation to its HTTP status and error kind.

    A missing artifact is 422, not 404: on an OpenFaaS gateway 404 means "no such function",
    and a client must be able to tell the two apart. An :class:`InvocationError` (the
    orchestrator's call to another function failed) is 422 when that function blamed its
    input with 422, else 500.
    """
    if isinstance(exc, BadRequestError):
        return ErrorReply(400, ErrorKind.BAD_REQUEST, stage, "", str(exc))
    if isinstance(exc, InvalidKeyError):
        return ErrorReply(400, ErrorKind.INVALID_KEY, stage, "", str(exc))
    if isinstance(exc, ArtifactNotFoundError):
        return ErrorReply(422, ErrorKind.NOT_FOUND, stage, "", str(exc))
    if isinstance(exc, StorageError):
        return ErrorReply(500, ErrorKind.STORAGE, stage, "", str(exc))
    if isinstance(exc, EngineUnavailableError):
        return ErrorReply(500, ErrorKind.ENGINE_UNAVAILABLE, exc.stage, exc.input, exc.reason)
    if isinstance(exc, StageError):
        if exc.bad_input:
            return ErrorReply(422, ErrorKind.BAD_INPUT, exc.stage, exc.input, exc.reason)
        return ErrorReply(500, ErrorKind.STAGE_FAILED, exc.stage, exc.input, exc.reason)
    if isinstance(exc, InvocationError):
        # Only a called function's 422 (its input is bad media or missing) blames the request.
        # Any other failure of a called function is the caller's 500, never a 404 or 429
        # that a client would read as being about the caller itself.
        status = 422 if exc.status_code == 422 else 500
        kind = getattr(exc, "kind", None)
        known = kind in ErrorKind._value2member_map_
        return ErrorReply(
            status,
            # Only strings are values of ErrorKind, so a known kind is a str.
            ErrorKind(cast(str, kind)) if known else ErrorKind.UPSTREAM,
            exc.stage,
            exc.input,
            exc.reason,
        )
    return ErrorReply(
        500,
        ErrorKind.INTERNAL,
        stage,
        "",
        f"Unexpected {type(exc).__name__} in {stage}: {exc}. The server log has the traceback.",
    )


def fallback_telemetry(
    stage: str, request_id: str, init_ms: float, start: float, status: str
) -> Telemetry:
    """Build the telemetry of a call that failed before the stage created its own.

    ``start`` is the :func:`time.perf_counter` value when the server received the call.
    """
    telemetry = Telemetry(
        stage=stage,
        request_id=request_id,
        init_ms=round(init_ms, 3),
        replica_id=replica_id(),
        memory_limit_mb=memory_limit_mb(),
        started_at=time.time() - (time.perf_counter() - start),
        status=status,
    )
    return telemetry.finish((time.perf_counter() - start) * 1000.0)


def success_body(output: dict[str, Any], telemetry: Telemetry) -> dict[str, Any]:
    return {"ok": True, "output": output, "telemetry": telemetry.to_dict()}


def error_body(
    reply: ErrorReply, telemetry: Telemetry, output: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Build the error envelope; ``output`` carries a partial result such as a failed chain's."""
    body: dict[str, Any] = {"ok": False, "error": reply.to_dict(), "telemetry": telemetry.to_dict()}
    if output is not None:
        body["output"] = output
    return body
