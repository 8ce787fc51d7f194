"""The function HTTP server, run as real processes on 127.0.0.1 serving a small test stage."""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from pipeline.errors import (
    ArtifactNotFoundError,
    BadRequestError,
    EngineUnavailableError,
    MediaError,
    StageError,
)
from pipeline.server.process import FunctionProcess
from pipeline.stages.base import EngineTimer, Invocation, Stage, require
from pipeline.store import store_from_env

HERE = Path(__file__).resolve().parent
TEST_STAGE = "test_serve:ProbeStage"
TELEMETRY_FIELDS = {
    "stage",
    "request_id",
    "duration_ms",
    "compute_ms",
    "init_ms",
    "cold_start",
    "replica_id",
    "memory_limit_mb",
    "peak_rss_mb",
    "cost_gb_s",
    "started_at",
    "status",
}


@dataclass
class ProbeConfig:
    load_delay_s: float = 0.0
    greeting: str = "hello"


class ProbeStage(Stage[ProbeConfig]):
    """A stage whose behaviour the request picks, to exercise every path of the server."""

    name = "probe"
    config_class = ProbeConfig

    def load(self) -> None:
        time.sleep(self.config.load_delay_s)

    def run(self, request: dict[str, Any], invocation: Invocation) -> dict[str, Any]:
        mode = require(request, "mode", self.name)
        target = request.get("input", "none")
        if mode == "ok":
            with EngineTimer(invocation.telemetry):
                uri = invocation.store.put_bytes(
                    invocation.key(self.name, "greeting.txt"), self.config.greeting.encode()
                )
            return {"greeting": uri}
        if mode == "sleep":
            time.sleep(float(request.get("seconds", 1.0)))
            return {"slept": True}
        if mode == "read":
            return {"text": invocation.store.get_bytes(target).decode()}
        if mode == "bad_media":
            raise MediaError(self.name, target, "the file is not a media file")
        if mode == "engine":
            raise EngineUnavailableError(self.name, target, "the model file is missing")
        if mode == "stage":
            raise StageError(self.name, target, "the engine crashed")
        if mode == "missing":
            raise ArtifactNotFoundError(f"No artifact at {target!r}.")
        if mode == "crash":
            raise ZeroDivisionError("division by zero in the probe")
        if mode == "unserialisable":
            return {"value": object()}
        raise ValueError(f"unknown mode {mode!r}")


def start_probe(tmp_path: Path, **env: str) -> FunctionProcess:
    base_env = {
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
        "VS_STORE": "local",
        "VS_STORE_ROOT": str(tmp_path / "store"),
    }
    process = FunctionProcess.start(TEST_STAGE, tmp_path / "logs", {**base_env, **env})
    process.wait_listening()
    return process


@pytest.fixture(scope="module")
def probe_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("probe")


@pytest.fixture(scope="module")
def probe(probe_dir):
    process = start_probe(probe_dir)
    process.wait_ready()
    yield process
    process.stop()


def post(process: FunctionProcess, body: Any, **kwargs) -> httpx.Response:
    return httpx.post(process.url + "/", json=body, timeout=30.0, **kwargs)


def test_ok_call_returns_output_and_telemetry(probe):
    response = post(probe, {"request_id": "r-ok", "mode": "ok"})

    body = response.json()
    assert response.status_code == 200
    assert body["ok"] is True
    assert body["output"]["greeting"].endswith("requests/r-ok/probe/greeting.txt")
    assert set(body["telemetry"]) >= TELEMETRY_FIELDS
    assert body["telemetry"]["stage"] == "probe"
    assert body["telemetry"]["request_id"] == "r-ok"
    assert body["telemetry"]["init_ms"] > 0
    assert body["telemetry"]["compute_ms"] > 0
    assert body["telemetry"]["memory_limit_mb"] > 0
    assert float(response.headers["X-Duration-Seconds"]) > 0


def test_only_first_call_is_cold(tmp_path):
    process = start_probe(tmp_path)
    try:
        process.wait_ready()
        first = post(process, {"request_id": "a", "mode": "ok"}).json()["telemetry"]
        second = post(process, {"request_id": "b", "mode": "ok"}).json()["telemetry"]
    finally:
        process.stop()

    assert first["cold_start"] is True
    assert second["cold_start"] is False
    assert first["replica_id"] == second["replica_id"]


def test_health_answers_while_models_load(tmp_path):
    process = start_probe(tmp_path, VS_STAGE_CONFIG=json.dumps({"load_delay_s": 3.0}))
    try:
        health = httpx.get(process.url + "/_/health")
        not_ready = httpx.get(process.url + "/_/ready")
        process.wait_ready()
        ready = httpx.get(process.url + "/_/ready")
    finally:
        process.stop()

    assert health.status_code == 200
    assert not_ready.status_code == 503
    assert not_ready.json()["ready"] is False
    assert ready.status_code == 200
    assert ready.json()["init_ms"] >= 3000


ERROR_CASES = [
    ({"request_id": "e1", "mode": "bad_media", "input": "clip.mp4"}, 422, "bad_input", "clip.mp4"),
    ({"request_id": "e2", "mode": "engine", "input": "model"}, 500, "engine_unavailable", "model"),
    ({"request_id": "e3", "mode": "stage", "input": "x.wav"}, 500, "stage_failed", "x.wav"),
    ({"request_id": "e4", "mode": "missing", "input": "a/b.wav"}, 422, "not_found", ""),
    ({"request_id": "e5", "mode": "read", "input": "../etc/passwd"}, 400, "invalid_key", ""),
    ({"request_id": "e6"}, 400, "bad_request", ""),
    ({"mode": "ok"}, 400, "bad_request", ""),
    (["not", "an", "object"], 400, "bad_request", ""),
    ({"request_id": "e7", "mode": "crash"}, 500, "internal", ""),
    ({"request_id": "e8", "mode": "unserialisable"}, 500, "internal", ""),
]


@pytest.mark.parametrize(("body", "status", "kind", "input"), ERROR_CASES)
def test_error_maps_to_status_and_kind(probe, body, status, kind, input):
    response = post(probe, body)
    after = post(probe, {"request_id": "after", "mode": "ok"})

    payload = response.json()
    assert response.status_code == status
    assert payload["ok"] is False
    assert payload["error"]["kind"] == kind
    assert payload["error"]["stage"] == "probe"
    assert payload["error"]["input"] == input
    assert payload["error"]["message"]
    assert payload["telemetry"]["status"] == "error"
    assert "X-Duration-Seconds" in response.headers
    assert after.status_code == 200


def test_malformed_json_is_bad_request(probe):
    response = httpx.post(probe.url + "/", content=b"{not json", timeout=10.0)

    assert response.status_code == 400
    assert response.json()["error"]["kind"] == "bad_request"
    assert "not valid JSON" in response.json()["error"]["message"]


def test_deeply_nested_body_is_bad_request(probe):
    response = httpx.post(probe.url + "/", content=b"[" * 200_000, timeout=30.0)
    after = post(probe, {"request_id": "after-nested", "mode": "ok"})

    error = response.json()["error"]
    assert response.status_code == 400
    assert error["kind"] == "bad_request"
    assert "nested too deeply" in error["message"]
    assert after.status_code == 200


INVALID_REQUEST_IDS = [
    "a/b",
    "a\nb",
    "../../x",
    "r" * 900_000,
    "x" * 65,
    "dot.dot",
    "",
    5,
    None,
]


@pytest.mark.parametrize("request_id", INVALID_REQUEST_IDS, ids=lambda value: repr(value)[:12])
def test_invalid_request_id_is_rejected(probe, probe_dir, request_id):
    response = post(probe, {"request_id": request_id, "mode": "ok"})
    after = post(probe, {"request_id": "after-bad-id", "mode": "ok"})

    error = response.json()["error"]
    assert response.status_code == 400
    assert error["kind"] == "bad_request"
    assert "'request_id'" in error["message"]
    assert "1 to 64 letters, digits, '_' or '-'" in error["message"]
    assert len(error["message"]) < 400
    assert response.json()["telemetry"]["request_id"] == ""
    assert not (probe_dir / "store" / "requests" / "a").exists()
    assert "a\nb" not in probe.stderr_tail(200)
    assert after.status_code == 200


def test_invalid_request_id_stops_before_run(tmp_path):
    stage = ProbeStage()
    store = store_from_env({"VS_STORE": "local", "VS_STORE_ROOT": str(tmp_path)})

    with pytest.raises(BadRequestError, match=r"probe: the field 'request_id' is 'a/b'"):
        stage.invoke({"request_id": "a/b", "mode": "ok"}, store)

    assert list(tmp_path.iterdir()) == []
    assert stage.init_ms == 0


def test_failed_call_keeps_stage_telemetry(probe):
    response = post(probe, {"request_id": "tele", "mode": "bad_media", "input": "v.mp4"})

    telemetry = response.json()["telemetry"]
    assert telemetry["request_id"] == "tele"
    assert telemetry["status"] == "error"
    assert telemetry["duration_ms"] > 0


def test_unexpected_error_logs_traceback(probe):
    post(probe, {"request_id": "trace", "mode": "crash"})

    assert "ZeroDivisionError: division by zero in the probe" in probe.stderr_tail(60)


def test_one_event_line_per_call(probe):
    post(probe, {"request_id": "logged-1", "mode": "ok"})
    post(probe, {"request_id": "logged-2", "mode": "bad_media", "input": "v.mp4"})

    lines = [e for e in probe.events() if e.get("request_id", "").startswith("logged-")]
    assert [line["request_id"] for line in lines] == ["logged-1", "logged-2"]
    assert lines[0]["status"] == 200
    assert lines[0]["error_kind"] is None
    assert lines[1]["status"] == 422
    assert lines[1]["error_kind"] == "bad_input"
    assert {"stage", "duration_ms", "cold_start", "replica_id"} <= set(lines[0])


def test_past_max_inflight_returns_429(tmp_path):
    process = start_probe(tmp_path, max_inflight="1")
    try:
        process.wait_ready()
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            slow = pool.submit(post, process, {"request_id": "slow", "mode": "sleep"})
            time.sleep(0.4)
            rejected = post(process, {"request_id": "extra", "mode": "ok"})
            slow_response = slow.result()
        after = post(process, {"request_id": "after", "mode": "ok"})
    finally:
        process.stop()

    assert rejected.status_code == 429
    assert rejected.json()["error"]["kind"] == "busy"
    assert "max_inflight=1" in rejected.json()["error"]["message"]
    assert slow_response.status_code == 200
    assert after.status_code == 200


def send_unfinished_body(process: FunctionProcess) -> socket.socket:
    """Open a connection that announces a 100-byte body and sends only its first byte."""
    connection = socket.create_connection(("127.0.0.1", process.port), timeout=30.0)
    connection.sendall(
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100\r\n\r\n{"
    )
    return connection


def test_unfinished_bodies_take_no_inflight_slot(tmp_path):
    process = start_probe(tmp_path, max_inflight="2", VS_BODY_TIMEOUT_S="1.5")
    try:
        process.wait_ready()
        idle = [send_unfinished_body(process) for _ in range(2)]
        time.sleep(0.3)
        response = post(process, {"request_id": "while-idle", "mode": "ok"})
        replies = [connection.recv(65536).decode() for connection in idle]
        closed = [connection.recv(65536) for connection in idle]
        for connection in idle:
            connection.close()
    finally:
        process.stop()

    assert response.status_code == 200
    for reply in replies:
        assert reply.startswith("HTTP/1.1 408")
        assert '"kind": "timeout"' in reply
        assert "VS_BODY_TIMEOUT_S=1.5" in reply
    assert closed == [b"", b""]


def test_sigterm_finishes_inflight_call(tmp_path):
    process = start_probe(tmp_path)
    process.wait_ready()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        slow = pool.submit(post, process, {"request_id": "drain", "mode": "sleep", "seconds": 2})
        time.sleep(0.5)
        exit_code = process.stop()
        response = slow.result()

    assert response.status_code == 200
    assert response.json()["output"] == {"slept": True}
    assert exit_code == 0
    assert process.events()[-1]["event"] == "stopped"


def run_serve(stage: str, **env: str) -> subprocess.CompletedProcess:
    child_env = {
        **os.environ,
        "PYTHONPATH": str(HERE),
        "PORT": "0",
        "VS_STORE_ROOT": "unused-store",
        **env,
    }
    return subprocess.run(
        [sys.executable, "-m", "pipeline.serve", stage],
        env=child_env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ("{not json", "VS_STAGE_CONFIG for stage probe is not valid JSON"),
        ('{"colour": 1}', r"Unknown config field\(s\) \['colour'\]"),
        ('{"load_delay_s": "slow"}', "field 'load_delay_s' must be float, not str"),
        ("[1, 2]", "must hold a JSON object"),
    ],
)
def test_bad_stage_config_exits_at_start(config, expected, tmp_path):
    result = run_serve(TEST_STAGE, VS_STAGE_CONFIG=config, VS_STORE_ROOT=str(tmp_path))

    assert result.returncode == 2
    assert "cannot start test_serve:ProbeStage" in result.stderr
    assert result.stdout == ""
    assert re.search(expected, result.stderr)


def test_unknown_stage_exits_listing_names(tmp_path):
    result = run_serve("ffmpeg-9", VS_STORE_ROOT=str(tmp_path))

    assert result.returncode == 2
    assert "Unknown stage 'ffmpeg-9'" in result.stderr
    assert "object-detector" in result.stderr


def test_invalid_max_inflight_exits(tmp_path):
    result = run_serve(TEST_STAGE, max_inflight="many", VS_STORE_ROOT=str(tmp_path))

    assert result.returncode == 2
    assert "max_inflight='many' is not a valid int" in result.stderr


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("soon", "VS_BODY_TIMEOUT_S='soon' is not a valid float"),
        ("0", "VS_BODY_TIMEOUT_S=0.0 must be a finite number of seconds above 0"),
        ("inf", "VS_BODY_TIMEOUT_S=inf must be a finite number of seconds above 0"),
    ],
)
def test_invalid_body_timeout_exits(value, expected, tmp_path):
    result = run_serve(TEST_STAGE, VS_BODY_TIMEOUT_S=value, VS_STORE_ROOT=str(tmp_path))

    assert result.returncode == 2
    assert expected in result.stderr
