"""Stage ``ffmpeg-3``: sample JPEG frames from a clip (the second fan-out point).

Request ``{request_id, video: URI (the small clip), index: int}``; output ``{frames: [URI,
...], note?}`` with ``frame_<index>_<j>.jpg``.

A clip of ``d`` seconds gets ``round(d * frames_per_minute / 60)`` frames, raised to
``min_frames`` and capped at ``max_frames``. Frame ``j`` of ``n`` is taken at the middle of
the ``j``-th of ``n`` equal parts of the clip, so a short clip's only frame comes from its
middle. All frames come from one ffmpeg run that seeks once per frame. A clip without video
gets ``frames: []`` and a note.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from pipeline.errors import MediaError
from pipeline.media import DEFAULT_TIMEOUT_S, download_input, ffmpeg_exe, probe, run_ffmpeg
from pipeline.stages.base import EngineTimer, Invocation, Stage, require
from pipeline.stages.ffmpeg2 import require_index

logger = logging.getLogger(__name__)

NOTE_NO_VIDEO = "the clip has no video stream, so it has no frames"


@dataclass
class Ffmpeg3Config:
    """Settings of ``ffmpeg-3``.

    ``frames_per_minute`` defaults to 12, the rate of the original VideoSearcher.
    ``jpeg_quality`` runs from 1 (smallest) to 100 (best) and is mapped linearly onto
    ffmpeg's MJPEG ``-q:v`` scale, 31 (worst) to 2 (best).
    """

    frames_per_minute: float = 12.0
    min_frames: int = 1
    max_frames: int = 12
    jpeg_quality: int = 90
    timeout_s: float = DEFAULT_TIMEOUT_S

    def __post_init__(self) -> None:
        if self.frames_per_minute <= 0:
            raise ValueError(f"frames_per_minute must be positive, not {self.frames_per_minute}.")
        if self.min_frames < 0 or self.max_frames < max(self.min_frames, 1):
            raise ValueError(
                f"need 0 <= min_frames <= max_frames and max_frames >= 1, not "
                f"min_frames={self.min_frames} and max_frames={self.max_frames}."
            )
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be between 1 and 100, not {self.jpeg_quality}.")
        if self.timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, not {self.timeout_s}.")

    @property
    def qscale(self) -> int:
        """ffmpeg's MJPEG ``-q:v`` for ``jpeg_quality``."""
        return round(31 - (self.jpeg_quality - 1) * 29 / 99)


def frame_times_s(duration_s: float, config: Ffmpeg3Config) -> list[float]:
    """Return the times, in seconds from the clip's start, of the frames to sample."""
    count = round(duration_s * config.frames_per_minute / 60.0)
    count = min(max(count, config.min_frames), config.max_frames)
    if duration_s <= 0:
        count = min(count, 1)
    return [(j + 0.5) * duration_s / count for j in range(count)]


class Ffmpeg3Stage(Stage[Ffmpeg3Config]):
    name = "ffmpeg-3"
    config_class = Ffmpeg3Config

    def load(self) -> None:
        logger.info("ffmpeg-3 uses %s", ffmpeg_exe(self.name))

    def run(self, request: dict[str, Any], invocation: Invocation) -> dict[str, Any]:
        video_uri = require(request, "video", self.name)
        index = require_index(request, self.name)
        source = download_input(invocation, video_uri, self.name, "video", "clip")
        with EngineTimer(invocation.telemetry):
            info = probe(source, self.name, video_uri)
        if not info.has_video:
            return {"frames": [], "note": NOTE_NO_VIDEO}

        times_s = frame_times_s(info.duration_s, self.config)
        paths = [invocation.scratch / f"frame_{index}_{j}.jpg" for j in range(len(times_s))]
        with EngineTimer(invocation.telemetry):
            run_ffmpeg(
                self._extract_args(source, times_s, paths),
                self.name,
                video_uri,
                timeout_s=self.config.timeout_s,
            )

        frames = []
        for path, time_s in zip(paths, times_s, strict=True):
            if not path.is_file() or path.stat().st_size == 0:
                logger.warning("ffmpeg-3 found no frame at %.3f s of %s", time_s, video_uri)
                continue
            frames.append(invocation.store.put_file(invocation.key(self.name, path.name), path))
        if times_s and not frames:
            raise MediaError(
                self.name,
                video_uri,
                "ffmpeg decoded no frame from the clip's video stream; check that the clip plays",
            )

        logger.info(
            "ffmpeg-3 sampled %d frame(s) from clip %d (%s) for request %s",
            len(frames),
            index,
            video_uri,
            invocation.request_id,
        )
        return {"frames": frames}

    def _extract_args(self, source, times_s: list[float], targets: list) -> list:
        args: list = []
        for time_s in times_s:
            args += ["-ss", f"{time_s:.3f}", "-i", source]
        for input_index, target in enumerate(targets):
            args += [
                "-map", f"{input_index}:v:0",
                "-frames:v", "1",
                "-q:v", str(self.config.qscale),
                "-f", "image2",
                "-update", "1",
                target,
            ]  # fmt: skip
        return args
