"""Tests of the ffmpeg runner, the PyAV probe and input download helpers."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pipeline.errors import ArtifactNotFoundError, BadRequestError, MediaError, StageError
from pipeline.media import download_input, ffmpeg_exe, probe, run_ffmpeg
from pipeline.stages.base import Invocation
from pipeline.telemetry import Telemetry


def test_ffmpeg_exe_runs():
    completed = run_ffmpeg(["-version"], "test", "none")

    assert Path(ffmpeg_exe()).is_file()
    assert completed.returncode == 0
    assert completed.stdout.startswith("ffmpeg version")


def test_failure_carries_stderr_tail(tmp_path):
    missing = tmp_path / "missing.mp4"

    with pytest.raises(
        MediaError, match=r"ffmpeg failed with exit code \d+: (?s:.*)No such file"
    ) as caught:
        run_ffmpeg(["-i", missing, "-f", "null", "-"], "ffmpeg-9", "s3://b/missing.mp4")

    assert caught.value.stage == "ffmpeg-9"
    assert caught.value.input == "s3://b/missing.mp4"
    assert caught.value.bad_input is True


def test_failure_can_blame_engine(tmp_path):
    with pytest.raises(MediaError) as caught:
        run_ffmpeg(["-i", tmp_path / "missing.mp4"], "ffmpeg-9", "x", bad_input=False)

    assert caught.value.bad_input is False


def test_timeout_kills_ffmpeg():
    # -re reads the endless test source at its native rate, so only the timeout stops it.
    args = ["-re", "-f", "lavfi", "-i", "anullsrc=r=8000", "-f", "null", "-"]

    with pytest.raises(
        StageError, match="ffmpeg timed out after 0.5 s; raise the stage's timeout_s"
    ):
        run_ffmpeg(args, "ffmpeg-9", "x", timeout_s=0.5)


def test_shell_characters_reach_ffmpeg_unchanged(tmp_path, sample_video, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tricky = tmp_path / "a; touch pwned $(touch pwned2) `touch pwned3`.mp4"
    shutil.copyfile(sample_video, tricky)
    target = tmp_path / "out 'é'.wav"

    run_ffmpeg(["-i", tricky, "-map", "0:a:0", target], "test", "x")

    assert target.is_file()
    assert sorted(p.name for p in tmp_path.glob("pwned*")) == []


def test_probe_sample(sample_video):
    info = probe(sample_video, "test", "sample")

    assert info.format_name.startswith("mov,mp4")
    assert info.duration_s == pytest.approx(16.285, abs=0.01)
    assert info.has_audio
    assert info.has_video
    assert info.audio_codec == "aac"
    assert info.audio_channels == 1
    assert info.audio_rate_hz == 22050
    assert info.video_codec == "h264"
    assert (info.video_width, info.video_height) == (480, 360)
    assert info.video_fps == pytest.approx(10.0)


def test_probe_cover_picture_is_not_video(tmp_path, sample_video):
    cover = tmp_path / "cover.jpg"
    run_ffmpeg(["-ss", "1", "-i", sample_video, "-frames:v", "1", "-update", "1", cover], "t", "x")
    song = tmp_path / "song.m4a"
    run_ffmpeg(
        [
            "-i", sample_video, "-i", cover,
            "-map", "0:a:0", "-map", "1:v:0",
            "-c", "copy", "-disposition:v:0", "attached_pic",
            song,
        ],
        "t",
        "x",
    )  # fmt: skip

    info = probe(song, "test", "song")

    assert info.has_audio
    assert not info.has_video


def test_probe_without_packet_check_misses_truncation(bad_media):
    info = probe(bad_media("truncated"), "test", "t", check_packets=False)

    assert info.duration_s == pytest.approx(16.285, abs=0.01)
    with pytest.raises(MediaError, match="the file is truncated .*stream"):
        probe(bad_media("truncated"), "test", "t")


def test_probe_missing_file(tmp_path):
    with pytest.raises(MediaError, match="no file at .*nothing.mp4"):
        probe(tmp_path / "nothing.mp4", "test", "t")


def _invocation(store, tmp_path) -> Invocation:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    return Invocation("r", store, scratch, Telemetry(stage="test", request_id="r"))


@pytest.mark.parametrize(
    ("key", "local_name"),
    [
        ("inputs/vidéo d'été.MP4", "source.mp4"),
        ("inputs/no-suffix", "source"),
        ("inputs/odd.m p4", "source"),
        ("inputs/x.-rf", "source"),
    ],
)
def test_download_uses_safe_local_name(local_store, tmp_path, sample_video, key, local_name):
    uri = local_store.put_file(key, sample_video)

    path = download_input(_invocation(local_store, tmp_path), uri, "test", "video", "source")

    assert path == tmp_path / "scratch" / local_name
    assert path.read_bytes() == sample_video.read_bytes()


def test_download_rejects_unsafe_key(local_store, tmp_path):
    with pytest.raises(BadRequestError, match="test: field 'video' is not a valid artifact"):
        download_input(_invocation(local_store, tmp_path), "../x.mp4", "test", "video", "s")


def test_download_missing_names_stage(local_store, tmp_path):
    with pytest.raises(ArtifactNotFoundError, match="test: field 'video' names no stored artifact"):
        download_input(_invocation(local_store, tmp_path), "inputs/x.mp4", "test", "video", "s")
