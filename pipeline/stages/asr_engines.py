"""Speech-to-text engines of the ``asr`` stage: faster-whisper, pocketsphinx and DeepSpeech.

Each engine loads its model once in :meth:`load` and turns 16 kHz mono float32 samples into
a :class:`Transcript` in :meth:`transcribe`. Engine failures are raised as
:class:`~pipeline.errors.StageError` (engine at fault) with the third-party error chained.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline import models
from pipeline.errors import EngineUnavailableError, StageError

if TYPE_CHECKING:
    from pipeline.stages.asr import AsrConfig

logger = logging.getLogger(__name__)

SAMPLE_RATE_HZ = 16_000
"""The rate every engine here expects; the stage resamples other rates to it."""

DEEPSPEECH_MAX_PYTHON = (3, 9)
"""DeepSpeech 0.9.3 publishes wheels for CPython 3.5 to 3.9 only."""

POCKETSPHINX_FRAMES_PER_S = 100
"""pocketsphinx's default frame rate (config ``frate``), which converts its frames to seconds."""


@dataclass
class Word:
    word: str
    start_s: float
    end_s: float
    probability: float | None = None


@dataclass
class Segment:
    start_s: float
    end_s: float
    text: str
    words: list[Word] = field(default_factory=list)


@dataclass
class Transcript:
    """The text of one audio clip and, where the engine gives them, its timed segments."""

    text: str
    segments: list[Segment] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class SpeechEngine:
    """Base class of the engines. ``stage`` is the stage name put in the errors they raise.

    ``lock`` is held around :meth:`transcribe` by the stage, which serves concurrent
    invocations from threads: engines whose decoder is not thread-safe set a real lock.
    """

    name: str = ""

    def __init__(self, config: AsrConfig, stage: str):
        self.config = config
        self.stage = stage
        self.lock: AbstractContextManager[Any] = nullcontext()

    def load(self) -> None:
        raise NotImplementedError

    def transcribe(self, audio: np.ndarray, source: str) -> Transcript:
        """Transcribe mono float32 samples at :data:`SAMPLE_RATE_HZ` from input ``source``."""
        raise NotImplementedError


class WhisperEngine(SpeechEngine):
    """faster-whisper on a CTranslate2 Whisper folder (bundled: tiny.en); never downloads."""

    name = "whisper"

    def load(self) -> None:
        # The model is always a local folder, so the Hugging Face hub is never needed.
        os.environ["HF_HUB_OFFLINE"] = "1"
        if self.config.model_path:
            folder = models.configured_path(self.stage, "model_path", self.config.model_path)
            folder = models.check_whisper_dir(self.stage, folder)
        else:
            folder = models.whisper_model_dir(self.stage)

        from faster_whisper import WhisperModel

        try:
            self._model = WhisperModel(
                str(folder),
                device="cpu",
                compute_type=self.config.compute_type,
                cpu_threads=self.config.cpu_threads,
                local_files_only=True,
            )
        except (RuntimeError, ValueError, OSError) as exc:
            raise EngineUnavailableError(
                self.stage,
                str(folder),
                f"faster-whisper cannot load the model with compute_type "
                f"{self.config.compute_type!r}: {exc}; check the folder and compute_type",
            ) from exc
        logger.info("Loaded Whisper model from %s (%s)", folder, self.config.compute_type)

    def transcribe(self, audio: np.ndarray, source: str) -> Transcript:
        options: dict[str, Any] = {"language": self.config.language, "word_timestamps": True}
        if self.config.beam_size:
            options["beam_size"] = self.config.beam_size
        try:
            pieces, _info = self._model.transcribe(audio, **options)
            segments = [
                Segment(
                    start_s=round(piece.start, 3),
                    end_s=round(piece.end, 3),
                    text=piece.text.strip(),
                    words=[
                        Word(w.word.strip(), round(w.start, 3), round(w.end, 3), w.probability)
                        for w in piece.words or []
                    ],
                )
                for piece in pieces
            ]
        except (RuntimeError, ValueError) as exc:
            raise StageError(self.stage, source, f"faster-whisper failed: {exc}") from exc
        text = " ".join(segment.text for segment in segments if segment.text)
        return Transcript(text=text, segments=segments)


class PocketsphinxEngine(SpeechEngine):
    """CMU pocketsphinx with its bundled en-us model, or a model folder laid out like it."""

    name = "pocketsphinx"

    def load(self) -> None:
        # One decoder keeps the state of one utterance, so calls take turns.
        self.lock = threading.Lock()
        if self.config.model_path:
            folder = models.configured_path(self.stage, "model_path", self.config.model_path)
        else:
            folder = models.pocketsphinx_model_dir(self.stage)
        files = models.pocketsphinx_model_files(self.stage, folder)

        from pocketsphinx import Decoder

        try:
            self._decoder = Decoder(samprate=SAMPLE_RATE_HZ, loglevel="ERROR", **files)
        except RuntimeError as exc:
            raise EngineUnavailableError(
                self.stage,
                str(folder),
                f"pocketsphinx cannot load the model folder: {exc}",
            ) from exc
        logger.info("Loaded pocketsphinx model from %s", folder)

    def transcribe(self, audio: np.ndarray, source: str) -> Transcript:
        samples = to_int16(audio)
        try:
            self._decoder.start_utt()
            self._decoder.process_raw(samples.tobytes(), full_utt=True)
            self._decoder.end_utt()
            hypothesis = self._decoder.hyp()
            timed = list(self._decoder.seg()) if hypothesis else []
        except RuntimeError as exc:
            raise StageError(self.stage, source, f"pocketsphinx failed: {exc}") from exc
        text = hypothesis.hypstr.strip() if hypothesis else ""
        words = [
            Word(
                word=strip_pronunciation_variant(piece.word),
                start_s=piece.start_frame / POCKETSPHINX_FRAMES_PER_S,
                end_s=(piece.end_frame + 1) / POCKETSPHINX_FRAMES_PER_S,
            )
            for piece in timed
            if not (piece.word.startswith("<") or piece.word.startswith("["))
        ]
        if not text:
            return Transcript(text="")
        segment = Segment(
            start_s=words[0].start_s if words else 0.0,
            end_s=words[-1].end_s if words else len(audio) / SAMPLE_RATE_HZ,
            text=text,
            words=words,
        )
        return Transcript(text=text, segments=[segment])


class DeepSpeechEngine(SpeechEngine):
    """Mozilla DeepSpeech 0.9.3 with a user-supplied acoustic model and scorer.

    It runs only on Python 3.9 or older (``pip install .[deepspeech]``), because no newer
    wheel exists, and its model files are on no package registry.
    """

    name = "deepspeech"

    def load(self) -> None:
        # NOTE: DeepSpeech's docs do not say whether one Model may decode from two threads.
        self.lock = threading.Lock()
        problems = deepspeech_problems(self.config, sys.version_info[:2])
        if problems:
            raise EngineUnavailableError(self.stage, "deepspeech", " ".join(problems))

        try:
            import deepspeech
        except ImportError as exc:
            raise EngineUnavailableError(
                self.stage,
                "deepspeech",
                "the deepspeech package is not installed; run 'pip install .[deepspeech]' "
                "on Python 3.9, or use engine 'whisper' or 'pocketsphinx'",
            ) from exc

        # deepspeech_problems reports an unset path, so both are set here.
        assert self.config.deepspeech_model and self.config.deepspeech_scorer
        model_path = str(Path(self.config.deepspeech_model).expanduser())
        scorer_path = str(Path(self.config.deepspeech_scorer).expanduser())
        try:
            self._model = deepspeech.Model(model_path)
            self._model.enableExternalScorer(scorer_path)
            if self.config.beam_size:
                self._model.setBeamWidth(self.config.beam_size)
        except RuntimeError as exc:
            raise EngineUnavailableError(
                self.stage,
                model_path,
                f"DeepSpeech cannot load the model or scorer {scorer_path}: {exc}",
            ) from exc

        if self._model.sampleRate() != SAMPLE_RATE_HZ:
            raise EngineUnavailableError(
                self.stage,
                model_path,
                f"the model expects {self._model.sampleRate()} Hz audio, but the pipeline "
                f"sends {SAMPLE_RATE_HZ} Hz; use a 16 kHz DeepSpeech model",
            )
        logger.info("Loaded DeepSpeech model %s with scorer %s", model_path, scorer_path)

    def transcribe(self, audio: np.ndarray, source: str) -> Transcript:
        try:
            text = self._model.stt(to_int16(audio)).strip()
        except RuntimeError as exc:
            raise StageError(self.stage, source, f"DeepSpeech failed: {exc}") from exc
        return Transcript(text=text)


def deepspeech_problems(config: AsrConfig, python_version: tuple[int, int]) -> list[str]:
    """Return why DeepSpeech cannot run with ``config`` on ``python_version`` (empty if it can)."""
    problems: list[str] = []
    if python_version > DEEPSPEECH_MAX_PYTHON:
        problems.append(
            f"DeepSpeech 0.9.3 has wheels only for Python 3.5 to 3.9, and this is Python "
            f"{python_version[0]}.{python_version[1]}. Use engine 'whisper' or "
            "'pocketsphinx', or run on Python 3.9 with 'pip install .[deepspeech]'."
        )
    for field_name, kind in (("deepspeech_model", ".pbmm"), ("deepspeech_scorer", ".scorer")):
        value = getattr(config, field_name)
        if not value:
            problems.append(
                f"Set {field_name} to the DeepSpeech 0.9.3 {kind} file; the engine needs "
                "user-supplied model files because no registry ships them."
            )
        elif not Path(value).expanduser().is_file():
            problems.append(f"The {field_name} file {value} does not exist; fix the path.")
    return problems


def to_int16(audio: np.ndarray) -> np.ndarray:
    """Convert float samples in [-1, 1] to int16, clipping what lies outside."""
    return (np.clip(audio, -1.0, 1.0) * 32767.0).astype(np.int16)


def strip_pronunciation_variant(word: str) -> str:
    """Drop pocketsphinx's pronunciation suffix: ``probably(2)`` becomes ``probably``."""
    if word.endswith(")") and "(" in word:
        return word[: word.rindex("(")]
    return word


ENGINES: dict[str, type[SpeechEngine]] = {
    engine.name: engine for engine in (WhisperEngine, PocketsphinxEngine, DeepSpeechEngine)
}
"""Engine name in the stage config -> engine class."""
