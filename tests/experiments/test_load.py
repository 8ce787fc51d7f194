"""Tests of the load: arrival schedules, response classification, and Locust processes
driving a trivial orchestrator on the embedded runtime."""

from __future__ import annotations

import json
import socket

import pytest
import requests
from runner_fixtures import runtime_with_echo

from experiments.errors import LoadError
from experiments.load.driver import LocustProcesses
from experiments.load.records import (
    INVOCATION_TABLE_COLUMNS,
    JsonLinesTail,
    classify,
    extract_invocations,
    invocation_rows,
)
from experiments.load.schedule import ENV_LOAD_SPEC, LoadSpec, SlotCounter, shape_tick


def steady(tmp_path, **values) -> LoadSpec:
    fields = dict(
        kind="steady",
        videos=("file:///v.mp4",),
        requests_dir=str(tmp_path / "load"),
        request_timeout_s=10.0,
        rate_per_s=2.0,
        duration_s=2.0,
    )
    fields.update(values)
    return LoadSpec(**fields)


def burst(tmp_path, **values) -> LoadSpec:
    fields = dict(
        kind="burst",
        videos=("file:///v.mp4",),
        requests_dir=str(tmp_path / "load"),
        request_timeout_s=10.0,
        idle_before_s=1.0,
        burst_size=3,
        idle_after_s=1.0,
    )
    fields.update(values)
    return LoadSpec(**fields)


def test_steady_arrivals_are_evenly_spaced(tmp_path):
    spec = steady(tmp_path, rate_per_s=0.2, duration_s=30.0)

    assert spec.arrival_offsets() == [0.0, 5.0, 10.0, 15.0, 20.0, 25.0]


def test_burst_arrivals_come_at_once(tmp_path):
    spec = burst(tmp_path, idle_before_s=4.0, burst_size=5)

    assert spec.arrival_offsets() == [4.0] * 5
    assert spec.min_duration_s() == 5.0


def test_steady_users_cover_requests_in_flight(tmp_path):
    spec = steady(tmp_path, rate_per_s=1.0, duration_s=60.0, request_timeout_s=20.0)

    assert spec.user_count() == 21


def test_users_are_a_multiple_of_workers(tmp_path):
    spec = burst(tmp_path, burst_size=5, workers=2)

    assert spec.user_count() == 6


def test_users_are_capped(tmp_path):
    spec = burst(tmp_path, burst_size=500, max_users=16)

    assert spec.user_count() == 16


def test_shape_runs_until_requests_are_in(tmp_path):
    spec = burst(tmp_path, idle_before_s=1.0, burst_size=2, idle_after_s=1.0)

    assert shape_tick(spec, 0.0, 0) == (2, 100.0)
    assert shape_tick(spec, 5.0, 1) is not None
    assert shape_tick(spec, 5.0, 2) is None
    assert shape_tick(spec, 1.5, 2) is not None
    assert shape_tick(spec, spec.deadline_s(), 0) is None


def test_slots_interleave_across_workers(tmp_path):
    spec = steady(tmp_path, rate_per_s=1.0, duration_s=5.0, workers=2)

    first = SlotCounter(spec, 0)
    second = SlotCounter(spec, 1)

    assert [first.claim() for _ in range(4)] == [(0, 0.0), (2, 2.0), (4, 4.0), None]
    assert [second.claim() for _ in range(3)] == [(1, 1.0), (3, 3.0), None]


def test_spec_round_trips_through_environment(tmp_path):
    spec = burst(tmp_path, phase="burst", workers=2)

    assert LoadSpec.from_env({ENV_LOAD_SPEC: spec.to_json()}) == spec


def test_spec_without_environment_says_how_to_run():
    with pytest.raises(ValueError, match="python -m experiments run"):
        LoadSpec.from_env({})


def telemetry(stage: str, cold: bool) -> dict:
    return {"stage": stage, "request_id": "r1", "cold_start": cold, "replica_id": stage}


@pytest.mark.parametrize(
    ("status", "body", "error", "kind"),
    [
        (0, None, requests.exceptions.ReadTimeout("read timed out"), "timeout"),
        (0, None, requests.exceptions.ConnectionError("refused"), "connection"),
        (502, "bad gateway", None, "http_5xx"),
        (429, {"message": "busy"}, None, "http_4xx"),
        (
            200,
            {"ok": False, "output": {"status": "failed", "error": {"stage": "ffmpeg-0"}}},
            None,
            "stage_failed:ffmpeg-0",
        ),
        (
            500,
            {"ok": False, "error": {"stage": "asr", "message": "engine failed"}},
            None,
            "stage_failed:asr",
        ),
        (200, {"ok": False}, None, "stage_failed:orchestrator"),
    ],
)
def test_classify_gives_the_error_kind(status, body, error, kind):
    outcome = classify(status, body, error)

    assert not outcome.ok
    assert outcome.error_kind == kind
    assert outcome.error_message


def test_classify_counts_cold_starts_with_the_orchestrator():
    body = {
        "ok": True,
        "output": {"status": "ok", "invocations": [telemetry("asr", True)], "error": None},
        "telemetry": telemetry("orchestrator", True),
    }

    outcome = classify(200, body, None)

    assert outcome.ok
    assert outcome.cold_starts == 2
    assert [item["stage"] for item in outcome.invocations] == ["asr", "orchestrator"]


def test_orchestrator_telemetry_is_not_counted_twice():
    own = telemetry("orchestrator", True)
    body = {"ok": True, "output": {"invocations": [own]}, "telemetry": own}

    assert len(extract_invocations(body)) == 1


def test_invocation_rows_keep_the_table_columns():
    row = {"request_id": "r1", "invocations": [telemetry("asr", False)]}

    rows = invocation_rows(row)

    assert rows[0]["request_id"] == "r1"
    assert rows[0]["stage"] == "asr"
    assert rows[0]["cold_start"] is False
    assert "duration_ms" in rows[0]
    assert tuple(rows[0]) == INVOCATION_TABLE_COLUMNS


def test_invocation_rows_carry_retry_counts():
    retried = telemetry("asr", False)
    retried["extra"] = {"attempts": 4, "throttled_ms": 1875.5, "call_ms": 2600.0}
    row = {"request_id": "r1", "invocations": [retried, telemetry("orchestrator", False)]}

    rows = invocation_rows(row)

    assert rows[0]["attempts"] == 4
    assert rows[0]["throttled_ms"] == 1875.5
    assert rows[1]["attempts"] == 1
    assert rows[1]["throttled_ms"] == 0.0
    assert isinstance(rows[1]["attempts"], int)


def test_tail_leaves_a_partial_line_for_later(tmp_path):
    path = tmp_path / "requests.jsonl"
    path.write_text(json.dumps({"n": 1}) + "\n" + '{"n": ')
    tail = JsonLinesTail(tmp_path)

    first = tail.read_new()
    with path.open("a") as handle:
        handle.write("2}\n")
    second = tail.read_new()

    assert first == [{"n": 1}]
    assert second == [{"n": 2}]


@pytest.mark.parametrize("workers", [0, 2])
def test_locust_drives_the_schedule(tmp_path, workers):
    spec = burst(tmp_path, idle_before_s=0.5, burst_size=4, idle_after_s=0.5, workers=workers)
    with runtime_with_echo(tmp_path, {"ECHO_DELAY_S": "0.3"}) as (runtime, _client):
        locust = LocustProcesses(spec, host=runtime.url, log_dir=tmp_path)

        locust.start()
        status = locust.wait(60)
        rows = locust.tail.read_new()

    assert status == 0, locust.log_tail()
    assert len(rows) == 4
    assert all(row["ok"] for row in rows)
    assert len({row["request_id"] for row in rows}) == 4
    assert max(row["start_s"] for row in rows) - min(row["start_s"] for row in rows) < 0.3
    assert all(row["phase"] == "burst" for row in rows)
    assert all(row["invocations"][-1]["stage"] == "orchestrator" for row in rows)
    assert sum(row["cold_starts"] for row in rows) >= 1


def test_locust_records_failures_with_their_kind(tmp_path):
    spec = steady(tmp_path, rate_per_s=2.0, duration_s=1.0, request_timeout_s=1.0)
    env = {"ECHO_FAILED_STAGE": "ffmpeg-0"}
    with runtime_with_echo(tmp_path, env) as (runtime, _client):
        locust = LocustProcesses(spec, host=runtime.url, log_dir=tmp_path)

        locust.start()
        locust.check_exit(locust.wait(60))
        rows = locust.tail.read_new()

    assert [row["error_kind"] for row in rows] == ["stage_failed:ffmpeg-0"] * 2
    assert all(row["error_message"] == "bad media" for row in rows)


def test_locust_records_timeouts(tmp_path):
    spec = steady(tmp_path, rate_per_s=1.0, duration_s=1.0, request_timeout_s=0.5)
    with runtime_with_echo(tmp_path, {"ECHO_DELAY_S": "2"}) as (runtime, _client):
        locust = LocustProcesses(spec, host=runtime.url, log_dir=tmp_path)

        locust.start()
        locust.check_exit(locust.wait(60))
        rows = locust.tail.read_new()

    assert [row["error_kind"] for row in rows] == ["timeout"]


def test_locust_against_closed_port_records_connection_errors(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    spec = steady(tmp_path, rate_per_s=1.0, duration_s=1.0, request_timeout_s=1.0)
    locust = LocustProcesses(spec, host=f"http://127.0.0.1:{port}", log_dir=tmp_path)

    locust.start()
    locust.check_exit(locust.wait(60))
    rows = locust.tail.read_new()

    assert [row["error_kind"] for row in rows] == ["connection"]


def test_locust_failure_to_start_raises_load_error(tmp_path):
    spec = steady(tmp_path)
    locust = LocustProcesses(spec, host="http://127.0.0.1:1", log_dir=tmp_path, log_level="NOPE")

    locust.start()

    with pytest.raises(LoadError, match="Locust exited with status"):
        locust.check_exit(locust.wait(60))
