"""Stage ``ffmpeg-2``: make a clip's speech wav and a small mp4 for frame sampling.

Request ``{request_id, clip: URI, index: int}``; output ``{wav: URI | null, small: URI,
has_video, note?}`` with ``clip_<index>.wav`` (PCM, mono by default, at
``wav_sample_rate_hz``) and ``clip_<index>.small.mp4`` (scaled to at most ``max_height``
pixels high and compressed). Both come from one ffmpeg run that decodes the clip once.

A clip without video still gets a ``small`` mp4 holding only its audio, with ``has_video``
false, so ffmpeg-3 can return no frames for it. A clip without audio gets ``wav: null``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import BadRequestError
from pipeline.media import (
    DEFAULT_TIMEOUT_S,
    MediaInfo,
    download_input,
    ffmpeg_exe,
    probe,
    run_ffmpeg,
)
from pipeline.stages.base import EngineTimer, Invocation, Stage, require

logger = logging.getLogger(__name__)

NOTE_NO_AUDIO = "the clip has no audio stream, so it has no wav"


@dataclass
class Ffmpeg2Config:
    """Settings of ``ffmpeg-2``.

    ``crf`` and ``preset`` are libx264's quality (0-51, lower is better) and speed settings;
    ``audio_bitrate`` is the small mp4's AAC bitrate in ffmpeg's notation (``64k``).
    """

    wav_sample_rate_hz: int = 16000
    wav_channels: int = 1
    video_codec: str = "libx264"
    crf: int = 32
    preset: str = "veryfast"
    max_height: int = 240
    audio_bitrate: str = "64k"
    timeout_s: float = DEFAULT_TIMEOUT_S

    def __post_init__(self) -> None:
        if self.wav_sample_rate_hz <= 0 or self.wav_channels <= 0:
            raise ValueError(
                f"wav_sample_rate_hz and wav_channels must be positive, not "
                f"{self.wav_sample_rate_hz} and {self.wav_channels}."
            )
        if not 0 <= self.crf <= 51:
            raise ValueError(f"crf must be between 0 and 51, not {self.crf}.")
        if self.max_height < 2:
            raise ValueError(f"max_height must be at least 2 pixels, not {self.max_height}.")
        if self.timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, not {self.timeout_s}.")


def require_index(request: dict[str, Any], stage: str) -> int:
    """Return the request's non-negative integer ``index`` or raise BadRequestError."""
    index = request.get("index")
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise BadRequestError(
            f"{stage}: field 'index' must be a non-negative integer (the clip number), "
            f"not {index!r}."
        )
    return index


class Ffmpeg2Stage(Stage[Ffmpeg2Config]):
    name = "ffmpeg-2"
    config_class = Ffmpeg2Config

    def load(self) -> None:
        logger.info("ffmpeg-2 uses %s", ffmpeg_exe(self.name))

    def run(self, request: dict[str, Any], invocation: Invocation) -> dict[str, Any]:
        clip_uri = require(request, "clip", self.name)
        index = require_index(request, self.name)
        source = download_input(invocation, clip_uri, self.name, "clip", "clip")
        with EngineTimer(invocation.telemetry):
            info = probe(source, self.name, clip_uri)

        wav_path = invocation.scratch / f"clip_{index}.wav"
        small_path = invocation.scratch / f"clip_{index}.small.mp4"
        args: list[str | Path] = ["-i", source]
        if info.has_audio:
            args += self._wav_args(wav_path)
        args += self._small_args(info, small_path)
        with EngineTimer(invocation.telemetry):
            run_ffmpeg(args, self.name, clip_uri, timeout_s=self.config.timeout_s)

        store = invocation.store
        output: dict[str, Any] = {
            "wav": None,
            "small": store.put_file(invocation.key(self.name, small_path.name), small_path),
            "has_video": info.has_video,
        }
        if info.has_audio:
            output["wav"] = store.put_file(invocation.key(self.name, wav_path.name), wav_path)
        else:
            output["note"] = NOTE_NO_AUDIO
        logger.info(
            "ffmpeg-2 made the wav and small mp4 of clip %d (%s) for request %s",
            index,
            clip_uri,
            invocation.request_id,
        )
        return output

    def _wav_args(self, target: Path) -> list[str | Path]:
        return [
            "-map", "0:a:0",
            "-vn",
            "-ac", str(self.config.wav_channels),
            "-ar", str(self.config.wav_sample_rate_hz),
            "-c:a", "pcm_s16le",
            "-f", "wav",
            target,
        ]  # fmt: skip

    def _small_args(self, info: MediaInfo, target: Path) -> list[str | Path]:
        args: list[str | Path] = []
        if info.has_video:
            # libx264 with yuv420p needs even sides; -2 keeps the aspect with an even width.
            height = min(info.video_height or self.config.max_height, self.config.max_height)
            height -= height % 2
            args += [
                "-map", "0:v:0",
                "-vf", f"scale=-2:{height}",
                "-c:v", self.config.video_codec,
                "-preset", self.config.preset,
                "-crf", str(self.config.crf),
                "-pix_fmt", "yuv420p",
            ]  # fmt: skip
        if info.has_audio:
            args += ["-map", "0:a:0", "-c:a", "aac", "-b:a", self.config.audio_bitrate]
        return [*args, "-sn", "-dn", "-movflags", "+faststart", "-f", "mp4", target]
