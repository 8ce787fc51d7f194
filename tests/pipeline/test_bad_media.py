"""Tests of the media stages on bad and unusual inputs: each ends in a clear error or a result."""

from __future__ import annotations

import pytest

from pipeline.errors import ArtifactNotFoundError, BadRequestError, InvalidKeyError, MediaError
from pipeline.media import probe
from pipeline.stages.ffmpeg0 import NOTE_NO_AUDIO, NOTE_NO_VIDEO, Ffmpeg0Stage
from pipeline.stages.ffmpeg1 import Ffmpeg1Config, Ffmpeg1Stage
from pipeline.stages.ffmpeg2 import Ffmpeg2Stage
from pipeline.stages.ffmpeg3 import NOTE_NO_VIDEO as FRAMES_NOTE_NO_VIDEO
from pipeline.stages.ffmpeg3 import Ffmpeg3Stage
from pipeline.stages.speech_segments import SpeechSegmentsStage


@pytest.fixture(scope="module")
def ffmpeg0() -> Ffmpeg0Stage:
    return Ffmpeg0Stage()


def _upload(store, path, name=None):
    return store.put_file(f"inputs/{name or path.name}", path)


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("not_media", "not a readable media file"),
        ("empty", "the file is empty"),
        ("truncated", "the file is truncated"),
    ],
)
def test_ffmpeg0_rejects_broken_file(
    ffmpeg0, local_store, bad_media, no_scratch_leftovers, kind, reason
):
    uri = _upload(local_store, bad_media(kind))

    with pytest.raises(MediaError, match=reason) as caught:
        ffmpeg0.invoke({"request_id": "bad", "video": uri}, local_store)

    assert caught.value.stage == "ffmpeg-0"
    assert caught.value.input == uri
    assert caught.value.bad_input is True
    assert str(caught.value).startswith("ffmpeg-0: ")
    assert local_store.list("requests") == []


def test_ffmpeg0_video_without_audio(ffmpeg0, local_store, bad_media, no_scratch_leftovers):
    uri = _upload(local_store, bad_media("no_audio"))

    output = ffmpeg0.invoke({"request_id": "mute", "video": uri}, local_store).output

    assert output["audio"] is None
    assert output["has_audio"] is False
    assert output["has_video"] is True
    assert output["note"] == NOTE_NO_AUDIO
    assert local_store.exists(output["video"])


@pytest.mark.parametrize("kind", ["audio_only_m4a", "audio_only_wav"])
def test_ffmpeg0_audio_without_video(
    ffmpeg0, local_store, bad_media, tmp_path, no_scratch_leftovers, kind
):
    uri = _upload(local_store, bad_media(kind))

    output = ffmpeg0.invoke({"request_id": "voice", "video": uri}, local_store).output

    assert output["has_video"] is False
    assert output["has_audio"] is True
    assert output["note"] == NOTE_NO_VIDEO
    assert output["duration_s"] == pytest.approx(16.285, abs=0.1)
    remuxed = probe(local_store.get_file(output["video"], tmp_path / "v.mp4"), "test", "v")
    assert remuxed.has_audio
    assert not remuxed.has_video
    assert local_store.exists(output["audio"])


def test_ffmpeg0_downmixes_six_channels(ffmpeg0, local_store, bad_media, tmp_path):
    source = bad_media("six_channels")
    assert probe(source, "test", "source").audio_channels == 6
    uri = _upload(local_store, source)

    output = ffmpeg0.invoke({"request_id": "surround", "video": uri}, local_store).output

    wav = probe(local_store.get_file(output["audio"], tmp_path / "a.wav"), "test", "wav")
    assert wav.audio_channels == 1
    assert wav.audio_rate_hz == 16000


def test_ffmpeg0_unicode_file_name(ffmpeg0, local_store, bad_media, no_scratch_leftovers):
    source = bad_media("unicode_name")
    uri = local_store.put_file("inputs/vidéos d'été/vidéo d'été.mp4", source)
    assert "%20" in uri

    output = ffmpeg0.invoke({"request_id": "ete", "video": uri}, local_store).output

    assert output["has_audio"] is True
    assert local_store.exists(output["video"])
    assert local_store.exists(output["audio"])


def test_ffmpeg0_unicode_name_in_error(ffmpeg0, local_store, bad_media):
    uri = local_store.put_file("inputs/vidéo d'été.mp4", bad_media("not_media"))

    with pytest.raises(MediaError, match="not a readable media file") as caught:
        ffmpeg0.invoke({"request_id": "ete", "video": uri}, local_store)

    assert caught.value.input == uri


@pytest.mark.parametrize(
    "video",
    ["../outside.mp4", "inputs/../../outside.mp4", "/etc/passwd", "s3://bucket/inputs/a.mp4"],
)
def test_ffmpeg0_rejects_unsafe_key(ffmpeg0, local_store, no_scratch_leftovers, video):
    with pytest.raises(
        BadRequestError, match="ffmpeg-0: field 'video' is not a valid artifact"
    ) as caught:
        ffmpeg0.invoke({"request_id": "escape", "video": video}, local_store)

    assert isinstance(caught.value.__cause__, InvalidKeyError)


def test_ffmpeg0_missing_artifact(ffmpeg0, local_store, no_scratch_leftovers):
    with pytest.raises(ArtifactNotFoundError, match="ffmpeg-0: field 'video' names no stored"):
        ffmpeg0.invoke({"request_id": "gone", "video": "inputs/missing.mp4"}, local_store)


def _run_media_chain(store, video_uri):
    """Run ffmpeg-0, librosa, ffmpeg-1, ffmpeg-2 and ffmpeg-3 in order, as the orchestrator does."""
    split = Ffmpeg0Stage().invoke({"request_id": "chain", "video": video_uri}, store).output
    segments = (
        SpeechSegmentsStage()
        .invoke({"request_id": "chain", "audio": split["audio"]}, store)
        .output["segments"]
    )
    clips = (
        Ffmpeg1Stage(Ffmpeg1Config(mode="copy"))
        .invoke({"request_id": "chain", "video": split["video"], "segments": segments}, store)
        .output["clips"]
    )
    results = []
    for index, clip in enumerate(clips):
        small = Ffmpeg2Stage().invoke({"request_id": "chain", "clip": clip, "index": index}, store)
        frames = Ffmpeg3Stage().invoke(
            {"request_id": "chain", "video": small.output["small"], "index": index}, store
        )
        results.append((small.output, frames.output))
    return split, segments, results


def test_audio_only_input_flows_through_chain(local_store, bad_media, no_scratch_leftovers):
    uri = _upload(local_store, bad_media("audio_only_m4a"))

    split, segments, results = _run_media_chain(local_store, uri)

    assert split["has_video"] is False
    assert len(segments) == 3
    assert len(results) == 3
    for small, frames in results:
        assert small["has_video"] is False
        assert local_store.exists(small["wav"])
        assert frames["frames"] == []
        assert frames["note"] == FRAMES_NOTE_NO_VIDEO


def test_six_channel_input_flows_through_chain(local_store, bad_media, no_scratch_leftovers):
    uri = _upload(local_store, bad_media("six_channels"))

    split, segments, results = _run_media_chain(local_store, uri)

    assert split["has_video"] is True
    assert len(segments) == 3
    for small, frames in results:
        assert small["has_video"] is True
        assert local_store.exists(small["wav"])
        assert len(frames["frames"]) >= 1


def test_video_without_audio_has_no_segments(local_store, bad_media):
    uri = _upload(local_store, bad_media("no_audio"))

    split, segments, results = _run_media_chain(local_store, uri)

    assert split["audio"] is None
    assert segments == []
    assert results == []
