"""Tests of the ffmpeg-1 stage: cutting clips and validating segments."""

from __future__ import annotations

import pytest

from pipeline.errors import BadRequestError
from pipeline.media import probe
from pipeline.stages.ffmpeg1 import CutMode, Ffmpeg1Config, Ffmpeg1Stage

SEGMENTS = [{"start_s": 1.4, "end_s": 4.5}, {"start_s": 6.2, "end_s": 10.2}]


def test_reencode_cuts_exact_clips(local_store, sample_uri, tmp_path, no_scratch_leftovers):
    stage = Ffmpeg1Stage()

    result = stage.invoke(
        {"request_id": "r", "video": sample_uri, "segments": SEGMENTS}, local_store
    )

    clips = result.output["clips"]
    assert len(clips) == 2
    for index, (clip, segment) in enumerate(zip(clips, SEGMENTS, strict=True)):
        assert clip.endswith(f"/requests/r/ffmpeg-1/clip_{index}.mp4")
        info = probe(local_store.get_file(clip, tmp_path / f"c{index}.mp4"), "test", clip)
        assert info.has_video
        assert info.has_audio
        expected_s = segment["end_s"] - segment["start_s"]
        assert info.duration_s == pytest.approx(expected_s, abs=0.15)
    assert result.telemetry.compute_ms > 0


def test_copy_mode_cuts_clips(local_store, sample_uri, tmp_path):
    stage = Ffmpeg1Stage(Ffmpeg1Config(mode="copy"))

    clips = stage.invoke(
        {"request_id": "r", "video": sample_uri, "segments": SEGMENTS[:1]}, local_store
    ).output["clips"]

    assert stage.config.mode is CutMode.COPY
    info = probe(local_store.get_file(clips[0], tmp_path / "c.mp4"), "test", clips[0])
    assert info.has_audio
    assert info.duration_s > 2.0


def test_end_past_duration_clipped(local_store, sample_uri, tmp_path):
    stage = Ffmpeg1Stage()
    segments = [{"start_s": 15.0, "end_s": 16.4}]

    clips = stage.invoke(
        {"request_id": "r", "video": sample_uri, "segments": segments}, local_store
    ).output["clips"]

    info = probe(local_store.get_file(clips[0], tmp_path / "c.mp4"), "test", clips[0])
    assert info.duration_s == pytest.approx(1.285, abs=0.3)


def test_no_segments_no_clips(local_store, sample_uri):
    output = (
        Ffmpeg1Stage()
        .invoke({"request_id": "r", "video": sample_uri, "segments": []}, local_store)
        .output
    )

    assert output == {"clips": []}
    assert local_store.list("requests") == []


@pytest.mark.parametrize(
    ("segment", "reason"),
    [
        ({"start_s": 3.0, "end_s": 2.0}, "segment 1 .* must start before it ends"),
        ({"start_s": 2.0, "end_s": 2.0}, "segment 1 .* must start before it ends"),
        ({"start_s": -1.0, "end_s": 2.0}, "segment 1 .* starts before 0 s"),
        ({"start_s": 20.0, "end_s": 21.0}, "segment 1 .* lies outside the video"),
        ({"start_s": 1.0, "end_s": 30.0}, "segment 1 .* lies outside the video"),
        ({"start_s": "1", "end_s": 2.0}, "segment 1 .* needs a number in 'start_s'"),
        ({"start_s": True, "end_s": 2.0}, "segment 1 .* needs a number in 'start_s'"),
        ({"start_s": 1.0}, "segment 1 .* needs a number in 'end_s'"),
        ({"start_s": 1.0, "end_s": float("nan")}, "segment 1 .* non-finite 'end_s'"),
        ([1.0, 2.0], "segment 1 .* must be an object"),
    ],
)
def test_invalid_segment_rejected(local_store, sample_uri, no_scratch_leftovers, segment, reason):
    stage = Ffmpeg1Stage(Ffmpeg1Config(mode="copy"))
    segments = [SEGMENTS[0], segment]

    with pytest.raises(BadRequestError, match=f"ffmpeg-1: {reason}"):
        stage.invoke({"request_id": "r", "video": sample_uri, "segments": segments}, local_store)

    assert local_store.list("requests") == []


def test_segments_must_be_list(local_store, sample_uri):
    with pytest.raises(BadRequestError, match="field 'segments' must be of type list"):
        Ffmpeg1Stage().invoke(
            {"request_id": "r", "video": sample_uri, "segments": "0-1"}, local_store
        )


def test_unknown_mode_rejected():
    with pytest.raises(ValueError, match="mode must be one of copy, reencode, not 'fast'"):
        Ffmpeg1Config(mode="fast")
