"""Tests of the ffmpeg-3 stage: sampling JPEG frames from a clip."""

from __future__ import annotations

import pytest

from pipeline.errors import BadRequestError, MediaError
from pipeline.stages.ffmpeg3 import NOTE_NO_VIDEO, Ffmpeg3Config, Ffmpeg3Stage, frame_times_s

JPEG_MAGIC = b"\xff\xd8\xff"


def test_sample_gives_rate_frames(local_store, sample_uri, no_scratch_leftovers):
    # 16.3 s at 12 frames per minute rounds to 3 frames.
    result = Ffmpeg3Stage().invoke(
        {"request_id": "r", "video": sample_uri, "index": 2}, local_store
    )

    frames = result.output["frames"]
    assert len(frames) == 3
    for j, frame in enumerate(frames):
        assert frame.endswith(f"/requests/r/ffmpeg-3/frame_2_{j}.jpg")
        assert local_store.get_bytes(frame).startswith(JPEG_MAGIC)
    assert result.telemetry.compute_ms > 0


def test_frames_differ_across_clip(local_store, sample_uri):
    stage = Ffmpeg3Stage(Ffmpeg3Config(frames_per_minute=60.0, max_frames=3))

    frames = stage.invoke({"request_id": "r", "video": sample_uri, "index": 0}, local_store).output[
        "frames"
    ]

    contents = {local_store.get_bytes(frame) for frame in frames}
    assert len(frames) == 3
    assert len(contents) == 3


def test_quality_changes_size(local_store, sample_uri):
    sizes = []
    for quality in (10, 95):
        stage = Ffmpeg3Stage(Ffmpeg3Config(jpeg_quality=quality, max_frames=1))
        request = {"request_id": f"q{quality}", "video": sample_uri, "index": 0}
        frame = stage.invoke(request, local_store).output["frames"][0]
        sizes.append(len(local_store.get_bytes(frame)))

    assert sizes[0] < sizes[1]


@pytest.mark.parametrize(
    ("duration_s", "config", "expected"),
    [
        (2.0, Ffmpeg3Config(), [1.0]),
        (60.0, Ffmpeg3Config(), [2.5 + 5.0 * j for j in range(12)]),
        (600.0, Ffmpeg3Config(max_frames=4), [75.0, 225.0, 375.0, 525.0]),
        (2.0, Ffmpeg3Config(min_frames=0), []),
        (10.0, Ffmpeg3Config(min_frames=2), [2.5, 7.5]),
    ],
)
def test_frame_times(duration_s, config, expected):
    assert frame_times_s(duration_s, config) == pytest.approx(expected)


def test_audio_only_clip_no_frames(local_store, bad_media, no_scratch_leftovers):
    uri = local_store.put_file("inputs/speech.m4a", bad_media("audio_only_m4a"))

    output = (
        Ffmpeg3Stage().invoke({"request_id": "r", "video": uri, "index": 0}, local_store).output
    )

    assert output == {"frames": [], "note": NOTE_NO_VIDEO}


def test_truncated_clip_rejected(local_store, bad_media, no_scratch_leftovers):
    uri = local_store.put_file("inputs/truncated.mp4", bad_media("truncated"))

    with pytest.raises(MediaError, match="ffmpeg-3: the file is truncated"):
        Ffmpeg3Stage().invoke({"request_id": "r", "video": uri, "index": 0}, local_store)


def test_missing_index_rejected(local_store, sample_uri):
    with pytest.raises(BadRequestError, match="ffmpeg-3: field 'index' must be a non-negative"):
        Ffmpeg3Stage().invoke({"request_id": "r", "video": sample_uri}, local_store)


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"jpeg_quality": 0}, "jpeg_quality must be between 1 and 100"),
        ({"frames_per_minute": 0}, "frames_per_minute must be positive"),
        ({"min_frames": 3, "max_frames": 2}, "need 0 <= min_frames <= max_frames"),
    ],
)
def test_invalid_config_rejected(fields, reason):
    with pytest.raises(ValueError, match=reason):
        Ffmpeg3Config(**fields)
