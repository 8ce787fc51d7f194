"""The Locust user of an experiment: posts dataset videos to the orchestrator on schedule.

Run by :mod:`experiments.load.driver` as ``python -m locust -f THIS_FILE --headless ...``
with the load in ``VS_LOAD_SPEC``. A ``request`` event hook writes every request, with the
orchestrator's stage telemetry, as one JSON line to ``<requests_dir>/requests*.jsonl``.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from pathlib import Path
from typing import Any

import gevent
from locust import HttpUser, events, task
from locust.runners import MasterRunner, WorkerRunner

from experiments.load.records import classify, request_row
from experiments.load.schedule import LoadSpec, SlotCounter
from experiments.load.shapes import shape_for

logger = logging.getLogger(__name__)

ORCHESTRATOR_PATH = "/function/orchestrator"
REQUEST_NAME = "orchestrator"
IDLE_POLL_S = 0.5
"""How often a user with no arrival left checks whether the test has stopped."""

SPEC = LoadSpec.from_env()
ActiveShape = shape_for(SPEC)


class _ProcessState:
    """Per-process schedule and output file; set up when the test starts."""

    def __init__(self) -> None:
        self.slots: SlotCounter | None = None
        self.t0 = 0.0
        self.output: Any = None

    def start(self, process_index: int, name: str) -> None:
        self.slots = SlotCounter(SPEC, process_index)
        self.t0 = time.time()
        folder = Path(SPEC.requests_dir)
        folder.mkdir(parents=True, exist_ok=True)
        self.output = (folder / f"{name}.jsonl").open("a", buffering=1, encoding="utf-8")

    def write(self, row: dict[str, Any]) -> None:
        if self.output is not None:
            self.output.write(json.dumps(row, default=str) + "\n")

    def close(self) -> None:
        if self.output is not None:
            self.output.close()
            self.output = None


STATE = _ProcessState()


@events.test_start.add_listener
def _on_test_start(environment, **_kwargs) -> None:
    runner = environment.runner
    if isinstance(runner, MasterRunner):
        return
    if isinstance(runner, WorkerRunner):
        STATE.start(runner.worker_index, f"requests-worker{runner.worker_index}")
    else:
        STATE.start(0, "requests")
    logger.info(
        "Load %s: %d request(s), %d user(s) in this process",
        SPEC.kind,
        SPEC.request_count,
        SPEC.user_count() // SPEC.process_count,
    )


@events.test_stop.add_listener
def _on_test_stop(**_kwargs) -> None:
    STATE.close()


@events.request.add_listener
def _on_request(response_time, response, context, exception, start_time, **_kwargs) -> None:
    outcome = context.get("outcome")
    if outcome is None:
        status = getattr(response, "status_code", 0) or 0
        outcome = classify(status, None, exception or RuntimeError("no response"))
    STATE.write(
        request_row(
            request_id=context.get("request_id", ""),
            start_s=start_time,
            latency_ms=response_time,
            http_status=getattr(response, "status_code", 0) or 0,
            outcome=outcome,
            phase=SPEC.phase or SPEC.kind,
        )
    )


def _body(response) -> Any:
    try:
        return response.json()
    except ValueError:
        return (response.text or "")[:500]


class OrchestratorUser(HttpUser):
    """Claims the next arrival slot, waits for its time, and posts one video."""

    @task
    def post_video(self) -> None:
        claimed = STATE.slots.claim() if STATE.slots is not None else None
        if claimed is None:
            gevent.sleep(IDLE_POLL_S)
            return
        slot, offset_s = claimed
        delay_s = STATE.t0 + offset_s - time.time()
        if delay_s > 0:
            gevent.sleep(delay_s)

        request_id = uuid.uuid4().hex
        video = SPEC.videos[slot % len(SPEC.videos)]
        with self.client.post(
            ORCHESTRATOR_PATH,
            json={"request_id": request_id, "video": video},
            name=REQUEST_NAME,
            timeout=SPEC.request_timeout_s,
            catch_response=True,
        ) as response:
            error = getattr(response, "error", None)
            body = None if error is not None else _body(response)
            outcome = classify(response.status_code or 0, body, error)
            response.request_meta["context"].update(request_id=request_id, outcome=outcome)
            if outcome.ok:
                response.success()
            else:
                response.failure(f"{outcome.error_kind}: {outcome.error_message}")
