"""Tests of the ffmpeg-2 stage: a clip's 16 kHz wav and its small mp4."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.errors import BadRequestError, MediaError
from pipeline.media import probe
from pipeline.stages.ffmpeg1 import Ffmpeg1Stage
from pipeline.stages.ffmpeg2 import NOTE_NO_AUDIO, Ffmpeg2Config, Ffmpeg2Stage
from pipeline.store import LocalStore


@pytest.fixture(scope="module")
def clip_file(tmp_path_factory, sample_video) -> Path:
    """The first spoken sentence of the sample, cut by ffmpeg-1."""
    folder = tmp_path_factory.mktemp("clip")
    store = LocalStore(folder / "store")
    uri = store.put_file("inputs/sample.mp4", sample_video)
    request = {"request_id": "c", "video": uri, "segments": [{"start_s": 1.4, "end_s": 4.5}]}
    clip = Ffmpeg1Stage().invoke(request, store).output["clips"][0]
    return store.get_file(clip, folder / "clip_0.mp4")


def test_clip_gives_wav_and_small(local_store, clip_file, tmp_path, no_scratch_leftovers):
    uri = local_store.put_file("requests/r/ffmpeg-1/clip_3.mp4", clip_file)

    result = Ffmpeg2Stage().invoke({"request_id": "r", "clip": uri, "index": 3}, local_store)

    output = result.output
    assert output["has_video"] is True
    assert output["wav"].endswith("/requests/r/ffmpeg-2/clip_3.wav")
    assert output["small"].endswith("/requests/r/ffmpeg-2/clip_3.small.mp4")
    wav = probe(local_store.get_file(output["wav"], tmp_path / "w.wav"), "test", "wav")
    assert wav.audio_rate_hz == 16000
    assert wav.audio_channels == 1
    assert wav.duration_s == pytest.approx(3.1, abs=0.15)
    small = probe(local_store.get_file(output["small"], tmp_path / "s.mp4"), "test", "small")
    assert small.video_height == 240
    assert small.video_width == 320
    assert small.has_audio
    assert result.telemetry.compute_ms > 0


def test_small_never_upscaled(local_store, clip_file, tmp_path):
    uri = local_store.put_file("inputs/clip.mp4", clip_file)
    stage = Ffmpeg2Stage(Ffmpeg2Config(max_height=1080))

    output = stage.invoke({"request_id": "r", "clip": uri, "index": 0}, local_store).output

    small = probe(local_store.get_file(output["small"], tmp_path / "s.mp4"), "test", "small")
    assert small.video_height == 360


def test_audio_only_clip(local_store, bad_media, tmp_path):
    uri = local_store.put_file("inputs/speech.m4a", bad_media("audio_only_m4a"))

    output = Ffmpeg2Stage().invoke({"request_id": "r", "clip": uri, "index": 0}, local_store).output

    assert output["has_video"] is False
    assert local_store.exists(output["wav"])
    small = probe(local_store.get_file(output["small"], tmp_path / "s.mp4"), "test", "small")
    assert small.has_audio
    assert not small.has_video


def test_clip_without_audio(local_store, bad_media):
    uri = local_store.put_file("inputs/mute.mp4", bad_media("no_audio"))

    output = Ffmpeg2Stage().invoke({"request_id": "r", "clip": uri, "index": 0}, local_store).output

    assert output["wav"] is None
    assert output["note"] == NOTE_NO_AUDIO
    assert local_store.exists(output["small"])


def test_not_media_clip_rejected(local_store, bad_media, no_scratch_leftovers):
    uri = local_store.put_file("inputs/notes.mp4", bad_media("not_media"))

    with pytest.raises(MediaError, match="ffmpeg-2: not a readable media file") as caught:
        Ffmpeg2Stage().invoke({"request_id": "r", "clip": uri, "index": 0}, local_store)

    assert caught.value.input == uri


@pytest.mark.parametrize("index", [None, -1, 1.5, True, "2"])
def test_invalid_index_rejected(local_store, clip_file, index):
    uri = local_store.put_file("inputs/clip.mp4", clip_file)

    with pytest.raises(BadRequestError, match="ffmpeg-2: field 'index' must be a non-negative"):
        Ffmpeg2Stage().invoke({"request_id": "r", "clip": uri, "index": index}, local_store)
