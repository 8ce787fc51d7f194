"""The ``orchestrator`` function: run the VideoSearcher chain for one request over HTTP.

Request ``{request_id?, video: URI}``. The chain calls each stage at
``{gateway_url}/function/{name}``::

    ffmpeg-0 -> librosa -> ffmpeg-1 -> per clip: ffmpeg-2 -> (asr || ffmpeg-3 -> per frame:
    object-detector)

Clips run side by side, and so do a clip's ``asr`` and ``ffmpeg-3``. At most ``max_parallel``
calls are in flight for one request, across all clips and frames.

The output is the summary ``{request_id, status, transcripts, detections, invocations, error,
notes}``. ``invocations`` contains the telemetry of every stage call, failed ones included, with
``extra.call_ms`` (the round trip seen by the orchestrator), ``extra.attempts`` and
``extra.throttled_ms`` (retries of busy replies, see :class:`OrchestratorConfig`) and the clip
and frame indices.
The progress of each step is written to ``requests/<request_id>/state.json`` as it changes,
so a failed request keeps what finished. When a stage fails, the calls still running are
cancelled, and the request fails with the stage, its input and the cause. The error
response then carries the summary so far as its ``output``. A stage that replies 429 or 503
(every replica busy) is retried until ``retry_deadline_s``, so a burst larger than the
stage's replicas waits for a free one instead of failing.

Inputs without speech (no audio track, or silence) give an ``ok`` summary with no clips, so
no transcripts and no detections, and a note saying why.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx

from pipeline.errors import EngineUnavailableError, InvocationError
from pipeline.ids import check_request_id
from pipeline.server.client import CallResult, FunctionCallError, FunctionClient, RetryPolicy
from pipeline.stages.base import Invocation, Stage, StageResult, require
from pipeline.store import ArtifactStore

logger = logging.getLogger(__name__)

ENV_GATEWAY_URL = "VS_GATEWAY_URL"


@dataclass
class OrchestratorConfig:
    """Settings of the orchestrator; times in seconds."""

    gateway_url: str | None = None
    """Base URL of the gateway; None reads ``VS_GATEWAY_URL`` at load time."""
    max_parallel: int = 4
    """Stage calls in flight at once for one request, across clips and frames."""
    call_timeout_s: float = 300.0
    retry_deadline_s: float = 120.0
    """Time a stage call keeps retrying replies of 429 or 503 (every replica busy or
    draining), counted from its first attempt and capped at ``call_timeout_s``. 0 disables
    retries, so the first busy reply fails the request."""
    retry_backoff_s: float = 0.25
    """Wait before the first retry; it doubles on each retry up to ``max_retry_backoff_s``."""
    max_retry_backoff_s: float = 4.0
    retry_jitter: float = 0.5
    """Largest fraction of each wait that is cut at random, so rejected calls spread out."""

    def __post_init__(self) -> None:
        if self.max_parallel < 1:
            raise ValueError(f"max_parallel must be 1 or more, not {self.max_parallel}.")
        if self.call_timeout_s <= 0:
            raise ValueError(f"call_timeout_s must be positive, not {self.call_timeout_s}.")
        if self.retry_deadline_s < 0:
            raise ValueError(
                f"retry_deadline_s must be 0 (no retries) or more, not {self.retry_deadline_s}."
            )
        if self.retry_backoff_s <= 0 or self.max_retry_backoff_s < self.retry_backoff_s:
            raise ValueError(
                f"retry_backoff_s ({self.retry_backoff_s}) must be above 0 and at most "
                f"max_retry_backoff_s ({self.max_retry_backoff_s})."
            )
        if not 0.0 <= self.retry_jitter <= 1.0:
            raise ValueError(f"retry_jitter must be between 0 and 1, not {self.retry_jitter}.")

    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(
            deadline_s=self.retry_deadline_s,
            backoff_s=self.retry_backoff_s,
            max_backoff_s=self.max_retry_backoff_s,
            jitter=self.retry_jitter,
        )


class ChainFailedError(InvocationError):
    """A stage call failed, so the request failed.

    Attributes:
        kind: the failed call's error kind (``bad_input``, ``timeout``, ...).
        output: the summary so far, with ``status: "error"`` and the ``error`` object.
    """

    def __init__(self, cause: FunctionCallError, output: dict[str, Any]):
        super().__init__(cause.stage, cause.input, cause.reason, cause.status_code)
        self.kind = cause.kind
        self.output = output


def validate_request_id(value: object) -> str:
    """Return ``value`` if it is a valid request id, else raise :class:`BadRequestError`.

    The rule and the message are those of :func:`pipeline.ids.check_request_id`.
    """
    return check_request_id(value, OrchestratorStage.name)


@dataclass
class Clip:
    index: int
    uri: str
    start_s: float | None
    end_s: float | None


@dataclass
class ChainRun:
    """The state of one request's chain while it runs."""

    request_id: str
    video: str
    store: ArtifactStore
    client: FunctionClient
    semaphore: asyncio.Semaphore
    transcripts: list[dict[str, Any]] = field(default_factory=list)
    detections: list[dict[str, Any]] = field(default_factory=list)
    invocations: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    steps: dict[str, dict[str, Any]] = field(default_factory=dict)
    failure: FunctionCallError | None = None
    status: str = "running"
    _state_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def state_key(self) -> str:
        return f"requests/{self.request_id}/state.json"

    async def run(self) -> dict[str, Any]:
        """Run every step and return the summary; raise ChainFailedError if a call failed."""
        await self.save_state()
        try:
            await self.run_steps()
        except* FunctionCallError:
            pass
        except* Exception as group:
            raise _first_leaf(group) from None
        self.status = "error" if self.failure else "ok"
        for step in self.steps.values():
            if step["status"] == "running":
                step["status"] = "cancelled"
        await self.save_state()
        summary = self.summary()
        if self.failure is not None:
            raise ChainFailedError(self.failure, summary)
        return summary

    async def run_steps(self) -> None:
        split = await self.call("ffmpeg-0", "ffmpeg-0", {"video": self.video}, self.video)
        self.take_note(split)
        audio = split.get("audio")
        found = await self.call("librosa", "librosa", {"audio": audio}, audio or "no audio")
        self.take_note(found)
        segments = found.get("segments") or []
        if not segments:
            return

        video = split["video"]
        cut = await self.call("ffmpeg-1", "ffmpeg-1", {"video": video, "segments": segments}, video)
        clips = parse_clips(cut, segments)
        async with asyncio.TaskGroup() as group:
            for clip in clips:
                group.create_task(self.run_clip(clip))

    async def run_clip(self, clip: Clip) -> None:
        prepared = await self.call(
            f"ffmpeg-2/clip-{clip.index}",
            "ffmpeg-2",
            {"clip": clip.uri, "index": clip.index},
            clip.uri,
            clip=clip.index,
        )
        async with asyncio.TaskGroup() as group:
            group.create_task(self.transcribe(clip, prepared))
            group.create_task(self.detect(clip, prepared))

    async def transcribe(self, clip: Clip, prepared: dict[str, Any]) -> None:
        audio = prepared.get("wav")
        if not audio:
            self.take_note(prepared)
            return
        result = await self.call(
            f"asr/clip-{clip.index}",
            "asr",
            {"audio": audio, "index": clip.index},
            audio,
            clip=clip.index,
        )
        self.transcripts.append(
            {
                "clip": clip.index,
                "text": str(result.get("text", "")).strip(),
                "start_s": clip.start_s,
                "end_s": clip.end_s,
                "transcript": result.get("transcript"),
            }
        )

    async def detect(self, clip: Clip, prepared: dict[str, Any]) -> None:
        video = prepared.get("small")
        if not video or prepared.get("has_video") is False:
            return
        sampled = await self.call(
            f"ffmpeg-3/clip-{clip.index}",
            "ffmpeg-3",
            {"video": video, "index": clip.index},
            video,
            clip=clip.index,
        )
        self.take_note(sampled)
        frames = parse_frames(sampled)
        async with asyncio.TaskGroup() as group:
            for frame_index, frame_uri in frames:
                group.create_task(self.detect_frame(clip, frame_index, frame_uri))

    async def detect_frame(self, clip: Clip, frame_index: int, frame_uri: str) -> None:
        result = await self.call(
            f"object-detector/clip-{clip.index}/frame-{frame_index}",
            "object-detector",
            {"frame": frame_uri, "clip_index": clip.index, "frame_index": frame_index},
            frame_uri,
            clip=clip.index,
            frame=frame_index,
        )
        for detection in result.get("detections") or []:
            self.detections.append(
                {
                    "clip": clip.index,
                    "frame": frame_index,
                    "label": detection.get("label"),
                    "score": detection.get("score"),
                    "box": detection.get("box"),
                }
            )

    async def call(
        self,
        step: str,
        stage: str,
        body: dict[str, Any],
        input: str,
        *,
        clip: int | None = None,
        frame: int | None = None,
    ) -> dict[str, Any]:
        """Call ``stage`` as step ``step``, record its telemetry and state, return its output."""
        async with self.semaphore:
            self.steps[step] = {
                "stage": stage,
                "input": input,
                "clip": clip,
                "frame": frame,
                "status": "running",
                "started_at": time.time(),
            }
            extra = {"step": step, "clip": clip, "frame": frame}
            try:
                result: CallResult = await self.client.call(
                    stage, {"request_id": self.request_id, **body}, input, extra
                )
            except FunctionCallError as exc:
                self.invocations.append(exc.telemetry)
                self.steps[step].update(
                    status="error", error={"kind": exc.kind, "message": exc.reason}
                )
                if self.failure is None:
                    self.failure = exc
                    logger.warning(
                        "Request %s failed at %s on %s: %s",
                        self.request_id,
                        exc.stage,
                        exc.input,
                        exc.reason,
                    )
                await self.save_state()
                raise
        self.invocations.append(result.telemetry)
        self.steps[step].update(status="ok", output=result.output)
        await self.save_state()
        return result.output

    def take_note(self, output: dict[str, Any]) -> None:
        note = output.get("note")
        if isinstance(note, str) and note and note not in self.notes:
            self.notes.append(note)

    def summary(self) -> dict[str, Any]:
        error = None
        if self.failure is not None:
            error = {
                "stage": self.failure.stage,
                "input": self.failure.input,
                "message": self.failure.reason,
                "kind": self.failure.kind,
                "status_code": self.failure.status_code,
            }
        return {
            "request_id": self.request_id,
            "status": self.status,
            "video": self.video,
            "transcripts": sorted(self.transcripts, key=lambda t: t["clip"]),
            "detections": sorted(self.detections, key=lambda d: (d["clip"], d["frame"])),
            "invocations": list(self.invocations),
            "error": error,
            "notes": list(self.notes),
        }

    async def save_state(self) -> None:
        """Write ``state.json``; writes are serialised so the last one has the latest state."""
        async with self._state_lock:
            state = {
                "request_id": self.request_id,
                "video": self.video,
                "status": self.status,
                "updated_at": time.time(),
                "steps": self.steps,
                "error": self.summary()["error"],
            }
            data = json.dumps(state, indent=1, default=str).encode()
            await asyncio.to_thread(self.store.put_bytes, self.state_key, data)


def parse_clips(output: dict[str, Any], segments: list[dict[str, Any]]) -> list[Clip]:
    """Read ffmpeg-1's clips, each a URI or an object with ``uri``/``clip`` and times."""
    clips = []
    for position, item in enumerate(output.get("clips") or []):
        if isinstance(item, str):
            item = {"uri": item}
        segment = segments[position] if position < len(segments) else {}
        clips.append(
            Clip(
                index=int(item.get("index", position)),
                uri=item.get("uri") or item.get("clip") or item.get("video"),
                start_s=item.get("start_s", segment.get("start_s")),
                end_s=item.get("end_s", segment.get("end_s")),
            )
        )
    return clips


def parse_frames(output: dict[str, Any]) -> list[tuple[int, str]]:
    """Read ffmpeg-3's frames, each a URI or an object with ``uri``/``frame`` and ``index``."""
    frames = []
    for position, item in enumerate(output.get("frames") or []):
        if isinstance(item, str):
            frames.append((position, item))
        else:
            frames.append((int(item.get("index", position)), item.get("uri") or item["frame"]))
    return frames


def _first_leaf(group: BaseExceptionGroup) -> BaseException:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


class OrchestratorStage(Stage[OrchestratorConfig]):
    name = "orchestrator"
    config_class = OrchestratorConfig

    def __init__(self, config: OrchestratorConfig | None = None):
        super().__init__(config)
        self.gateway_url = ""

    def load(self) -> None:
        url = self.config.gateway_url or os.environ.get(ENV_GATEWAY_URL, "")
        if not url.startswith(("http://", "https://")):
            raise EngineUnavailableError(
                self.name,
                ENV_GATEWAY_URL,
                f"no valid gateway URL ({url!r}); set the config field gateway_url or "
                f"{ENV_GATEWAY_URL} to the gateway's http:// address",
            )
        self.gateway_url = url.rstrip("/")

    def invoke(self, request: dict[str, Any], store: ArtifactStore) -> StageResult:
        """Run the chain; a request without ``request_id`` gets a new uuid4 hex id.

        ``Stage.invoke`` checks the id before any work, so an invalid one is rejected with
        :class:`~pipeline.errors.BadRequestError`.
        """
        if isinstance(request, dict) and request.get("request_id") is None:
            request = {**request, "request_id": uuid.uuid4().hex}
        return super().invoke(request, store)

    def run(self, request: dict[str, Any], invocation: Invocation) -> dict[str, Any]:
        video = require(request, "video", self.name)
        # Reject a URI outside the store or with '..' before any stage runs.
        invocation.store.key_from_uri(video)
        return asyncio.run(self.run_chain(invocation.request_id, video, invocation.store))

    async def run_chain(self, request_id: str, video: str, store: ArtifactStore) -> dict[str, Any]:
        retry = self.config.retry_policy()
        limits = httpx.Limits(max_connections=self.config.max_parallel * 2)
        async with httpx.AsyncClient(limits=limits) as http:
            client = FunctionClient(
                self.gateway_url, http, timeout_s=self.config.call_timeout_s, retry=retry
            )
            chain = ChainRun(
                request_id, video, store, client, asyncio.Semaphore(self.config.max_parallel)
            )
            logger.info("Request %s: chain started on %s", request_id, video)
            summary = await chain.run()
        logger.info(
            "Request %s: %d transcript(s), %d detection(s), %d call(s)",
            request_id,
            len(summary["transcripts"]),
            len(summary["detections"]),
            len(summary["invocations"]),
        )
        return summary
