"""The ``asr`` stage: transcribe one clip's 16 kHz mono wav to ``transcript_<index>.json``.

It replaces VideoSearcher's ``deepspeech`` function. The engine is a config choice:
``whisper`` (faster-whisper with the bundled Whisper tiny.en), ``pocketsphinx`` (its bundled
en-us model) or ``deepspeech`` (DeepSpeech 0.9.3 with user-supplied files, Python 3.9 only).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import EngineUnavailableError, MediaError
from pipeline.stages.asr_engines import ENGINES, SAMPLE_RATE_HZ, SpeechEngine, Transcript
from pipeline.stages.base import EngineTimer, Invocation, Stage, require

logger = logging.getLogger(__name__)


@dataclass
class AsrConfig:
    """Settings of the ``asr`` stage.

    ``model_path`` (a Whisper CTranslate2 folder, or a pocketsphinx model folder) wins over
    the bundled model when set. ``beam_size`` None keeps the engine's default (5 for
    faster-whisper, the model's own for DeepSpeech); pocketsphinx ignores it. Audio whose
    peak level is below ``silence_dbfs`` (dB relative to full scale) yields an empty
    transcript without running the engine, because Whisper invents words on silence.
    """

    engine: str = "whisper"
    model_path: str | None = None
    language: str = "en"
    beam_size: int | None = None
    compute_type: str = "int8"
    cpu_threads: int = 1
    deepspeech_model: str | None = None
    deepspeech_scorer: str | None = None
    silence_dbfs: float = -60.0


class AsrStage(Stage[AsrConfig]):
    """Request ``{request_id, audio, index}`` -> ``{transcript, text, engine, index}``."""

    name = "asr"
    config_class = AsrConfig

    engine: SpeechEngine

    def load(self) -> None:
        engine_class = ENGINES.get(self.config.engine)
        if engine_class is None:
            raise EngineUnavailableError(
                self.name,
                str(self.config.engine),
                f"unknown speech engine; set engine to one of: {', '.join(ENGINES)}",
            )
        engine = engine_class(self.config, self.name)
        engine.load()
        self.engine = engine

    def run(self, request: dict[str, Any], invocation: Invocation) -> dict[str, Any]:
        audio_uri = require(request, "audio", self.name)
        index = require(request, "index", self.name, int)
        local = invocation.scratch / "audio.wav"
        invocation.store.get_file(audio_uri, local)

        audio = read_audio(local, self.name, audio_uri)
        duration_s = len(audio) / SAMPLE_RATE_HZ
        level = peak_dbfs(audio)
        if level < self.config.silence_dbfs:
            logger.info(
                "Audio %s peaks at %.1f dBFS, below %.1f: empty transcript",
                audio_uri,
                level,
                self.config.silence_dbfs,
            )
            transcript = Transcript(text="")
        else:
            with self.engine.lock, EngineTimer(invocation.telemetry):
                transcript = self.engine.transcribe(audio, audio_uri)

        document = {
            "text": transcript.text,
            "engine": self.engine.name,
            "language": self.config.language,
            "duration_s": round(duration_s, 3),
            "segments": transcript.to_dict()["segments"],
        }
        key = invocation.key(self.name, f"transcript_{index}.json")
        uri = invocation.store.put_bytes(key, json.dumps(document, indent=1).encode("utf-8"))
        logger.info("Transcribed %s (%.1f s) with %s", audio_uri, duration_s, self.engine.name)
        return {
            "transcript": uri,
            "text": transcript.text,
            "engine": self.engine.name,
            "index": index,
        }


def read_audio(path: Path, stage: str, source: str) -> np.ndarray:
    """Read an audio file as mono float32 at 16 kHz, averaging channels and resampling.

    Raises:
        MediaError: the file is not audio that libsndfile can read (bad input).
    """
    import soundfile

    try:
        samples, rate = soundfile.read(path, dtype="float32", always_2d=True)
    except (soundfile.SoundFileError, RuntimeError) as exc:
        raise MediaError(
            stage,
            source,
            f"the file is not readable audio ({getattr(exc, 'error_string', exc)}); "
            "send a 16 kHz mono wav",
        ) from exc
    mono = samples.mean(axis=1) if samples.shape[1] > 1 else samples[:, 0]
    if rate != SAMPLE_RATE_HZ and len(mono):
        import soxr

        logger.info("Resampling %s from %d Hz to %d Hz", source, rate, SAMPLE_RATE_HZ)
        mono = soxr.resample(mono, rate, SAMPLE_RATE_HZ).astype(np.float32)
    return np.ascontiguousarray(mono, dtype=np.float32)


def peak_dbfs(audio: np.ndarray) -> float:
    """Return the peak level in dB relative to full scale; minus infinity for silence."""
    peak = float(np.max(np.abs(audio))) if len(audio) else 0.0
    return 20.0 * math.log10(peak) if peak > 0 else -math.inf
