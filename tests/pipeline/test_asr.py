"""The asr stage on real engines: faster-whisper tiny.en, pocketsphinx en-us, DeepSpeech errors."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
from model_fixtures import SENTENCE_SPANS_S, extract_wav

from pipeline.errors import BadRequestError, EngineUnavailableError, MediaError
from pipeline.stages import stage_class
from pipeline.stages.asr import AsrConfig, AsrStage, read_audio
from pipeline.stages.asr_engines import deepspeech_problems, strip_pronunciation_variant
from pipeline.store import LocalStore


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("asr-media")
    silent = folder / "silent.wav"
    soundfile.write(silent, np.zeros(16_000, dtype=np.float32), 16_000, subtype="PCM_16")
    empty = folder / "empty.wav"
    soundfile.write(empty, np.zeros(0, dtype=np.float32), 16_000, subtype="PCM_16")
    not_audio = folder / "clip_0.wav"
    not_audio.write_text("This is a text file with a wav name.\n" * 20)
    return {
        "full": extract_wav(folder / "full.wav"),
        "fox": extract_wav(folder / "fox.wav", SENTENCE_SPANS_S[0]),
        "silent": silent,
        "empty": empty,
        "not_audio": not_audio,
    }


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> LocalStore:
    return LocalStore(tmp_path_factory.mktemp("asr-store"))


@pytest.fixture(scope="module")
def whisper() -> AsrStage:
    stage = AsrStage(AsrConfig(engine="whisper", cpu_threads=1))
    stage.ensure_loaded()
    return stage


@pytest.fixture(scope="module")
def pocketsphinx() -> AsrStage:
    stage = AsrStage(AsrConfig(engine="pocketsphinx"))
    stage.ensure_loaded()
    return stage


def upload(store: LocalStore, media: dict[str, Path], name: str) -> str:
    return store.put_file(f"inputs/{name}.wav", media[name])


def words_of(text: str) -> set[str]:
    return set(re.findall(r"[a-z']+", text.lower()))


def test_registry_names_asr_stage():
    assert stage_class("asr") is AsrStage


def test_whisper_transcribes_sample_sentences(whisper, store, media):
    request = {"request_id": "r1", "audio": upload(store, media, "full"), "index": 0}

    result = whisper.invoke(request, store)

    words = words_of(result.output["text"])
    # espeak's voice through tiny.en: "The quick round fox jump over the lazy nog ...
    # an astronaut stands in front on the flag."
    assert {"fox", "lazy", "astronaut", "flag"} <= words
    assert result.output["engine"] == "whisper"
    assert result.output["index"] == 0
    assert result.telemetry.compute_ms > 0


def test_whisper_writes_transcript_document(whisper, store, media):
    request = {"request_id": "r2", "audio": upload(store, media, "fox"), "index": 3}

    result = whisper.invoke(request, store)

    uri = result.output["transcript"]
    assert uri.endswith("requests/r2/asr/transcript_3.json")
    document = json.loads(store.get_bytes(uri))
    assert document["text"] == result.output["text"]
    assert document["engine"] == "whisper"
    assert document["duration_s"] == pytest.approx(3.6, abs=0.05)
    assert document["segments"], "whisper returned no segments"
    first_words = document["segments"][0]["words"]
    assert "lazy" in [word["word"].strip(".,").lower() for word in first_words]
    assert all(word["end_s"] >= word["start_s"] for word in first_words)


@pytest.mark.parametrize("name", ["silent", "empty"])
def test_whisper_silence_gives_empty_transcript(whisper, store, media, name):
    request = {"request_id": f"r-{name}", "audio": upload(store, media, name), "index": 0}

    result = whisper.invoke(request, store)

    assert result.output["text"] == ""
    document = json.loads(store.get_bytes(result.output["transcript"]))
    assert document["text"] == ""
    assert document["segments"] == []


def test_not_audio_raises_media_error(whisper, store, media):
    uri = upload(store, media, "not_audio")
    request = {"request_id": "r-bad", "audio": uri, "index": 0}

    with pytest.raises(MediaError, match=r"^asr: the file is not readable audio") as caught:
        whisper.invoke(request, store)

    assert caught.value.bad_input is True
    assert caught.value.stage == "asr"
    assert caught.value.input == uri


def test_missing_audio_field_is_bad_request(whisper, store):
    with pytest.raises(BadRequestError, match="missing the field 'audio'"):
        whisper.invoke({"request_id": "r-missing", "index": 0}, store)


def test_index_must_be_integer(whisper, store, media):
    request = {"request_id": "r-index", "audio": upload(store, media, "fox"), "index": "0"}

    with pytest.raises(BadRequestError, match="'index' must be of type int"):
        whisper.invoke(request, store)


def test_read_audio_mixes_and_resamples(tmp_path):
    stereo = np.zeros((8_000, 2), dtype=np.float32)
    stereo[:, 0] = 0.5
    path = tmp_path / "stereo-8k.wav"
    soundfile.write(path, stereo, 8_000)

    audio = read_audio(path, "asr", "stereo-8k.wav")

    assert audio.dtype == np.float32
    assert len(audio) == 16_000
    assert float(np.median(audio)) == pytest.approx(0.25, abs=0.01)


def test_pocketsphinx_transcribes_first_sentence(pocketsphinx, store, media):
    request = {"request_id": "r-ps", "audio": upload(store, media, "fox"), "index": 1}

    result = pocketsphinx.invoke(request, store)

    # pocketsphinx en-us hears espeak's "...the lazy dog" as "we probably call them it's a
    # little lazy dog"; only the end of the sentence comes through.
    words = words_of(result.output["text"])
    assert words & {"lazy", "dog"}
    document = json.loads(store.get_bytes(result.output["transcript"]))
    assert document["engine"] == "pocketsphinx"
    timed = [word["word"] for word in document["segments"][0]["words"]]
    assert "lazy" in timed
    assert not any("(" in word or word.startswith("<") for word in timed)


def test_pronunciation_variant_is_stripped():
    assert strip_pronunciation_variant("probably(2)") == "probably"
    assert strip_pronunciation_variant("dog") == "dog"


def test_whisper_model_path_must_exist(tmp_path):
    missing = tmp_path / "no-such-model"
    stage = AsrStage(AsrConfig(engine="whisper", model_path=str(missing)))

    with pytest.raises(EngineUnavailableError, match=re.escape(str(missing))):
        stage.load()


def test_whisper_model_path_must_hold_model(tmp_path):
    stage = AsrStage(AsrConfig(engine="whisper", model_path=str(tmp_path)))

    with pytest.raises(EngineUnavailableError, match="model.bin, config.json missing"):
        stage.load()


def test_unknown_engine_lists_engines():
    stage = AsrStage(AsrConfig(engine="kaldi"))

    with pytest.raises(EngineUnavailableError, match="whisper, pocketsphinx, deepspeech"):
        stage.load()


@pytest.mark.skipif(sys.version_info < (3, 10), reason="DeepSpeech installs on Python 3.9")
def test_deepspeech_load_explains_python_and_files():
    stage = AsrStage(AsrConfig(engine="deepspeech"))

    with pytest.raises(EngineUnavailableError) as caught:
        stage.load()

    message = str(caught.value)
    version = f"Python {sys.version_info[0]}.{sys.version_info[1]}"
    assert "wheels only for Python 3.5 to 3.9" in message
    assert version in message
    assert "Use engine 'whisper' or 'pocketsphinx'" in message
    assert "pip install .[deepspeech]" in message
    assert "Set deepspeech_model" in message
    assert "Set deepspeech_scorer" in message


@pytest.mark.skipif(sys.version_info < (3, 10), reason="DeepSpeech installs on Python 3.9")
def test_deepspeech_with_files_still_needs_old_python(tmp_path):
    model = tmp_path / "deepspeech-0.9.3-models.pbmm"
    scorer = tmp_path / "deepspeech-0.9.3-models.scorer"
    model.write_bytes(b"pbmm")
    scorer.write_bytes(b"scorer")
    config = AsrConfig(
        engine="deepspeech", deepspeech_model=str(model), deepspeech_scorer=str(scorer)
    )

    with pytest.raises(EngineUnavailableError, match="wheels only for Python 3.5 to 3.9") as caught:
        AsrStage(config).load()

    assert "deepspeech_model" not in str(caught.value)


def test_deepspeech_problems_on_python_39_name_files(tmp_path):
    missing = tmp_path / "missing.scorer"
    config = AsrConfig(engine="deepspeech", deepspeech_scorer=str(missing))

    problems = deepspeech_problems(config, (3, 9))

    assert len(problems) == 2
    assert problems[0].startswith("Set deepspeech_model to the DeepSpeech 0.9.3 .pbmm file")
    assert problems[1] == f"The deepspeech_scorer file {missing} does not exist; fix the path."


def test_pocketsphinx_serves_concurrent_calls(pocketsphinx, store, media):
    from concurrent.futures import ThreadPoolExecutor

    uri = upload(store, media, "fox")
    requests = [{"request_id": f"r-thread-{i}", "audio": uri, "index": i} for i in range(2)]

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda request: pocketsphinx.invoke(request, store), requests))

    texts = [result.output["text"] for result in results]
    assert texts[0] == texts[1]
    assert words_of(texts[0]) & {"lazy", "dog"}
