"""Per-request rows: what the locustfile writes as JSON lines, and the tables built from them.

A row contains the columns of the requests table plus ``invocations``, the telemetry of every
stage call from the orchestrator's response with the orchestrator's own telemetry last.
This module imports no Locust, so the runner can read the rows while the load runs.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

REQUEST_COLUMNS = (
    "request_id",
    "start_s",
    "latency_ms",
    "ok",
    "http_status",
    "error_kind",
    "error_message",
    "cold_starts",
    "phase",
)
INVOCATION_COLUMNS = (
    "request_id",
    "stage",
    "started_at",
    "duration_ms",
    "compute_ms",
    "init_ms",
    "cold_start",
    "replica_id",
    "memory_limit_mb",
    "peak_rss_mb",
    "cost_gb_s",
    "status",
)
RETRY_COLUMNS: dict[str, int | float] = {"attempts": 1, "throttled_ms": 0.0}
"""Invocation columns read from the orchestrator's ``extra`` telemetry, each with the value
used when it is missing (the orchestrator's own row, runs of older versions). ``attempts``
counts the HTTP calls made for one stage call, 1 meaning no retry. ``throttled_ms`` is the
time lost to replies of 429 or 503 before the last attempt."""
INVOCATION_TABLE_COLUMNS = INVOCATION_COLUMNS + tuple(RETRY_COLUMNS)
"""Columns of the invocations table a run writes. Readers require only INVOCATION_COLUMNS,
so tables written before the retry columns existed still load."""
TIMELINE_COLUMNS = ("t_s", "function", "replicas", "available_replicas")

KIND_TIMEOUT = "timeout"
KIND_CONNECTION = "connection"
KIND_HTTP_5XX = "http_5xx"
KIND_HTTP_4XX = "http_4xx"
STAGE_FAILED_PREFIX = "stage_failed:"
BUSY_STATUSES = frozenset({429, 503})
"""HTTP statuses with which a platform rejects a call because every replica is busy."""
MESSAGE_MAX_CHARS = 500


@dataclass
class Outcome:
    """The outcome of one request, and the stage telemetry its response carried."""

    ok: bool
    error_kind: str = ""
    error_message: str = ""
    invocations: list[dict[str, Any]] = field(default_factory=list)

    @property
    def cold_starts(self) -> int:
        return sum(1 for item in self.invocations if item.get("cold_start") is True)


def classify(status_code: int, body: Any, error: BaseException | None) -> Outcome:
    """Classify one orchestrator response.

    ``error`` is the transport exception (no response arrived). A body that names a failed
    stage gives ``stage_failed:<stage>`` whatever the status. Otherwise a 5xx is
    ``http_5xx`` and a 4xx is ``http_4xx``. A 200 whose body is not ``ok`` is
    ``stage_failed:orchestrator``.
    """
    if error is not None:
        kind = KIND_TIMEOUT if _is_timeout(error) else KIND_CONNECTION
        return Outcome(False, kind, _short(f"{type(error).__name__}: {error}"))

    invocations = extract_invocations(body)
    failure = _failure(body)
    if failure is not None and failure[0] not in ("", "orchestrator"):
        return Outcome(False, STAGE_FAILED_PREFIX + failure[0], _short(failure[1]), invocations)
    message = failure[1] if failure is not None else _short(str(body))
    if status_code >= 500:
        return Outcome(False, KIND_HTTP_5XX, _short(f"HTTP {status_code}: {message}"), invocations)
    if status_code >= 400:
        return Outcome(False, KIND_HTTP_4XX, _short(f"HTTP {status_code}: {message}"), invocations)
    if failure is not None or not isinstance(body, Mapping) or body.get("ok") is not True:
        return Outcome(False, STAGE_FAILED_PREFIX + "orchestrator", _short(message), invocations)
    return Outcome(True, invocations=invocations)


def _is_timeout(error: BaseException) -> bool:
    names = {cls.__name__ for cls in type(error).__mro__}
    return bool(names & {"Timeout", "TimeoutError", "ReadTimeout", "ConnectTimeout"}) or (
        "timed out" in str(error).lower()
    )


def _short(text: str) -> str:
    return text if len(text) <= MESSAGE_MAX_CHARS else text[: MESSAGE_MAX_CHARS - 3] + "..."


def _failure(body: Any) -> tuple[str, str] | None:
    """Return ``(stage, message)`` of the failure a body reports, or None."""
    if not isinstance(body, Mapping):
        return None
    output = body.get("output")
    candidates = [body.get("error")]
    if isinstance(output, Mapping):
        candidates.insert(0, output.get("error"))
        status = output.get("status")
        if status not in (None, "ok") and not any(candidates):
            return "", f"the orchestrator returned status {status!r}"
    for error in candidates:
        if isinstance(error, Mapping):
            stage = str(error.get("stage") or "")
            message = str(error.get("message") or error)
            return stage, message
        if error:
            return "", str(error)
    if body.get("ok") is False:
        return "", "the response has ok=false and no error"
    return None


def extract_invocations(body: Any) -> list[dict[str, Any]]:
    """Return the stage telemetry of a response, with the orchestrator's own last."""
    if not isinstance(body, Mapping):
        return []
    output = body.get("output")
    listed = output.get("invocations") if isinstance(output, Mapping) else None
    if listed is None:
        listed = body.get("invocations")
    invocations = [dict(item) for item in listed or [] if isinstance(item, Mapping)]
    own = body.get("telemetry")
    if isinstance(own, Mapping) and not any(
        item.get("stage") == own.get("stage")
        and item.get("replica_id") == own.get("replica_id")
        and item.get("started_at") == own.get("started_at")
        for item in invocations
    ):
        invocations.append(dict(own))
    return invocations


def request_row(
    *,
    request_id: str,
    start_s: float,
    latency_ms: float,
    http_status: int,
    outcome: Outcome,
    phase: str,
) -> dict[str, Any]:
    """Return one JSON line: the requests-table columns plus ``invocations``."""
    return {
        "request_id": request_id,
        "start_s": start_s,
        "latency_ms": latency_ms,
        "ok": outcome.ok,
        "http_status": http_status,
        "error_kind": outcome.error_kind,
        "error_message": outcome.error_message,
        "cold_starts": outcome.cold_starts,
        "phase": phase,
        "invocations": outcome.invocations,
    }


def invocation_rows(row: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Return the invocations-table rows of one request row, retry columns included."""
    rows = []
    for item in row.get("invocations") or []:
        entry = {column: item.get(column) for column in INVOCATION_COLUMNS}
        entry["request_id"] = item.get("request_id") or row["request_id"]
        extra = item.get("extra")
        extra = extra if isinstance(extra, Mapping) else {}
        for column, default in RETRY_COLUMNS.items():
            value = extra.get(column)
            entry[column] = type(default)(value) if isinstance(value, (int, float)) else default
        rows.append(entry)
    return rows


def busy_stage(row: Mapping[str, Any]) -> str | None:
    """Return the stage whose call failed because every replica stayed busy, or None.

    That is a failed invocation whose last reply, as the orchestrator recorded it in
    ``extra.http_status``, was 429 or 503.
    """
    if row.get("ok"):
        return None
    for item in row.get("invocations") or []:
        extra = item.get("extra")
        if not isinstance(extra, Mapping) or item.get("status") == "ok":
            continue
        if extra.get("http_status") in BUSY_STATUSES:
            return str(item.get("stage") or "")
    return None


class JsonLinesTail:
    """Reads the rows appended to the JSON-lines files of a folder since the last read.

    A line still being written (no newline yet) is left for the next read.
    """

    def __init__(self, folder: Path, pattern: str = "requests*.jsonl"):
        self.folder = folder
        self.pattern = pattern
        self._offsets: dict[Path, int] = {}

    def read_new(self) -> list[dict[str, Any]]:
        rows: list[dict[str, Any] | None] = []
        for path in sorted(self.folder.glob(self.pattern)):
            offset = self._offsets.get(path, 0)
            with path.open("rb") as handle:
                handle.seek(offset)
                data = handle.read()
            end = data.rfind(b"\n") + 1
            for line in data[:end].splitlines():
                if line.strip():
                    rows.append(_parse_line(line, path))
            self._offsets[path] = offset + end
        return [row for row in rows if row is not None]


def _parse_line(line: bytes, path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        logger.warning("Skipping a line of %s that is not JSON: %r", path, line[:120])
        return None


def read_rows(paths: Iterable[Path]) -> list[dict[str, Any]]:
    """Return every row of the given JSON-lines files."""
    rows = []
    for path in paths:
        for line in path.read_bytes().splitlines():
            if line.strip():
                row = _parse_line(line, path)
                if row is not None:
                    rows.append(row)
    return rows
