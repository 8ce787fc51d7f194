"""Fixtures shared by the whole suite: the sample video, a local store and bad media files."""

from __future__ import annotations

import os

# MLflow 3 reports usage to a remote host unless that is disabled, and the tests send traffic
# to loopback only. Set before any test module imports mlflow.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pipeline.media import ffmpeg_exe
from pipeline.store import LocalStore

SAMPLE_VIDEO = Path(__file__).resolve().parents[1] / "pipeline" / "samples" / "sample.mp4"

BAD_MEDIA_KINDS = (
    "not_media",
    "empty",
    "truncated",
    "no_audio",
    "audio_only_m4a",
    "audio_only_wav",
    "six_channels",
    "unicode_name",
)
"""Names accepted by the ``bad_media`` factory."""


@pytest.fixture(scope="session")
def sample_video() -> Path:
    """Path of the committed 16 s sample (h264 + mono aac, three spoken sentences)."""
    assert SAMPLE_VIDEO.is_file(), f"missing {SAMPLE_VIDEO}; run make_sample to rebuild it"
    return SAMPLE_VIDEO


@pytest.fixture
def local_store(tmp_path: Path) -> LocalStore:
    """An empty :class:`LocalStore` in this test's temporary folder."""
    return LocalStore(tmp_path / "store")


@pytest.fixture
def sample_uri(local_store: LocalStore, sample_video: Path) -> str:
    """URI of the sample video uploaded to ``local_store`` as ``inputs/sample.mp4``."""
    return local_store.put_file("inputs/sample.mp4", sample_video)


@pytest.fixture
def scratch_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private temporary folder where stage scratch folders (``vs-*``) are created.

    Tests assert that it is empty after an invocation. The folder is private so that tests
    running at the same time in other processes cannot leave folders in it.
    """
    path = tmp_path / "tmp"
    path.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(path))
    return path


def _ffmpeg(*args: str | Path) -> None:
    command = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y"]
    subprocess.run([*command, *map(str, args)], check=True, capture_output=True, timeout=60)


def _make_bad_media(kind: str, folder: Path, sample: Path) -> Path:
    if kind == "not_media":
        path = folder / "notes.mp4"
        path.write_text("This is a text file with an mp4 name.\n" * 40)
    elif kind == "empty":
        path = folder / "empty.mp4"
        path.write_bytes(b"")
    elif kind == "truncated":
        data = sample.read_bytes()
        path = folder / "truncated.mp4"
        path.write_bytes(data[: len(data) // 2])
    elif kind == "no_audio":
        path = folder / "silent-film.mp4"
        _ffmpeg("-i", sample, "-map", "0:v:0", "-c", "copy", path)
    elif kind == "audio_only_m4a":
        path = folder / "speech.m4a"
        _ffmpeg("-i", sample, "-map", "0:a:0", "-c", "copy", path)
    elif kind == "audio_only_wav":
        path = folder / "speech.wav"
        _ffmpeg("-i", sample, "-map", "0:a:0", "-c:a", "pcm_s16le", path)
    elif kind == "six_channels":
        path = folder / "surround.mp4"
        _ffmpeg(
            "-i", sample,
            "-map", "0:v:0", "-map", "0:a:0",
            "-c:v", "copy",
            "-af", "pan=5.1|FL=c0|FR=c0|FC=c0|LFE=c0|BL=c0|BR=c0",
            "-c:a", "aac",
            path,
        )  # fmt: skip
    elif kind == "unicode_name":
        path = folder / "vidéo d'été.mp4"
        shutil.copyfile(sample, path)
    else:
        raise ValueError(f"Unknown bad media kind {kind!r}; choose one of {BAD_MEDIA_KINDS}.")
    return path


@pytest.fixture(scope="session")
def bad_media(
    tmp_path_factory: pytest.TempPathFactory, sample_video: Path
) -> Callable[[str], Path]:
    """Return a factory ``bad_media(kind) -> Path`` for the kinds in :data:`BAD_MEDIA_KINDS`.

    Files are made once per session from the sample and shared, so treat them as read-only.
    """
    folder = tmp_path_factory.mktemp("bad-media")
    made: dict[str, Path] = {}

    def make(kind: str) -> Path:
        if kind not in made:
            made[kind] = _make_bad_media(kind, folder, sample_video)
        return made[kind]

    return make


@pytest.fixture
def no_scratch_leftovers(scratch_dir: Path) -> Iterator[Path]:
    """Fail the test if a ``vs-*`` scratch folder is left in ``scratch_dir`` after it."""
    yield scratch_dir
    leftovers = sorted(p.name for p in scratch_dir.glob("vs-*"))
    assert leftovers == [], f"scratch folders left behind: {leftovers}"
