"""Regenerate ``sample.mp4``: three spoken sentences separated by silence, over real photographs.

Everything is made offline: speech by espeak-ng (Debian package ``espeak-ng``), photographs
from the scikit-image and matplotlib wheels (``pip install -e .[sample]``), and the video by
the ffmpeg binary of the ``imageio-ffmpeg`` wheel. Run ``python -m pipeline.samples.make_sample``;
it overwrites ``sample.mp4`` and ``sample.txt`` beside this file.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import IO, cast

import numpy as np
import soundfile

SENTENCES = (
    "The quick brown fox jumps over the lazy dog.",
    "Serverless functions start slowly after they scale to zero.",
    "An astronaut stands in front of the flag.",
)
SILENCE_S = 1.5
SAMPLE_RATE_HZ = 22050
WIDTH, HEIGHT = 480, 360
HERE = Path(__file__).resolve().parent


def photographs() -> list[np.ndarray]:
    """Return three RGB photographs shipped inside the scikit-image and matplotlib wheels."""
    import matplotlib.cbook
    import skimage.data
    from PIL import Image

    # With asfileobj left True, a jpg sample opens as a binary file, never an array.
    with cast(IO[bytes], matplotlib.cbook.get_sample_data("grace_hopper.jpg")) as handle:
        hopper = np.asarray(Image.open(handle).convert("RGB"))
    return [skimage.data.chelsea(), hopper, skimage.data.astronaut()]


def speak(text: str, path: Path) -> np.ndarray:
    """Synthesise ``text`` with espeak-ng and return it as mono float32 at SAMPLE_RATE_HZ."""
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        raise SystemExit("espeak-ng is not installed; run 'apt-get install espeak-ng' first.")
    subprocess.run([espeak, "-s", "150", "-w", str(path), text], check=True)
    audio, rate = soundfile.read(path, dtype="float32")
    if rate != SAMPLE_RATE_HZ:
        import librosa

        audio = librosa.resample(audio, orig_sr=rate, target_sr=SAMPLE_RATE_HZ)
    return audio


def build(output: Path) -> None:
    import imageio_ffmpeg
    from PIL import Image

    ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
    silence = np.zeros(int(SILENCE_S * SAMPLE_RATE_HZ), dtype="float32")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        pieces: list[np.ndarray] = [silence]
        concat_lines: list[str] = []
        for index, (sentence, photo) in enumerate(zip(SENTENCES, photographs(), strict=True)):
            speech = speak(sentence, work / f"speech{index}.wav")
            pieces += [speech, silence]
            duration_s = len(speech) / SAMPLE_RATE_HZ + SILENCE_S + (SILENCE_S if index == 0 else 0)
            image_path = work / f"photo{index}.png"
            Image.fromarray(photo).resize((WIDTH, HEIGHT)).save(image_path)
            concat_lines += [f"file '{image_path}'", f"duration {duration_s:.3f}"]
        concat_lines.append(f"file '{work / f'photo{len(SENTENCES) - 1}.png'}'")
        soundfile.write(work / "audio.wav", np.concatenate(pieces), SAMPLE_RATE_HZ)
        (work / "frames.txt").write_text("\n".join(concat_lines) + "\n")
        subprocess.run(
            [
                ffmpeg, "-y", "-loglevel", "error",
                "-f", "concat", "-safe", "0", "-i", str(work / "frames.txt"),
                "-i", str(work / "audio.wav"),
                "-vf", "fps=10,format=yuv420p",
                "-c:v", "libx264", "-preset", "veryslow", "-crf", "30",
                "-c:a", "aac", "-b:a", "48k", "-ac", "1",
                "-shortest", "-movflags", "+faststart", str(output),
            ],
            check=True,
        )  # fmt: skip
    (output.with_suffix(".txt")).write_text("\n".join(SENTENCES) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=HERE / "sample.mp4", help="video to write")
    args = parser.parse_args()
    build(args.output)
    print(f"wrote {args.output} ({args.output.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
