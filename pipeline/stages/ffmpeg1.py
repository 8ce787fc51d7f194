"""Stage ``ffmpeg-1``: cut one clip per speech segment out of the video (the fan-out point).

Request ``{request_id, video: URI, segments: [{start_s, end_s}, ...]}``; output
``{clips: [URI, ...]}`` with ``clip_<i>.mp4`` for segment ``i``, in request order.

``mode`` chooses how a clip is cut:
- ``reencode`` (default) decodes from the keyframe before ``start_s`` and encodes the clip,
  so it starts and ends at the requested times.
- ``copy`` copies the packets without decoding. It is much faster, but the clip starts at a
  keyframe near ``start_s``, so it may begin early or show frozen frames at the start.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pipeline.errors import BadRequestError
from pipeline.media import DEFAULT_TIMEOUT_S, download_input, ffmpeg_exe, probe, run_ffmpeg
from pipeline.stages.base import EngineTimer, Invocation, Stage, require

logger = logging.getLogger(__name__)

END_TOLERANCE_S = 0.25
"""Maximum distance, in seconds, that a segment may end past the video's duration.

The wav that the segments come from can be a few milliseconds longer than the container's
duration, so such ends are clipped to the duration instead of rejected.
"""


class CutMode(StrEnum):
    """Cutting method of ffmpeg-1: a stream copy or a re-encode."""

    COPY = "copy"
    REENCODE = "reencode"


@dataclass
class Ffmpeg1Config:
    """Settings of ``ffmpeg-1``; the codec fields apply to ``reencode`` only.

    ``crf`` and ``preset`` are libx264's quality (0-51, lower is better) and speed settings.
    """

    mode: CutMode = CutMode.REENCODE
    video_codec: str = "libx264"
    crf: int = 23
    preset: str = "veryfast"
    audio_codec: str = "aac"
    audio_bitrate: str = "128k"
    timeout_s: float = DEFAULT_TIMEOUT_S

    def __post_init__(self) -> None:
        try:
            self.mode = CutMode(self.mode)
        except ValueError:
            choices = ", ".join(mode.value for mode in CutMode)
            raise ValueError(f"mode must be one of {choices}, not {self.mode!r}.") from None
        if not 0 <= self.crf <= 51:
            raise ValueError(f"crf must be between 0 and 51, not {self.crf}.")
        if self.timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, not {self.timeout_s}.")


@dataclass(frozen=True)
class Segment:
    """A span of the video in seconds from its start."""

    start_s: float
    end_s: float

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


class Ffmpeg1Stage(Stage[Ffmpeg1Config]):
    name = "ffmpeg-1"
    config_class = Ffmpeg1Config

    def load(self) -> None:
        logger.info("ffmpeg-1 uses %s", ffmpeg_exe(self.name))

    def run(self, request: dict[str, Any], invocation: Invocation) -> dict[str, Any]:
        video_uri = require(request, "video", self.name)
        raw_segments = require(request, "segments", self.name, list)
        if not raw_segments:
            return {"clips": []}

        source = download_input(invocation, video_uri, self.name, "video", "source")
        with EngineTimer(invocation.telemetry):
            info = probe(source, self.name, video_uri)
        segments = parse_segments(raw_segments, info.duration_s, self.name)

        clips = []
        for index, segment in enumerate(segments):
            clip_path = invocation.scratch / f"clip_{index}.mp4"
            with EngineTimer(invocation.telemetry):
                run_ffmpeg(
                    self._cut_args(source, segment, clip_path),
                    self.name,
                    video_uri,
                    timeout_s=self.config.timeout_s,
                )
            key = invocation.key(self.name, f"clip_{index}.mp4")
            clips.append(invocation.store.put_file(key, clip_path))

        logger.info(
            "ffmpeg-1 cut %d clip(s) from %s (%s) for request %s",
            len(clips),
            video_uri,
            self.config.mode.value,
            invocation.request_id,
        )
        return {"clips": clips}

    def _cut_args(self, source, segment: Segment, target) -> list:
        seek = ["-ss", f"{segment.start_s:.3f}", "-i", source, "-t", f"{segment.duration_s:.3f}"]
        maps = ["-map", "0:v:0?", "-map", "0:a:0?", "-sn", "-dn"]
        if self.config.mode is CutMode.COPY:
            codecs = ["-c", "copy", "-avoid_negative_ts", "make_zero"]
        else:
            codecs = [
                "-c:v", self.config.video_codec,
                "-preset", self.config.preset,
                "-crf", str(self.config.crf),
                "-pix_fmt", "yuv420p",
                "-c:a", self.config.audio_codec,
                "-b:a", self.config.audio_bitrate,
            ]  # fmt: skip
        return [*seek, *maps, *codecs, "-movflags", "+faststart", "-f", "mp4", target]


def parse_segments(raw: list, duration_s: float, stage: str) -> list[Segment]:
    """Validate the request's segments against a video of ``duration_s`` seconds.

    An end up to :data:`END_TOLERANCE_S` past the duration is clipped to it.

    Raises:
        BadRequestError: a segment is not an object with finite numbers ``start_s`` and
            ``end_s``, starts before 0 or at or after its end, or lies outside the video.
            The message names the segment's index.
    """
    segments = []
    for index, item in enumerate(raw):
        where = f"{stage}: segment {index} ({item!r})"
        if not isinstance(item, dict):
            raise BadRequestError(f"{where} must be an object with 'start_s' and 'end_s'.")
        values = []
        for field in ("start_s", "end_s"):
            value = item.get(field)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise BadRequestError(f"{where} needs a number in {field!r}.")
            if not math.isfinite(value):
                raise BadRequestError(f"{where} has a non-finite {field!r}.")
            values.append(float(value))
        start_s, end_s = values

        if start_s < 0:
            raise BadRequestError(f"{where} starts before 0 s.")
        if start_s >= end_s:
            raise BadRequestError(f"{where} must start before it ends.")
        if start_s >= duration_s or end_s > duration_s + END_TOLERANCE_S:
            raise BadRequestError(
                f"{where} lies outside the video, which lasts {duration_s:.3f} s; "
                "send segments found in this video's audio."
            )
        segments.append(Segment(start_s, min(end_s, duration_s)))
    return segments
