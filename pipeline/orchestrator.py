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
response then carries the summary so far as its ``output``. A stage that replies ``ok`` with
an output of the wrong shape (a field missing or of the wrong type) fails the same way, with
kind ``bad_response`` naming the field. Any other exception inside the chain still saves
``state.json`` with ``status: error`` before the request fails with kind ``internal``.

A stage that replies 429 or 503 (every replica busy) is retried until ``retry_deadline_s``,
so a burst larger than the stage's replicas waits for a free one instead of failing.

Inputs without speech (no audio track, or silence) give an ``ok`` summary with no clips, so
no transcripts and no detections, and a note saying why.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx

from pipeline.errors import EngineUnavailableError, InvocationError, StorageError
from pipeline.ids import check_request_id
from pipeline.server.client import (
    CallResult,
    FunctionCallError,
    FunctionClient,
    ResponseShapeError,
    RetryPolicy,
    bad_response_error,
    is_number,
)
from pipeline.stages.base import Invocation, Stage, StageResult, require
from pipeline.store import ArtifactStore

logger = logging.getLogger(__name__)

ENV_GATEWAY_URL = "VS_GATEWAY_URL"

ParsedT = TypeVar("ParsedT")


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
class Split:
    """ffmpeg-0's output: the video track (or the audio alone in an mp4) and the audio."""

    video: str
    audio: str | None


@dataclass
class PreparedClip:
    """ffmpeg-2's output for one clip: its wav for asr and small mp4 for ffmpeg-3."""

    wav: str | None
    small: str | None
    has_video: bool | None


@dataclass
class Transcript:
    text: str
    uri: str | None


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
    unexpected_error: dict[str, Any] | None = None
    """The ``error`` of ``state.json`` after an exception other than a failed stage call."""
    status: str = "running"
    _state_version: int = 0
    """Number of the latest ``state.json`` snapshot taken."""
    _written_version: int = 0
    """Number of the snapshot last written to the store."""
    _write_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def state_key(self) -> str:
        return f"requests/{self.request_id}/state.json"

    async def run(self) -> dict[str, Any]:
        """Run every step and return the summary; raise ChainFailedError if a call failed."""
        await self.save_state()
        try:
            await self.run_steps()
        except* FunctionCallError:
            pass  # self.failure is the first failed call.
        except* Exception as group:
            error = _first_leaf(group)
            await self.save_unexpected_error(error)
            raise error from None
        self.status = "error" if self.failure else "ok"
        self.cancel_running_steps()
        await self.save_state()
        summary = self.summary()
        if self.failure is not None:
            raise ChainFailedError(self.failure, summary)
        return summary

    async def save_unexpected_error(self, error: BaseException) -> None:
        """Save ``state.json`` with ``status: error`` after an exception other than a failed call.

        A failure to save is logged, so the caller can still raise ``error`` itself.
        """
        self.status = "error"
        self.unexpected_error = {
            "stage": OrchestratorStage.name,
            "input": self.video,
            "message": f"Unexpected {type(error).__name__} in the orchestrator: {error}",
            "kind": "internal",
            "status_code": 500,
        }
        self.cancel_running_steps()
        try:
            await self.save_state()
        except StorageError as exc:
            logger.error(
                "Request %s: cannot save %s after %r: %s",
                self.request_id,
                self.state_key,
                error,
                exc,
            )

    def cancel_running_steps(self) -> None:
        for step in self.steps.values():
            if step["status"] == "running":
                step["status"] = "cancelled"

    async def run_steps(self) -> None:
        split = await self.call(
            "ffmpeg-0", "ffmpeg-0", {"video": self.video}, self.video, parse_split
        )
        audio = split.audio
        segments = await self.call(
            "librosa", "librosa", {"audio": audio}, audio or "no audio", parse_segments
        )
        if not segments:
            return

        video = split.video
        clips = await self.call(
            "ffmpeg-1",
            "ffmpeg-1",
            {"video": video, "segments": segments},
            video,
            lambda output: parse_clips(output, segments),
        )
        async with asyncio.TaskGroup() as group:
            for clip in clips:
                group.create_task(self.run_clip(clip))

    async def run_clip(self, clip: Clip) -> None:
        prepared = await self.call(
            f"ffmpeg-2/clip-{clip.index}",
            "ffmpeg-2",
            {"clip": clip.uri, "index": clip.index},
            clip.uri,
            parse_prepared_clip,
            clip=clip.index,
        )
        async with asyncio.TaskGroup() as group:
            group.create_task(self.transcribe(clip, prepared))
            group.create_task(self.detect(clip, prepared))

    async def transcribe(self, clip: Clip, prepared: PreparedClip) -> None:
        audio = prepared.wav
        if not audio:
            return
        result = await self.call(
            f"asr/clip-{clip.index}",
            "asr",
            {"audio": audio, "index": clip.index},
            audio,
            parse_transcript,
            clip=clip.index,
        )
        self.transcripts.append(
            {
                "clip": clip.index,
                "text": result.text.strip(),
                "start_s": clip.start_s,
                "end_s": clip.end_s,
                "transcript": result.uri,
            }
        )

    async def detect(self, clip: Clip, prepared: PreparedClip) -> None:
        video = prepared.small
        if not video or prepared.has_video is False:
            return
        frames = await self.call(
            f"ffmpeg-3/clip-{clip.index}",
            "ffmpeg-3",
            {"video": video, "index": clip.index},
            video,
            parse_frames,
            clip=clip.index,
        )
        async with asyncio.TaskGroup() as group:
            for frame_index, frame_uri in frames:
                group.create_task(self.detect_frame(clip, frame_index, frame_uri))

    async def detect_frame(self, clip: Clip, frame_index: int, frame_uri: str) -> None:
        detections = await self.call(
            f"object-detector/clip-{clip.index}/frame-{frame_index}",
            "object-detector",
            {"frame": frame_uri, "clip_index": clip.index, "frame_index": frame_index},
            frame_uri,
            parse_detections,
            clip=clip.index,
            frame=frame_index,
        )
        for detection in detections:
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
        parse: Callable[[dict[str, Any]], ParsedT],
        *,
        clip: int | None = None,
        frame: int | None = None,
    ) -> ParsedT:
        """Call ``stage`` as step ``step``, record its telemetry and state, return its output.

        ``parse`` reads the output and raises :class:`ResponseShapeError` on a field that is
        missing or of the wrong type, which fails the call with kind ``bad_response``.
        """
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
                await self.record_failure(step, exc)
                raise
        try:
            parsed = parse(result.output)
        except ResponseShapeError as exc:
            failure = bad_response_error(stage, input, exc, result.telemetry)
            self.steps[step]["output"] = result.output
            await self.record_failure(step, failure)
            raise failure from exc
        self.invocations.append(result.telemetry)
        self.steps[step].update(status="ok", output=result.output)
        self.take_note(result.output)
        await self.save_state()
        return parsed

    async def record_failure(self, step: str, exc: FunctionCallError) -> None:
        """Record a failed call in the step and the invocations; the first one fails the run."""
        self.invocations.append(exc.telemetry)
        self.steps[step].update(status="error", error={"kind": exc.kind, "message": exc.reason})
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
        """Write ``state.json`` with the current state; a newer snapshot is never overwritten.

        When a failure cancels a task that is waiting here, its write goes on in its worker
        thread. So the writes take a thread lock, and a snapshot older than the one already
        written is dropped.
        """
        self._state_version += 1
        version = self._state_version
        state = {
            "request_id": self.request_id,
            "video": self.video,
            "status": self.status,
            "updated_at": time.time(),
            "steps": self.steps,
            "error": self.summary()["error"] or self.unexpected_error,
        }
        data = json.dumps(state, indent=1, default=str).encode()
        await asyncio.to_thread(self._write_state, version, data)

    def _write_state(self, version: int, data: bytes) -> None:
        with self._write_lock:
            if version <= self._written_version:
                return
            self.store.put_bytes(self.state_key, data)
            self._written_version = version


EXPECTED_URI = "an artifact URI string"
EXPECTED_OPTIONAL_URI = "an artifact URI string or null"


def parse_split(output: dict[str, Any]) -> Split:
    """Read ffmpeg-0's output ``{video, audio}``; ``audio`` is null for a video without sound."""
    return Split(
        video=_required_uri(output, "video", "video"),
        audio=_optional(output, "audio", "audio", str, EXPECTED_OPTIONAL_URI),
    )


def parse_segments(output: dict[str, Any]) -> list[dict[str, Any]]:
    """Read librosa's ``segments``, a list of objects with ``start_s`` and ``end_s``."""
    segments = _required_list(output, "segments", "a list of objects with 'start_s' and 'end_s'")
    for position, segment in enumerate(segments):
        field_path = f"segments[{position}]"
        if not isinstance(segment, dict):
            raise ResponseShapeError.wrong_type(
                field_path, segment, "an object with 'start_s' and 'end_s'"
            )
        for name in ("start_s", "end_s"):
            if not is_number(segment.get(name)):
                raise ResponseShapeError.wrong_type(
                    f"{field_path}.{name}", segment.get(name), "a number of seconds"
                )
    return segments


def parse_clips(output: dict[str, Any], segments: list[dict[str, Any]]) -> list[Clip]:
    """Read ffmpeg-1's clips, each a URI or an object with ``uri``/``clip``, ``index`` and times.

    A clip without ``index`` gets its position, and one without times gets those of the
    segment at its position. Indices must be distinct, since they name the clip's steps.
    """
    expected_item = "a URI string or an object with 'uri' and 'index'"
    clips: list[Clip] = []
    for position, item in enumerate(_required_list(output, "clips", f"a list of {expected_item}")):
        field_path = f"clips[{position}]"
        if isinstance(item, str):
            item = {"uri": item}
        elif not isinstance(item, dict):
            raise ResponseShapeError.wrong_type(
                field_path, item, "an object with 'uri' and 'index'"
            )
        uri_field = next((name for name in ("uri", "clip", "video") if name in item), "uri")
        segment = segments[position] if position < len(segments) else {}
        clips.append(
            Clip(
                index=_index(item, field_path, position),
                uri=_required_uri(item, uri_field, f"{field_path}.{uri_field}"),
                start_s=_optional_seconds(item, segment, "start_s", field_path),
                end_s=_optional_seconds(item, segment, "end_s", field_path),
            )
        )
    _check_distinct([clip.index for clip in clips], "clips", "clip")
    return clips


def parse_prepared_clip(output: dict[str, Any]) -> PreparedClip:
    """Read ffmpeg-2's ``{wav, small, has_video}``; each may be null."""
    return PreparedClip(
        wav=_optional(output, "wav", "wav", str, EXPECTED_OPTIONAL_URI),
        small=_optional(output, "small", "small", str, EXPECTED_OPTIONAL_URI),
        has_video=_optional(output, "has_video", "has_video", bool, "a boolean or null"),
    )


def parse_transcript(output: dict[str, Any]) -> Transcript:
    """Read asr's ``{text, transcript}``; ``transcript`` is the URI of the full result."""
    text = output.get("text")
    if not isinstance(text, str):
        raise _wrong_or_missing(output, "text", "text", "a string")
    return Transcript(
        text=text,
        uri=_optional(output, "transcript", "transcript", str, EXPECTED_OPTIONAL_URI),
    )


def parse_frames(output: dict[str, Any]) -> list[tuple[int, str]]:
    """Read ffmpeg-3's frames, each a URI or an object with ``uri``/``frame`` and ``index``."""
    expected_item = "a URI string or an object with 'uri' and 'index'"
    frames: list[tuple[int, str]] = []
    for position, item in enumerate(_required_list(output, "frames", f"a list of {expected_item}")):
        field_path = f"frames[{position}]"
        if isinstance(item, str):
            item = {"uri": item}
        elif not isinstance(item, dict):
            raise ResponseShapeError.wrong_type(
                field_path, item, "an object with 'uri' and 'index'"
            )
        uri_field = "frame" if "uri" not in item and "frame" in item else "uri"
        frames.append(
            (
                _index(item, field_path, position),
                _required_uri(item, uri_field, f"{field_path}.{uri_field}"),
            )
        )
    _check_distinct([index for index, _ in frames], "frames", "frame")
    return frames


def parse_detections(output: dict[str, Any]) -> list[dict[str, Any]]:
    """Read object-detector's ``detections``: objects with ``label``, ``score`` and ``box``."""
    expected_item = "an object with 'label', 'score' and 'box'"
    detections = _required_list(output, "detections", f"a list of {expected_item}")
    for position, detection in enumerate(detections):
        if not isinstance(detection, dict):
            raise ResponseShapeError.wrong_type(f"detections[{position}]", detection, expected_item)
    return detections


def _wrong_or_missing(
    mapping: dict[str, Any], name: str, field_path: str, expected: str
) -> ResponseShapeError:
    if name not in mapping:
        return ResponseShapeError.missing(field_path, expected)
    return ResponseShapeError.wrong_type(field_path, mapping[name], expected)


def _required_uri(mapping: dict[str, Any], name: str, field_path: str) -> str:
    value = mapping.get(name)
    if not isinstance(value, str) or not value:
        raise _wrong_or_missing(mapping, name, field_path, EXPECTED_URI)
    return value


def _required_list(output: dict[str, Any], name: str, expected: str) -> list[Any]:
    value = output.get(name)
    if not isinstance(value, list):
        raise _wrong_or_missing(output, name, name, expected)
    return value


def _optional(
    mapping: dict[str, Any], name: str, field_path: str, kind: type, expected: str
) -> Any:
    """Return ``mapping[name]`` if it is of type ``kind``, None if it is null or missing."""
    value = mapping.get(name)
    if value is not None and not isinstance(value, kind):
        raise ResponseShapeError.wrong_type(field_path, value, expected)
    return value


def _index(item: dict[str, Any], field_path: str, position: int) -> int:
    """Return the item's ``index``, or its position in the list when it has none."""
    index = item.get("index", position)
    if not isinstance(index, int) or isinstance(index, bool):
        raise ResponseShapeError.wrong_type(f"{field_path}.index", index, "a non-negative integer")
    if index < 0:
        raise ResponseShapeError(f"{field_path}.index {index}; expected a non-negative integer")
    return index


def _optional_seconds(
    item: dict[str, Any], segment: dict[str, Any], name: str, field_path: str
) -> float | None:
    """Return the item's time ``name`` in seconds, else the segment's, else None."""
    value = item.get(name, segment.get(name))
    if value is not None and not is_number(value):
        raise ResponseShapeError.wrong_type(f"{field_path}.{name}", value, "a number of seconds")
    return value


def _check_distinct(indices: list[int], list_name: str, noun: str) -> None:
    first_position: dict[int, int] = {}
    for position, index in enumerate(indices):
        if index in first_position:
            raise ResponseShapeError(
                f"index {index} for both {list_name}[{first_position[index]}] and "
                f"{list_name}[{position}]; expected a distinct index per {noun}"
            )
        first_position[index] = position


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
