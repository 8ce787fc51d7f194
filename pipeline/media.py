"""Run the ffmpeg binary and probe media files with PyAV, raising the pipeline's errors.

The ffmpeg binary is ``ffmpeg`` on PATH if there is one, else the binary inside the
``imageio-ffmpeg`` wheel. That wheel ships no ffprobe, so :func:`probe` reads the container
with PyAV (the ``av`` package) instead.

ffmpeg always runs from an argument list, never through a shell, so file names with spaces,
quotes or non-ASCII letters reach it unchanged.
"""

from __future__ import annotations

import functools
import logging
import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from pipeline.errors import (
    ArtifactNotFoundError,
    BadRequestError,
    EngineUnavailableError,
    InvalidKeyError,
    MediaError,
    StageError,
)

if TYPE_CHECKING:
    from pipeline.stages.base import Invocation

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 300.0
"""Default wall-time limit of one ffmpeg run, in seconds."""

STDERR_TAIL_CHARS = 1200
"""Number of characters from the end of ffmpeg's stderr that an error message includes."""

TRUNCATION_TOLERANCE_S = 0.5
"""Maximum gap, in seconds, between the end of a stream's last packet and its declared end."""


@dataclass(frozen=True)
class MediaInfo:
    """Streams and duration of a media file, as read by :func:`probe`.

    ``has_video`` ignores cover pictures attached to audio files. Audio fields are None
    without an audio stream, and video fields are None without a video stream.
    """

    format_name: str
    duration_s: float
    has_audio: bool
    has_video: bool
    audio_codec: str | None = None
    audio_channels: int | None = None
    audio_rate_hz: int | None = None
    video_codec: str | None = None
    video_width: int | None = None
    video_height: int | None = None
    video_fps: float | None = None


@functools.cache
def _locate_ffmpeg() -> str | None:
    on_path = shutil.which("ffmpeg")
    if on_path:
        return on_path
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError) as exc:
        logger.warning("No ffmpeg on PATH and imageio-ffmpeg has none: %s", exc)
        return None


def ffmpeg_exe(stage: str = "ffmpeg", input: str = "") -> str:
    """Return the path of the ffmpeg binary: ``ffmpeg`` on PATH, else imageio-ffmpeg's.

    Raises:
        EngineUnavailableError: neither exists.
    """
    exe = _locate_ffmpeg()
    if exe is None:
        raise EngineUnavailableError(
            stage,
            input,
            "no ffmpeg binary found; put ffmpeg on PATH or run 'pip install imageio-ffmpeg'",
        )
    return exe


def _tail(text: str) -> str:
    text = text.strip()
    if len(text) <= STDERR_TAIL_CHARS:
        return text
    return "..." + text[-STDERR_TAIL_CHARS:]


def run_ffmpeg(
    args: Sequence[str | Path],
    stage: str,
    input: str,
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    bad_input: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run ffmpeg with ``args`` (everything after the binary name) and wait for it.

    The binary gets ``-hide_banner -nostdin -loglevel error -y`` before ``args``, so it never
    reads stdin, overwrites its outputs and writes only errors to stderr.

    Args:
        args: ffmpeg arguments as a list; paths may be :class:`~pathlib.Path` objects.
        stage: the stage name put in errors.
        input: the artifact URI put in errors.
        timeout_s: wall-time limit in seconds; the process is killed past it.
        bad_input: whether a non-zero exit blames the input (True) or the engine (False).

    Raises:
        MediaError: ffmpeg exited non-zero; the message ends with the tail of its stderr.
        StageError: ffmpeg timed out (``bad_input`` False).
        EngineUnavailableError: the binary is missing or cannot be started.
    """
    exe = ffmpeg_exe(stage, input)
    command = [exe, "-hide_banner", "-nostdin", "-loglevel", "error", "-y", *map(str, args)]
    logger.debug("Running %s", command)
    try:
        completed = subprocess.run(
            command,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise StageError(
            stage,
            input,
            f"ffmpeg timed out after {timeout_s:g} s; raise the stage's timeout_s "
            "or give a shorter input",
        ) from exc
    except OSError as exc:
        raise EngineUnavailableError(
            stage, input, f"cannot start ffmpeg at {exe}: {exc}; reinstall imageio-ffmpeg"
        ) from exc

    if completed.returncode != 0:
        detail = _tail(completed.stderr) or "no message"
        raise MediaError(
            stage,
            input,
            f"ffmpeg failed with exit code {completed.returncode}: {detail}",
            bad_input=bad_input,
        )
    return completed


def probe(path: str | Path, stage: str, input: str, *, check_packets: bool = True) -> MediaInfo:
    """Read the streams and duration of the media file at ``path`` with PyAV.

    With ``check_packets`` the whole file is demuxed (not decoded) to find truncation. A
    stream is truncated when it has fewer packets than its header declares, or when its
    packets end more than :data:`TRUNCATION_TOLERANCE_S` before its declared duration. Only
    a video stream's packet count is checked.

    Raises:
        MediaError: the file is missing or empty, is not media, is truncated, or has no
            audio or video stream.
    """
    import av

    path = Path(path)
    if not path.is_file():
        raise MediaError(stage, input, f"no file at {path}; download the input first")
    if path.stat().st_size == 0:
        raise MediaError(stage, input, "the file is empty; upload the complete video file")

    try:
        with av.open(str(path)) as container:
            info = _describe(container)
            if check_packets:
                _check_complete(container)
    except av.FFmpegError as exc:
        raise MediaError(
            stage,
            input,
            f"not a readable media file ({exc.strerror or exc}); "
            "give a video or audio file such as mp4, mkv, m4a or wav",
        ) from exc
    except _Truncated as exc:
        raise MediaError(
            stage, input, f"the file is truncated ({exc}); upload the complete file again"
        ) from None

    if not info.has_audio and not info.has_video:
        raise MediaError(
            stage,
            input,
            f"the {info.format_name} file has no audio or video stream; give a video file",
        )
    return info


class _Truncated(Exception):
    """A stream has fewer packets, or ends earlier, than its header declares."""


def _is_cover_picture(stream) -> bool:
    import av

    return bool(stream.disposition & av.stream.Disposition.attached_pic)


def _describe(container) -> MediaInfo:
    audio = next(iter(container.streams.audio), None)
    video = next((s for s in container.streams.video if not _is_cover_picture(s)), None)

    duration_s = 0.0
    if container.duration is not None:
        duration_s = container.duration / 1_000_000
    else:
        for stream in (audio, video):
            if stream is not None and stream.duration is not None and stream.time_base:
                duration_s = max(duration_s, float(stream.duration * stream.time_base))

    fields: dict = {}
    if audio is not None:
        fields.update(
            audio_codec=audio.codec_context.name,
            audio_channels=audio.codec_context.channels,
            audio_rate_hz=audio.codec_context.sample_rate,
        )
    if video is not None:
        rate = video.average_rate or video.guessed_rate
        fields.update(
            video_codec=video.codec_context.name,
            video_width=video.codec_context.width,
            video_height=video.codec_context.height,
            video_fps=float(rate) if rate else None,
        )
    return MediaInfo(
        format_name=container.format.name,
        duration_s=duration_s,
        has_audio=audio is not None,
        has_video=video is not None,
        **fields,
    )


def _check_complete(container) -> None:
    streams = [
        s
        for s in container.streams
        if s.type == "audio" or (s.type == "video" and not _is_cover_picture(s))
    ]
    counts = {s.index: 0 for s in streams}
    ends_s = {s.index: 0.0 for s in streams}
    for packet in container.demux(streams):
        if packet.size == 0 or packet.pts is None:
            continue
        index = packet.stream.index
        counts[index] += 1
        end = float((packet.pts + (packet.duration or 0)) * packet.time_base)
        ends_s[index] = max(ends_s[index], end)

    for stream in streams:
        # Audio headers may count samples instead of packets (PCM in mp4 does), so only a
        # video stream's frame count is compared with its packets.
        declared = stream.frames if stream.type == "video" else 0
        if declared and counts[stream.index] < declared:
            raise _Truncated(
                f"{stream.type} stream {stream.index} has {counts[stream.index]} of "
                f"{declared} packets"
            )
        if stream.duration and stream.time_base:
            declared_s = float(((stream.start_time or 0) + stream.duration) * stream.time_base)
            if ends_s[stream.index] < declared_s - TRUNCATION_TOLERANCE_S:
                raise _Truncated(
                    f"{stream.type} stream {stream.index} ends at {ends_s[stream.index]:.2f} s "
                    f"of {declared_s:.2f} s"
                )


_SAFE_SUFFIX = re.compile(r"^\.[A-Za-z0-9]{1,8}$")


def download_input(invocation: Invocation, uri: str, stage: str, field: str, stem: str) -> Path:
    """Copy the artifact ``uri`` into the invocation's scratch folder and return its path.

    The local name is ``stem`` plus the artifact's suffix when that suffix is plain letters
    and digits, so an untrusted file name never becomes part of a local path.

    Raises:
        BadRequestError: ``uri`` is not a valid key or URI of this store.
        ArtifactNotFoundError: nothing is stored under ``uri``; the message names the stage.
    """
    suffix = PurePosixPath(urlparse(uri).path if "://" in uri else uri).suffix
    name = stem + (suffix.lower() if _SAFE_SUFFIX.match(suffix) else "")
    try:
        return invocation.store.get_file(uri, invocation.scratch / name)
    except InvalidKeyError as exc:
        raise BadRequestError(f"{stage}: field {field!r} is not a valid artifact: {exc}") from exc
    except ArtifactNotFoundError as exc:
        raise ArtifactNotFoundError(
            f"{stage}: field {field!r} names no stored artifact: {exc} "
            "Upload the file first or check the URI."
        ) from exc
