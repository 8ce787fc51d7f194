"""Stage ``ffmpeg-0``: split an uploaded video into an mp4 for cutting and a wav for speech.

Request ``{request_id, video: URI}``; output ``{video, audio, has_audio, has_video,
duration_s, note?}``. ``video.mp4`` keeps the first video and the first audio stream (stream
copy, or a re-encode when the codecs do not fit in mp4), because the later stages cut clips
from it and take each clip's speech from its audio. ``audio.wav`` is PCM at the configured
rate and channel count, so six-channel audio is downmixed to mono by default.

Inputs that still go on:
- a video without audio: ``audio`` is null and the output's ``note`` explains why no speech
  will be found.
- audio without video (m4a, wav, ...): ``has_video`` is false and ``video.mp4`` holds only
  the audio, so speech is still cut and transcribed and the frame stages return no frames.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from pipeline.errors import MediaError
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

NOTE_NO_AUDIO = "the video has no audio stream, so no speech can be found"
NOTE_NO_VIDEO = "the input has no video stream, so no frames will be sampled"


@dataclass
class Ffmpeg0Config:
    """Settings of ``ffmpeg-0``.

    ``fallback_video_codec`` and ``fallback_audio_codec`` re-encode the streams when a
    stream copy into mp4 fails (for example PCM audio from a wav or mov file).
    """

    audio_sample_rate_hz: int = 16000
    audio_channels: int = 1
    timeout_s: float = DEFAULT_TIMEOUT_S
    fallback_video_codec: str = "libx264"
    fallback_audio_codec: str = "aac"

    def __post_init__(self) -> None:
        if self.audio_sample_rate_hz <= 0:
            raise ValueError(
                f"audio_sample_rate_hz must be positive, not {self.audio_sample_rate_hz}."
            )
        if self.audio_channels <= 0:
            raise ValueError(f"audio_channels must be positive, not {self.audio_channels}.")
        if self.timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, not {self.timeout_s}.")


class Ffmpeg0Stage(Stage[Ffmpeg0Config]):
    name = "ffmpeg-0"
    config_class = Ffmpeg0Config

    def load(self) -> None:
        logger.info("ffmpeg-0 uses %s", ffmpeg_exe(self.name))

    def run(self, request: dict[str, Any], invocation: Invocation) -> dict[str, Any]:
        video_uri = require(request, "video", self.name)
        source = download_input(invocation, video_uri, self.name, "video", "source")

        with EngineTimer(invocation.telemetry):
            info = probe(source, self.name, video_uri)

        video_path = invocation.scratch / "video.mp4"
        with EngineTimer(invocation.telemetry):
            self._remux(source, video_path, info, video_uri)
        output: dict[str, Any] = {
            "video": invocation.store.put_file(invocation.key(self.name, "video.mp4"), video_path),
            "audio": None,
            "has_audio": info.has_audio,
            "has_video": info.has_video,
            "duration_s": round(info.duration_s, 3),
        }

        if info.has_audio:
            audio_path = invocation.scratch / "audio.wav"
            with EngineTimer(invocation.telemetry):
                self._extract_audio(source, audio_path, video_uri)
            output["audio"] = invocation.store.put_file(
                invocation.key(self.name, "audio.wav"), audio_path
            )
        else:
            output["note"] = NOTE_NO_AUDIO
        if not info.has_video:
            output["note"] = NOTE_NO_VIDEO

        logger.info(
            "ffmpeg-0 split %s (%.1f s, audio=%s, video=%s) for request %s",
            video_uri,
            info.duration_s,
            info.has_audio,
            info.has_video,
            invocation.request_id,
        )
        return output

    def _remux(self, source, target, info: MediaInfo, input_uri: str) -> None:
        maps = ["-map", "0:v:0", "-map", "0:a:0?"] if info.has_video else ["-map", "0:a:0"]
        common = ["-i", source, *maps, "-sn", "-dn"]
        tail = ["-movflags", "+faststart", "-f", "mp4", target]
        try:
            run_ffmpeg(
                [*common, "-c", "copy", *tail],
                self.name,
                input_uri,
                timeout_s=self.config.timeout_s,
            )
            return
        except MediaError as exc:
            logger.info("Stream copy of %s into mp4 failed, re-encoding: %s", input_uri, exc.reason)

        encode = ["-c:a", self.config.fallback_audio_codec]
        if info.has_video:
            encode += ["-c:v", self.config.fallback_video_codec, "-pix_fmt", "yuv420p"]
        run_ffmpeg([*common, *encode, *tail], self.name, input_uri, timeout_s=self.config.timeout_s)

    def _extract_audio(self, source, target, input_uri: str) -> None:
        run_ffmpeg(
            [
                "-i", source,
                "-map", "0:a:0",
                "-vn",
                "-ac", str(self.config.audio_channels),
                "-ar", str(self.config.audio_sample_rate_hz),
                "-c:a", "pcm_s16le",
                "-f", "wav",
                target,
            ],
            self.name,
            input_uri,
            timeout_s=self.config.timeout_s,
        )  # fmt: skip
