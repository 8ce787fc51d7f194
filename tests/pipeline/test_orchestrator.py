"""The orchestrator as a real function process, calling scripted stage processes over HTTP.

The scripted stages return made-up URIs at once, so these tests check the chain's
order, fan-out, bounded concurrency, retries on 429 until a deadline, failures and
state.json without running the engines (``test_chain.py`` runs the real stages).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web

from pipeline.errors import BadRequestError, MediaError
from pipeline.orchestrator import ChainRun, Clip, OrchestratorConfig, validate_request_id
from pipeline.server.client import FunctionClient, RetryPolicy
from pipeline.server.gateway import LocalGateway
from pipeline.server.process import FunctionProcess
from pipeline.stages import STAGE_NAMES
from pipeline.stages.base import Invocation, Stage, require
from pipeline.store import LocalStore

HERE = Path(__file__).resolve().parent
CLIPS = 3
FRAMES_PER_CLIP = 2
SLOW_FFMPEG_2_S = 3.0
"""How long ffmpeg-2 (max_inflight 1) occupies its one slot for an input containing ``slow-``."""
STAGE_FUNCTIONS = [name for name in STAGE_NAMES if name != "orchestrator"]


@dataclass
class ScriptedConfig:
    role: str = ""
    delay_s: float = 0.0


class ScriptedStage(Stage[ScriptedConfig]):
    """Plays one stage of the chain with made-up outputs derived from its input.

    An input URI containing ``fail-<role>`` makes that role fail with a bad-input error, on
    its index 1 for the per-clip and per-frame roles. One containing ``slow-`` makes
    ffmpeg-2 take ``SLOW_FFMPEG_2_S`` per clip.
    """

    name = "scripted"
    config_class = ScriptedConfig

    def __init__(self, config: ScriptedConfig | None = None):
        super().__init__(config)
        self.name = self.config.role

    def run(self, request: dict[str, Any], invocation: Invocation) -> dict[str, Any]:
        time.sleep(self.config.delay_s)
        role = self.config.role
        if role == "ffmpeg-0":
            video = require(request, "video", role)
            self.maybe_fail(video, None)
            no_audio = "no-audio" in video
            return {
                "video": f"{video}/video.mp4",
                "audio": None if no_audio else f"{video}/audio.wav",
                "has_audio": not no_audio,
                "has_video": True,
            }
        if role == "librosa":
            audio = request.get("audio")
            if audio is None:
                return {"segments": [], "note": "no audio track, so no speech found"}
            self.maybe_fail(audio, None)
            return {"segments": [{"start_s": 2.0 * i, "end_s": 2.0 * i + 1} for i in range(CLIPS)]}
        if role == "ffmpeg-1":
            video = require(request, "video", role)
            segments = require(request, "segments", role, list)
            return {"clips": [f"{video}/clip_{i}.mp4" for i in range(len(segments))]}
        if role == "ffmpeg-2":
            clip = require(request, "clip", role)
            self.maybe_fail(clip, require(request, "index", role, int))
            if "slow-" in clip:
                time.sleep(SLOW_FFMPEG_2_S)
            return {"wav": f"{clip}.wav", "small": f"{clip}.small.mp4", "has_video": True}
        if role == "asr":
            audio = require(request, "audio", role)
            index = require(request, "index", role, int)
            self.maybe_fail(audio, index)
            return {"text": f" words of clip {index} ", "transcript": f"{audio}.json"}
        if role == "ffmpeg-3":
            video = require(request, "video", role)
            index = require(request, "index", role, int)
            return {"frames": [f"{video}/frame_{index}_{j}.jpg" for j in range(FRAMES_PER_CLIP)]}
        if role == "object-detector":
            frame = require(request, "frame", role)
            self.maybe_fail(frame, require(request, "frame_index", role, int))
            return {"detections": [{"label": "thing", "score": 0.9, "box": [1, 2, 3, 4]}]}
        raise ValueError(f"no script for role {role!r}")

    def maybe_fail(self, input: str, index: int | None) -> None:
        if f"fail-{self.config.role}" in input and index in (None, 1):
            raise MediaError(self.config.role, input, "scripted failure")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Scripted stages, three orchestrators (default, no retries, short retry deadline) and a
    gateway."""
    tmp_path = tmp_path_factory.mktemp("orchestrator")
    store_env = {
        "VS_STORE": "local",
        "VS_STORE_ROOT": str(tmp_path / "store"),
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
    }
    processes: dict[str, FunctionProcess] = {}
    gateway = LocalGateway({})
    gateway.start()
    try:
        for role in STAGE_FUNCTIONS:
            config = {"role": role, "delay_s": 0.3 if role == "ffmpeg-2" else 0.05}
            env = {**store_env, "VS_STAGE_CONFIG": json.dumps(config)}
            if role == "ffmpeg-2":
                env["max_inflight"] = "1"
            processes[role] = FunctionProcess.start(
                "test_orchestrator:ScriptedStage", tmp_path / "logs", env, name=role
            )
        orchestrators = {
            "orchestrator": {"max_parallel": 2},
            "orchestrator-no-retry": {"max_parallel": 4, "retry_deadline_s": 0},
            "orchestrator-short-deadline": {
                "max_parallel": 4,
                "retry_deadline_s": 0.5,
                "retry_backoff_s": 0.05,
                "max_retry_backoff_s": 0.1,
            },
        }
        for name, config in orchestrators.items():
            env = {**store_env, "VS_STAGE_CONFIG": json.dumps(config)}
            env["VS_GATEWAY_URL"] = gateway.url
            processes[name] = FunctionProcess.start(
                "orchestrator", tmp_path / "logs", env, name=name
            )
        for name, process in processes.items():
            process.wait_listening()
            process.wait_ready()
            gateway.routes[name] = process.url
        yield {"gateway": gateway, "store": LocalStore(tmp_path / "store")}
    finally:
        gateway.stop()
        for process in processes.values():
            process.stop()


def run_chain(cluster, video: str, function: str = "orchestrator", **body) -> httpx.Response:
    uri = cluster["store"].put_bytes(f"inputs/{video}", b"not read by the scripted stages")
    return httpx.post(
        f"{cluster['gateway'].url}/function/{function}",
        json={"video": uri, **body},
        timeout=120.0,
    )


def read_state(cluster, request_id: str) -> dict[str, Any]:
    return json.loads(cluster["store"].get_bytes(f"requests/{request_id}/state.json"))


def test_chain_collects_transcripts_and_detections(cluster):
    response = run_chain(cluster, "ok.mp4", request_id="chain-ok")

    summary = response.json()["output"]
    assert response.status_code == 200
    assert summary["status"] == "ok"
    assert summary["error"] is None
    assert [t["clip"] for t in summary["transcripts"]] == [0, 1, 2]
    assert summary["transcripts"][1]["text"] == "words of clip 1"
    assert summary["transcripts"][1]["start_s"] == 2.0
    assert {t["status"] for t in summary["invocations"]} == {"ok"}
    assert summary["transcripts"][1]["end_s"] == 3.0
    assert len(summary["detections"]) == CLIPS * FRAMES_PER_CLIP
    assert summary["detections"][0] == {
        "clip": 0,
        "frame": 0,
        "label": "thing",
        "score": 0.9,
        "box": [1, 2, 3, 4],
    }


def test_every_call_has_telemetry(cluster):
    summary = run_chain(cluster, "ok.mp4", request_id="chain-calls").json()["output"]

    stages = [t["stage"] for t in summary["invocations"]]
    expected_calls = 3 + CLIPS * 3 + CLIPS * FRAMES_PER_CLIP
    assert len(stages) == expected_calls
    assert stages[:3] == ["ffmpeg-0", "librosa", "ffmpeg-1"]
    assert stages.count("object-detector") == CLIPS * FRAMES_PER_CLIP
    assert all(t["request_id"] == "chain-calls" for t in summary["invocations"])
    assert all(t["extra"]["call_ms"] >= t["duration_ms"] for t in summary["invocations"])


def test_calls_stay_within_max_parallel(cluster):
    summary = run_chain(cluster, "ok.mp4", request_id="chain-bounded").json()["output"]

    edges = []
    for telemetry in summary["invocations"]:
        start = telemetry["started_at"]
        edges.append((start, 1))
        edges.append((start + telemetry["duration_ms"] / 1000.0, -1))
    running = peak = 0
    for _, change in sorted(edges, key=lambda edge: (edge[0], edge[1])):
        running += change
        peak = max(peak, running)
    assert peak <= 2
    assert peak == 2


def test_busy_replica_is_retried(cluster):
    summary = run_chain(cluster, "ok.mp4", request_id="chain-retry").json()["output"]

    calls = [t["extra"] for t in summary["invocations"] if t["stage"] == "ffmpeg-2"]
    retried = [extra for extra in calls if extra["attempts"] > 1]
    assert summary["status"] == "ok"
    assert retried
    assert all(extra["throttled_ms"] > 0 for extra in retried)
    assert all(extra["throttled_ms"] < extra["call_ms"] for extra in retried)
    assert all(extra["throttled_ms"] == 0 for extra in calls if extra["attempts"] == 1)


def test_busy_replica_past_deadline_fails_with_hint(cluster):
    response = run_chain(
        cluster, "slow-busy.mp4", function="orchestrator-short-deadline", request_id="chain-late"
    )

    body = response.json()
    error = body["error"]
    failed = [t for t in body["output"]["invocations"] if t["status"] != "ok"]
    assert response.status_code == 500
    assert error["kind"] == "busy"
    assert error["stage"] == "ffmpeg-2"
    assert error["input"].endswith(".mp4")
    assert f"for input {error['input']}" in error["message"]
    assert re.search(r"ffmpeg-2 stayed busy .*: \d+ attempt\(s\) over \d+\.\d s", error["message"])
    assert "pipeline.functions.ffmpeg-2.max_inflight" in error["message"]
    assert "regime.max_replicas" in error["message"]
    assert "retry_deadline_s" in error["message"]
    assert failed[0]["extra"]["attempts"] > 1
    assert failed[0]["extra"]["throttled_ms"] >= 500


def test_retry_delay_stays_within_cap():
    policy = RetryPolicy(deadline_s=60, backoff_s=0.25, max_backoff_s=2.0, jitter=0.5)
    rng = random.Random(7)

    waits = [[policy.delay_s(retry, rng) for _ in range(200)] for retry in range(8)]

    assert 0.125 <= min(waits[0]) < max(waits[0]) <= 0.25
    assert 0.25 <= min(waits[1]) < max(waits[1]) <= 0.5
    assert all(1.0 <= wait <= 2.0 for wait in waits[7])
    assert RetryPolicy(jitter=0.0).delay_s(10_000, rng) == 4.0


def test_retry_deadline_never_passes_call_timeout():
    async def deadlines() -> list[float]:
        async with httpx.AsyncClient() as http:
            return [
                FunctionClient(
                    "http://127.0.0.1:1", http, timeout_s=timeout_s, retry=RetryPolicy(120.0)
                ).retry_deadline_s
                for timeout_s in (5.0, 300.0)
            ]

    short, long = asyncio.run(deadlines())

    assert short == 5.0
    assert long == 120.0


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"retry_deadline_s": -1}, "retry_deadline_s must be 0"),
        ({"retry_backoff_s": 0}, "retry_backoff_s .* must be above 0"),
        ({"max_retry_backoff_s": 0.1}, "at most max_retry_backoff_s"),
        ({"retry_jitter": 1.5}, "retry_jitter must be between 0 and 1"),
    ],
)
def test_invalid_retry_settings_are_rejected(fields, message):
    with pytest.raises(ValueError, match=message):
        OrchestratorConfig(**fields)


def test_busy_replica_fails_without_retries(cluster):
    response = run_chain(
        cluster, "ok.mp4", function="orchestrator-no-retry", request_id="chain-busy"
    )

    body = response.json()
    assert response.status_code == 500
    assert body["error"]["kind"] == "busy"
    assert body["error"]["stage"] == "ffmpeg-2"
    assert body["output"]["status"] == "error"


def test_failed_stage_fails_request_keeping_results(cluster):
    response = run_chain(cluster, "fail-asr.mp4", request_id="chain-fail")

    body = response.json()
    summary = body["output"]
    assert response.status_code == 422
    assert body["ok"] is False
    assert body["error"]["kind"] == "bad_input"
    assert body["error"]["stage"] == "asr"
    assert body["error"]["input"].endswith("clip_1.mp4.wav")
    assert "scripted failure" in body["error"]["message"]
    assert summary["status"] == "error"
    assert summary["error"]["stage"] == "asr"
    assert summary["error"]["message"] == "scripted failure"
    failed = [t for t in summary["invocations"] if t["status"] != "ok"]
    assert [t["stage"] for t in failed] == ["asr"]
    assert [t["stage"] for t in summary["invocations"][:3]] == ["ffmpeg-0", "librosa", "ffmpeg-1"]


def test_state_json_records_each_step(cluster):
    run_chain(cluster, "fail-object-detector.mp4", request_id="chain-state")

    state = read_state(cluster, "chain-state")
    steps = state["steps"]
    assert state["status"] == "error"
    assert state["error"]["stage"] == "object-detector"
    assert steps["ffmpeg-0"]["status"] == "ok"
    assert steps["librosa"]["status"] == "ok"
    assert steps["ffmpeg-1"]["output"]["clips"][0].endswith("clip_0.mp4")
    assert steps["object-detector/clip-0/frame-1"]["status"] == "error"
    assert steps["object-detector/clip-0/frame-1"]["error"]["kind"] == "bad_input"
    assert "running" not in {step["status"] for step in steps.values()}


def test_state_json_of_successful_request(cluster):
    run_chain(cluster, "ok.mp4", request_id="chain-state-ok")

    state = read_state(cluster, "chain-state-ok")
    assert state["status"] == "ok"
    assert state["error"] is None
    assert len(state["steps"]) == 3 + CLIPS * 3 + CLIPS * FRAMES_PER_CLIP
    assert {step["status"] for step in state["steps"].values()} == {"ok"}


def test_no_audio_gives_empty_summary_with_note(cluster):
    response = run_chain(cluster, "no-audio.mp4", request_id="chain-silent")

    summary = response.json()["output"]
    assert response.status_code == 200
    assert summary["status"] == "ok"
    assert summary["transcripts"] == []
    assert summary["detections"] == []
    assert summary["notes"] == ["no audio track, so no speech found"]
    assert [t["stage"] for t in summary["invocations"]] == ["ffmpeg-0", "librosa"]


def test_missing_request_id_gets_new_one(cluster):
    response = run_chain(cluster, "ok.mp4")

    request_id = response.json()["output"]["request_id"]
    assert response.status_code == 200
    assert len(request_id) == 32
    assert int(request_id, 16) >= 0


@pytest.mark.parametrize("request_id", ["../escape", "a/b", "", "x" * 65, 42])
def test_invalid_request_id_is_rejected(cluster, request_id):
    response = run_chain(cluster, "ok.mp4", request_id=request_id)

    assert response.status_code == 400
    assert response.json()["error"]["kind"] == "bad_request"
    assert "request_id" in response.json()["error"]["message"]


def test_huge_request_id_is_not_echoed(cluster):
    response = run_chain(cluster, "ok.mp4", request_id="x" * 900_000)

    error = response.json()["error"]
    assert response.status_code == 400
    assert error["kind"] == "bad_request"
    assert "1 to 64 letters, digits, '_' or '-'" in error["message"]
    assert "(900000 characters)" in error["message"]
    assert len(error["message"]) < 400


def test_validate_request_id_uses_shared_rule():
    assert validate_request_id("run-1_a") == "run-1_a"
    with pytest.raises(BadRequestError, match=r"^orchestrator: .*'request_id'.* 1 to 64 letters"):
        validate_request_id("a/b")
    with pytest.raises(BadRequestError, match=r"\(900000 characters\)") as caught:
        validate_request_id("y" * 900_000)
    assert len(str(caught.value)) < 400


def test_video_outside_store_is_rejected(cluster):
    response = httpx.post(
        f"{cluster['gateway'].url}/function/orchestrator",
        json={"request_id": "outside", "video": "inputs/../../etc/passwd"},
        timeout=30.0,
    )

    assert response.status_code == 400
    assert response.json()["error"]["kind"] == "invalid_key"
    assert "'..'" in response.json()["error"]["message"]


def test_unknown_function_fails_request(cluster):
    gateway = cluster["gateway"]
    detector_url = gateway.routes.pop("object-detector")
    try:
        response = run_chain(cluster, "ok.mp4", request_id="chain-unrouted")
    finally:
        gateway.routes["object-detector"] = detector_url

    body = response.json()
    assert response.status_code == 500
    assert body["error"]["stage"] == "object-detector"
    assert "HTTP 404" in body["error"]["message"]
    assert "No function named 'object-detector'" in body["error"]["message"]
    assert body["output"]["status"] == "error"


GOOD_OUTPUTS: dict[str, Any] = {
    "ffmpeg-0": {"video": "in/video.mp4", "audio": "in/audio.wav", "has_video": True},
    "librosa": {"segments": [{"start_s": 0.0, "end_s": 1.0}, {"start_s": 2.0, "end_s": 3.0}]},
    "ffmpeg-1": {"clips": [{"uri": "in/clip_0.mp4", "index": 0}, "in/clip_1.mp4"]},
    "ffmpeg-2": {"wav": "in/clip.wav", "small": "in/clip.small.mp4", "has_video": True},
    "asr": {"text": " words ", "transcript": "in/transcript.json"},
    "ffmpeg-3": {"frames": ["in/frame_0.jpg", {"uri": "in/frame_1.jpg", "index": 1}]},
    "object-detector": {"detections": [{"label": "thing", "score": 0.9, "box": [1, 2, 3, 4]}]},
}


def ok_reply(stage: str, output: Any, **telemetry: Any) -> dict[str, Any]:
    return {"ok": True, "output": output, "telemetry": {"stage": stage, **telemetry}}


BAD_REPLIES: dict[str, tuple[str, Any, str]] = {
    # Each request id maps to the stage that replies badly, its reply body (a dict is sent as
    # JSON, a str as it is) and a pattern of the error message.
    "extra-list": (
        "ffmpeg-0",
        ok_reply("ffmpeg-0", GOOD_OUTPUTS["ffmpeg-0"], extra=["x"]),
        r"^ffmpeg-0 returned telemetry\.extra as list; expected an object\.",
    ),
    "duration-str": (
        "librosa",
        ok_reply("librosa", GOOD_OUTPUTS["librosa"], duration_ms="fast"),
        r"^librosa returned telemetry\.duration_ms as str; expected a number\.",
    ),
    "output-list": (
        "ffmpeg-0",
        {"ok": True, "output": [1]},
        r"^ffmpeg-0 returned output as list; expected an object\.",
    ),
    "output-missing": ("ffmpeg-0", {"ok": True}, r"^ffmpeg-0 returned no output; expected an"),
    "video-missing": (
        "ffmpeg-0",
        ok_reply("ffmpeg-0", {"audio": "in/audio.wav"}),
        r"^ffmpeg-0 returned no video; expected an artifact URI string\.",
    ),
    "deep-json": ("ffmpeg-0", "[" * 100_000, r"with a body that is not the function contract's"),
    "segments-str": (
        "librosa",
        ok_reply("librosa", {"segments": "abc"}),
        r"^librosa returned segments as str; expected a list of objects",
    ),
    "segment-end-str": (
        "librosa",
        ok_reply("librosa", {"segments": [{"start_s": 0, "end_s": "1"}]}),
        r"^librosa returned segments\[0\]\.end_s as str; expected a number of seconds",
    ),
    "clip-int": (
        "ffmpeg-1",
        ok_reply("ffmpeg-1", {"clips": [5]}),
        r"^ffmpeg-1 returned clips\[0\] as int; expected an object with 'uri' and 'index'\.",
    ),
    "clip-index-str": (
        "ffmpeg-1",
        ok_reply("ffmpeg-1", {"clips": [{"uri": "in/c.mp4", "index": "abc"}]}),
        r"^ffmpeg-1 returned clips\[0\]\.index as str; expected a non-negative integer\.",
    ),
    "clip-no-uri": (
        "ffmpeg-1",
        ok_reply("ffmpeg-1", {"clips": ["in/c.mp4", {"index": 1}]}),
        r"^ffmpeg-1 returned no clips\[1\]\.uri; expected an artifact URI string\.",
    ),
    "clip-index-twice": (
        "ffmpeg-1",
        ok_reply("ffmpeg-1", {"clips": [{"uri": "in/a.mp4", "index": 1}, "in/b.mp4"]}),
        r"^ffmpeg-1 returned index 1 for both clips\[0\] and clips\[1\]; expected a distinct",
    ),
    "wav-int": (
        "ffmpeg-2",
        ok_reply("ffmpeg-2", {"wav": 5, "small": None}),
        r"^ffmpeg-2 returned wav as int; expected an artifact URI string or null\.",
    ),
    "text-missing": (
        "asr",
        ok_reply("asr", {"transcript": "in/t.json"}),
        r"^asr returned no text; expected a string\.",
    ),
    "frames-str": (
        "ffmpeg-3",
        ok_reply("ffmpeg-3", {"frames": "abc"}),
        r"^ffmpeg-3 returned frames as str; expected a list of",
    ),
    "detection-int": (
        "object-detector",
        ok_reply("object-detector", {"detections": [5]}),
        r"^object-detector returned detections\[0\] as int; expected an object with 'label'",
    ),
}


class FakeGateway:
    """Plays the gateway and every stage on 127.0.0.1: aiohttp in a thread of its own.

    Each stage replies with ``GOOD_OUTPUTS``, except the stage that ``BAD_REPLIES`` names
    for the request id of the call, which sends that reply. ``calls`` lists the stage
    called for each request id, in order.
    """

    def __init__(self) -> None:
        self.calls: dict[str, list[str]] = {}
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.url = ""

    def start(self) -> None:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(timeout=30)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=30)
        self.loop.close()

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/function/{name}", self.reply)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        host, port = self.runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"

    async def reply(self, request: web.Request) -> web.Response:
        stage = request.match_info["name"]
        request_id = (await request.json())["request_id"]
        self.calls.setdefault(request_id, []).append(stage)
        bad_stage, bad_reply, _ = BAD_REPLIES.get(request_id, (None, None, None))
        if stage != bad_stage:
            return web.json_response(ok_reply(stage, GOOD_OUTPUTS[stage], request_id=request_id))
        if isinstance(bad_reply, str):
            return web.Response(text=bad_reply, content_type="application/json")
        return web.json_response(bad_reply)


@pytest.fixture(scope="module")
def fake_chain(tmp_path_factory):
    """An orchestrator process whose gateway is a :class:`FakeGateway`."""
    tmp_path = tmp_path_factory.mktemp("fake-chain")
    gateway = FakeGateway()
    gateway.start()
    env = {
        "VS_STORE": "local",
        "VS_STORE_ROOT": str(tmp_path / "store"),
        "VS_STAGE_CONFIG": json.dumps({"max_parallel": 2}),
        "VS_GATEWAY_URL": gateway.url,
    }
    process = FunctionProcess.start("orchestrator", tmp_path / "logs", env, name="orchestrator")
    try:
        process.wait_listening()
        process.wait_ready()
        yield {"gateway": gateway, "process": process, "store": LocalStore(tmp_path / "store")}
    finally:
        process.stop()
        gateway.stop()


def run_fake_chain(fake_chain, request_id: str) -> httpx.Response:
    video = fake_chain["store"].put_bytes("inputs/in.mp4", b"not read by the fake stages")
    return httpx.post(
        fake_chain["process"].url,
        json={"request_id": request_id, "video": video},
        timeout=60.0,
    )


def test_fake_chain_accepts_good_shapes(fake_chain):
    response = run_fake_chain(fake_chain, "good-shapes")

    summary = response.json()["output"]
    assert response.status_code == 200
    assert summary["status"] == "ok"
    assert [t["clip"] for t in summary["transcripts"]] == [0, 1]
    assert summary["transcripts"][1]["text"] == "words"
    assert summary["transcripts"][1]["start_s"] == 2.0
    assert {t["status"] for t in summary["invocations"]} == {"ok"}
    assert [(d["clip"], d["frame"]) for d in summary["detections"]] == [
        (0, 0),
        (0, 1),
        (1, 0),
        (1, 1),
    ]


@pytest.mark.parametrize("request_id", list(BAD_REPLIES))
def test_bad_response_shape_fails_request(fake_chain, request_id):
    stage, _, message = BAD_REPLIES[request_id]

    response = run_fake_chain(fake_chain, request_id)

    body = response.json()
    assert response.status_code == 500
    assert body["error"]["kind"] == "bad_response"
    assert body["error"]["stage"] == stage
    assert re.search(message, body["error"]["message"])

    summary = body["output"]
    failed_calls = [t for t in summary["invocations"] if t["status"] != "ok"]
    assert summary["status"] == "error"
    assert summary["error"]["kind"] == "bad_response"
    # Both clips' calls may fail before the first failure cancels the other.
    assert {t["stage"] for t in failed_calls} == {stage}
    assert {t["status"] for t in failed_calls} == {"bad_response"}

    state = json.loads(fake_chain["store"].get_bytes(f"requests/{request_id}/state.json"))
    failed_steps = [step for step in state["steps"].values() if step["status"] == "error"]
    assert state["status"] == "error"
    assert state["error"]["stage"] == stage
    assert {step["stage"] for step in failed_steps} == {stage}
    assert {step["error"]["kind"] for step in failed_steps} == {"bad_response"}
    assert "running" not in {step["status"] for step in state["steps"].values()}


def test_clip_without_uri_stops_before_ffmpeg_2(fake_chain):
    fake_chain["gateway"].calls.pop("clip-no-uri", None)

    response = run_fake_chain(fake_chain, "clip-no-uri")

    summary = response.json()["output"]
    assert response.status_code == 500
    assert fake_chain["gateway"].calls["clip-no-uri"] == ["ffmpeg-0", "librosa", "ffmpeg-1"]
    assert [t["stage"] for t in summary["invocations"]] == ["ffmpeg-0", "librosa", "ffmpeg-1"]
    assert [t["status"] for t in summary["invocations"]] == ["ok", "ok", "bad_response"]


class ClipFailingChain(ChainRun):
    """Raises an exception other than a failed stage call once the chain reaches its clips."""

    async def run_clip(self, clip: Clip) -> None:
        raise RuntimeError(f"clip {clip.index} broke")


def test_unexpected_error_saves_error_state(fake_chain, tmp_path):
    store = LocalStore(tmp_path / "store")

    async def run_chain_in_process() -> None:
        async with httpx.AsyncClient() as http:
            client = FunctionClient(
                fake_chain["gateway"].url, http, timeout_s=30.0, retry=RetryPolicy(0.0)
            )
            chain = ClipFailingChain(
                "unexpected", "inputs/in.mp4", store, client, asyncio.Semaphore(2)
            )
            await chain.run()

    with pytest.raises(RuntimeError, match=r"^clip \d broke$"):
        asyncio.run(run_chain_in_process())

    state = json.loads(store.get_bytes("requests/unexpected/state.json"))
    assert state["status"] == "error"
    assert state["error"]["kind"] == "internal"
    assert state["error"]["stage"] == "orchestrator"
    assert re.match(
        r"Unexpected RuntimeError in the orchestrator: clip \d broke", state["error"]["message"]
    )
    assert [step["status"] for step in state["steps"].values()] == ["ok", "ok", "ok"]
