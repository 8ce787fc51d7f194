"""Tests of the librosa stage: speech segments of the sample, silence and odd requests."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile

from pipeline.errors import BadRequestError, MediaError
from pipeline.stages.ffmpeg0 import Ffmpeg0Stage
from pipeline.stages.speech_segments import (
    NOTE_NO_AUDIO,
    NOTE_NO_SPEECH,
    SpeechSegmentsConfig,
    SpeechSegmentsStage,
    find_segments,
)

SAMPLE_SPEECH_S = [(1.47, 4.45), (6.27, 10.08), (11.87, 14.43)]
"""Where the three sentences of the sample are spoken, measured with librosa at top_db=30."""


@pytest.fixture(scope="module")
def stage() -> SpeechSegmentsStage:
    stage = SpeechSegmentsStage()
    stage.ensure_loaded()
    return stage


@pytest.fixture
def sample_wav_uri(local_store, sample_uri) -> str:
    return (
        Ffmpeg0Stage().invoke({"request_id": "r", "video": sample_uri}, local_store).output["audio"]
    )


def test_sample_has_three_segments(stage, local_store, sample_wav_uri, no_scratch_leftovers):
    result = stage.invoke({"request_id": "r", "audio": sample_wav_uri}, local_store)

    segments = result.output["segments"]
    assert len(segments) == 3
    assert "note" not in result.output
    for segment, (start_s, end_s) in zip(segments, SAMPLE_SPEECH_S, strict=True):
        assert segment["start_s"] == pytest.approx(start_s - 0.1, abs=0.15)
        assert segment["end_s"] == pytest.approx(end_s + 0.1, abs=0.15)
    assert result.telemetry.compute_ms > 0
    assert result.telemetry.init_ms > 0


def test_null_audio_gives_empty_result(stage, local_store):
    output = stage.invoke({"request_id": "r", "audio": None}, local_store).output

    assert output == {"segments": [], "note": NOTE_NO_AUDIO}


def test_silent_wav_has_no_speech(stage, local_store, tmp_path):
    path = tmp_path / "silence.wav"
    soundfile.write(path, np.zeros(16000 * 2, dtype=np.float32), 16000)
    uri = local_store.put_file("inputs/silence.wav", path)

    output = stage.invoke({"request_id": "r", "audio": uri}, local_store).output

    assert output == {"segments": [], "note": NOTE_NO_SPEECH}


def test_empty_wav_has_no_speech(stage, local_store, tmp_path):
    path = tmp_path / "empty.wav"
    soundfile.write(path, np.zeros(0, dtype=np.float32), 16000)
    uri = local_store.put_file("inputs/empty.wav", path)

    output = stage.invoke({"request_id": "r", "audio": uri}, local_store).output

    assert output == {"segments": [], "note": NOTE_NO_SPEECH}


def test_not_a_wav_rejected(stage, local_store, bad_media, no_scratch_leftovers):
    uri = local_store.put_file("inputs/notes.wav", bad_media("not_media"))

    with pytest.raises(MediaError, match="librosa: not a readable sound file") as caught:
        stage.invoke({"request_id": "r", "audio": uri}, local_store)

    assert caught.value.input == uri


def test_audio_field_type_checked(stage, local_store):
    with pytest.raises(BadRequestError, match="field 'audio' must be an artifact URI or null"):
        stage.invoke({"request_id": "r", "audio": 3}, local_store)


def _tone_bursts(spans_s, rate_hz=16000, total_s=6.0):
    samples = np.zeros(int(total_s * rate_hz), dtype=np.float32)
    for start_s, end_s in spans_s:
        t = np.arange(int(start_s * rate_hz), int(end_s * rate_hz))
        samples[t] = 0.5 * np.sin(2 * np.pi * 440 * t / rate_hz)
    return samples


def test_close_segments_merged():
    samples = _tone_bursts([(1.0, 2.0), (2.3, 3.0)])

    segments = find_segments(samples, 16000, SpeechSegmentsConfig(min_gap_s=0.5, pad_s=0))

    assert len(segments) == 1
    assert segments[0]["start_s"] == pytest.approx(1.0, abs=0.1)
    assert segments[0]["end_s"] == pytest.approx(3.0, abs=0.1)


def test_short_segments_dropped():
    samples = _tone_bursts([(1.0, 2.0), (4.0, 4.1)])

    segments = find_segments(samples, 16000, SpeechSegmentsConfig(min_segment_s=0.3, pad_s=0))

    assert len(segments) == 1
    assert segments[0]["end_s"] == pytest.approx(2.0, abs=0.1)


def test_padding_clipped_to_track():
    samples = _tone_bursts([(0.0, 1.0), (5.5, 6.0)])

    segments = find_segments(samples, 16000, SpeechSegmentsConfig(pad_s=0.5))

    assert segments[0]["start_s"] == 0.0
    assert segments[-1]["end_s"] == pytest.approx(6.0)


def test_invalid_config_rejected():
    with pytest.raises(ValueError, match="hop_length \\(4096\\) must not exceed frame_length"):
        SpeechSegmentsConfig(hop_length=4096)
