"""Tests of the ffmpeg-0 stage on the sample video and on odd inputs."""

from __future__ import annotations

import pytest

from pipeline.errors import BadRequestError
from pipeline.media import probe
from pipeline.stages import stage_class
from pipeline.stages.ffmpeg0 import Ffmpeg0Config, Ffmpeg0Stage


@pytest.fixture(scope="module")
def stage() -> Ffmpeg0Stage:
    return Ffmpeg0Stage()


def _local(store, uri, tmp_path, name):
    return store.get_file(uri, tmp_path / name)


def test_sample_split_into_video_and_wav(
    stage, local_store, sample_uri, tmp_path, no_scratch_leftovers
):
    result = stage.invoke({"request_id": "r1", "video": sample_uri}, local_store)

    output = result.output
    assert output["has_audio"] is True
    assert output["has_video"] is True
    assert output["duration_s"] == pytest.approx(16.285, abs=0.05)
    assert output["video"].endswith("/requests/r1/ffmpeg-0/video.mp4")
    assert output["audio"].endswith("/requests/r1/ffmpeg-0/audio.wav")
    assert "note" not in output
    wav = probe(_local(local_store, output["audio"], tmp_path, "a.wav"), "test", "audio")
    assert wav.audio_rate_hz == 16000
    assert wav.audio_channels == 1
    assert wav.audio_codec == "pcm_s16le"
    assert wav.duration_s == pytest.approx(16.285, abs=0.05)
    video = probe(_local(local_store, output["video"], tmp_path, "v.mp4"), "test", "video")
    assert (video.video_width, video.video_height) == (480, 360)
    assert video.has_audio
    assert result.telemetry.compute_ms > 0
    assert result.telemetry.status == "ok"


def test_config_rate_and_channels_apply(local_store, sample_uri, tmp_path):
    stage = Ffmpeg0Stage(Ffmpeg0Config(audio_sample_rate_hz=8000, audio_channels=2))

    output = stage.invoke({"request_id": "r2", "video": sample_uri}, local_store).output

    wav = probe(_local(local_store, output["audio"], tmp_path, "a.wav"), "test", "audio")
    assert wav.audio_rate_hz == 8000
    assert wav.audio_channels == 2


def test_missing_video_field_rejected(stage, local_store):
    with pytest.raises(BadRequestError, match="ffmpeg-0: the request is missing the field 'video'"):
        stage.invoke({"request_id": "r3"}, local_store)


def test_invalid_config_rejected():
    with pytest.raises(ValueError, match="audio_channels must be positive"):
        Ffmpeg0Config(audio_channels=0)


@pytest.mark.parametrize(
    ("name", "module"),
    [
        ("ffmpeg-0", "pipeline.stages.ffmpeg0"),
        ("librosa", "pipeline.stages.speech_segments"),
        ("ffmpeg-1", "pipeline.stages.ffmpeg1"),
        ("ffmpeg-2", "pipeline.stages.ffmpeg2"),
        ("ffmpeg-3", "pipeline.stages.ffmpeg3"),
    ],
)
def test_registry_names_media_stages(name, module):
    cls = stage_class(name)

    assert cls.name == name
    assert cls.__module__ == module


def test_config_from_stage_env(monkeypatch):
    monkeypatch.setenv("VS_STAGE_CONFIG", '{"audio_sample_rate_hz": 8000}')

    stage = Ffmpeg0Stage.from_env()

    assert stage.config.audio_sample_rate_hz == 8000
    assert stage.config.audio_channels == 1
