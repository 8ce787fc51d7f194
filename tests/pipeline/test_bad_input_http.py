"""Bad inputs sent over HTTP to the real stages and the orchestrator, behind a local gateway.

Each bad input ends in a JSON error naming the stage and the input, or in a sensible result,
and the functions keep serving: a good request after each bad one succeeds.

Chain-level decisions checked here:
- a video without audio is a successful request with no clips, so no transcripts and no
  detections, and a note saying that no speech can be found;
- audio without video is transcribed and has no detections;
- six-channel audio is downmixed by ffmpeg-0 and transcribed like the mono sample.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from pipeline.runner import ChainRunError, LocalChain


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    with LocalChain(tmp_path_factory.mktemp("bad-input")) as running:
        yield running


@pytest.fixture(scope="module")
def good_video_uri(chain, sample_video) -> str:
    return chain.upload(sample_video, "good")


def call_ffmpeg0(chain: LocalChain, video: str, request_id: str = "bad") -> httpx.Response:
    return chain.call("ffmpeg-0", {"request_id": request_id, "video": video}, timeout_s=120)


def assert_ffmpeg0_still_serves(chain: LocalChain, good_video_uri: str) -> None:
    response = call_ffmpeg0(chain, good_video_uri, "good-after-bad")
    assert response.status_code == 200
    assert response.json()["output"]["has_audio"] is True


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("not_media", ""),
        ("empty", "empty"),
        ("truncated", ""),
    ],
)
def test_unreadable_video_is_422(chain, good_video_uri, bad_media, kind, message):
    path: Path = bad_media(kind)
    uri = chain.upload(path, f"bad-{kind}")

    response = call_ffmpeg0(chain, uri)

    error = response.json()["error"]
    assert response.status_code == 422
    assert error["kind"] == "bad_input"
    assert error["stage"] == "ffmpeg-0"
    assert error["input"] == uri
    assert message in error["message"].lower()
    assert_ffmpeg0_still_serves(chain, good_video_uri)


def test_non_video_fails_chain_at_ffmpeg0(chain, bad_media):
    with pytest.raises(ChainRunError, match=r"ffmpeg-0 failed on .*notes\.mp4") as caught:
        chain.run(bad_media("not_media"), "chain-not-media")

    assert caught.value.status_code == 422
    assert caught.value.error["kind"] == "bad_input"
    assert caught.value.summary["status"] == "error"
    assert [t["stage"] for t in caught.value.summary["invocations"]] == ["ffmpeg-0"]


def test_malformed_json_body_is_400(chain, good_video_uri):
    for function in ("ffmpeg-0", "orchestrator"):
        response = httpx.post(
            f"{chain.gateway_url}/function/{function}",
            content=b'{"request_id": "x", "video": ',
            headers={"Content-Type": "application/json"},
            timeout=30,
        )

        assert response.status_code == 400
        assert response.json()["error"]["kind"] == "bad_request"
        assert response.json()["error"]["stage"] == function
        assert "not valid JSON" in response.json()["error"]["message"]
    assert_ffmpeg0_still_serves(chain, good_video_uri)


@pytest.mark.parametrize("function", ["ffmpeg-0", "orchestrator"])
def test_missing_video_field_is_400(chain, function):
    response = chain.call(function, {"request_id": "no-video"}, timeout_s=30)

    assert response.status_code == 400
    assert response.json()["error"]["kind"] == "bad_request"
    assert "missing the field 'video'" in response.json()["error"]["message"]


@pytest.mark.parametrize("function", ["ffmpeg-0", "orchestrator"])
def test_key_with_dotdot_is_400(chain, good_video_uri, function):
    response = chain.call(
        function, {"request_id": "escape", "video": "inputs/../../secret.mp4"}, timeout_s=30
    )

    assert response.status_code == 400
    assert response.json()["error"]["kind"] in ("invalid_key", "bad_request")
    assert response.json()["error"]["stage"] == function
    assert "'..'" in response.json()["error"]["message"]
    assert_ffmpeg0_still_serves(chain, good_video_uri)


@pytest.mark.parametrize("request_id", ["a/b", "../../x", "a\nb", "r" * 900_000])
def test_invalid_request_id_is_400_before_ffmpeg(chain, good_video_uri, request_id):
    before = len(list((chain.workdir / "store").rglob("*")))

    response = chain.call("ffmpeg-0", {"request_id": request_id, "video": good_video_uri})

    error = response.json()["error"]
    assert response.status_code == 400
    assert error["kind"] == "bad_request"
    assert error["stage"] == "ffmpeg-0"
    assert "the field 'request_id'" in error["message"]
    assert "1 to 64 letters, digits, '_' or '-'" in error["message"]
    assert response.json()["telemetry"]["compute_ms"] == 0
    assert len(list((chain.workdir / "store").rglob("*"))) == before
    assert_ffmpeg0_still_serves(chain, good_video_uri)


def test_missing_artifact_is_422(chain, good_video_uri):
    response = call_ffmpeg0(chain, "inputs/nobody/absent.mp4")

    assert response.status_code == 422
    assert response.json()["error"]["kind"] in ("not_found", "bad_input")
    assert "absent.mp4" in response.json()["error"]["message"]
    assert_ffmpeg0_still_serves(chain, good_video_uri)


def test_video_without_audio_has_no_clips(chain, bad_media):
    summary = chain.run(bad_media("no_audio"), "chain-no-audio")

    assert summary["status"] == "ok"
    assert summary["transcripts"] == []
    assert summary["detections"] == []
    assert any("no audio" in note for note in summary["notes"])


def test_audio_without_video_is_transcribed(chain, bad_media):
    summary = chain.run(bad_media("audio_only_m4a"), "chain-audio-only")

    text = " ".join(t["text"] for t in summary["transcripts"]).lower()
    assert summary["status"] == "ok"
    assert "fox" in text
    assert summary["detections"] == []
    assert "ffmpeg-3" not in {t["stage"] for t in summary["invocations"]}


def test_six_channel_audio_is_transcribed(chain, bad_media):
    summary = chain.run(bad_media("six_channels"), "chain-six-channels")

    text = " ".join(t["text"] for t in summary["transcripts"]).lower()
    assert summary["status"] == "ok"
    assert len(summary["transcripts"]) == 3
    assert "fox" in text


def test_unicode_file_name_runs_whole_chain(chain, bad_media):
    summary = chain.run(bad_media("unicode_name"), "chain-unicode")

    assert summary["status"] == "ok"
    assert "vid%C3%A9o%20d%27%C3%A9t%C3%A9.mp4" in summary["video"]
    assert len(summary["transcripts"]) == 3
    assert summary["detections"] != []
