"""Media cut from the committed sample for the speech and detection model tests.

The helpers call the ffmpeg binary of the imageio-ffmpeg wheel directly, so these tests
depend on no other pipeline module.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import imageio_ffmpeg

SAMPLE_VIDEO = Path(__file__).resolve().parents[2] / "pipeline" / "samples" / "sample.mp4"

SENTENCE_SPANS_S = ((1.2, 4.8), (6.0, 10.4), (11.6, 14.8))
"""Start and end of each spoken sentence in the sample, in seconds, with a little margin.

Measured with ``librosa.effects.split(audio, top_db=30)`` on the sample's 16 kHz track:
1.47-4.45 s, 6.27-10.08 s and 11.87-14.43 s.
"""

ASTRONAUT_FRAME_S = 13.0
"""A time at which the sample shows the astronaut photograph (a frontal face)."""

CAT_FRAME_S = 2.0
"""A time at which the sample shows the cat photograph (no human face)."""


def run_ffmpeg(*args: str | Path) -> None:
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error"]
    subprocess.run([*command, "-y", *map(str, args)], check=True, capture_output=True, timeout=60)


def extract_wav(dest: Path, span_s: tuple[float, float] | None = None) -> Path:
    """Write the sample's audio (or the ``span_s`` part of it) as a 16 kHz mono wav."""
    cut: list[str] = []
    if span_s is not None:
        cut = ["-ss", f"{span_s[0]:.3f}", "-to", f"{span_s[1]:.3f}"]
    run_ffmpeg(
        "-i", SAMPLE_VIDEO, *cut, "-vn", "-ac", "1", "-ar", "16000", "-c:a", "pcm_s16le", dest
    )
    return dest


def extract_frame(dest: Path, at_s: float) -> Path:
    """Write the sample's video frame at ``at_s`` seconds as a jpg."""
    run_ffmpeg("-ss", f"{at_s:.3f}", "-i", SAMPLE_VIDEO, "-frames:v", "1", "-q:v", "3", dest)
    return dest
