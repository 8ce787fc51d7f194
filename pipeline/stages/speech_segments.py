"""Stage ``librosa``: find the speech segments of an audio track with ``librosa.effects.split``.

Request ``{request_id, audio: URI | null}``; output ``{segments: [{start_s, end_s}], note?}``.

``librosa.effects.split`` marks as non-silent every frame whose RMS level is within
``top_db`` decibels of the loudest frame. Its intervals are then merged when the gap between
them is shorter than ``min_gap_s``, dropped when shorter than ``min_segment_s``, and padded
by ``pad_s`` on both sides (clipped to the track, with overlaps merged again).

Because ``top_db`` is relative to the loudest frame, a silent or near-silent track would
otherwise come out as one long segment, so a track whose peak is below ``silence_dbfs``
has no speech. No audio, an empty track or no speech each give ``segments: []`` with a note.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.errors import BadRequestError, MediaError
from pipeline.media import download_input
from pipeline.stages.base import EngineTimer, Invocation, Stage

logger = logging.getLogger(__name__)

NOTE_NO_AUDIO = "no audio track, so no speech found"
NOTE_NO_SPEECH = "no speech found"

WARMUP_SAMPLES = 8192
"""Length of the noise signal split in :meth:`SpeechSegmentsStage.load` to compile numba code."""


@dataclass
class SpeechSegmentsConfig:
    """Settings of the ``librosa`` stage; times in seconds, levels in decibels.

    ``frame_length`` and ``hop_length`` are in samples at the wav's own rate.
    """

    top_db: float = 30.0
    frame_length: int = 2048
    hop_length: int = 512
    min_gap_s: float = 0.5
    min_segment_s: float = 0.3
    pad_s: float = 0.1
    silence_dbfs: float = -60.0

    def __post_init__(self) -> None:
        if self.top_db <= 0:
            raise ValueError(f"top_db must be positive, not {self.top_db}.")
        if self.frame_length <= 0 or self.hop_length <= 0:
            raise ValueError(
                f"frame_length and hop_length must be positive, not "
                f"{self.frame_length} and {self.hop_length}."
            )
        if self.hop_length > self.frame_length:
            raise ValueError(
                f"hop_length ({self.hop_length}) must not exceed frame_length "
                f"({self.frame_length})."
            )
        for field in ("min_gap_s", "min_segment_s", "pad_s"):
            if getattr(self, field) < 0:
                raise ValueError(f"{field} must not be negative, not {getattr(self, field)}.")


class SpeechSegmentsStage(Stage[SpeechSegmentsConfig]):
    name = "librosa"
    config_class = SpeechSegmentsConfig

    def load(self) -> None:
        import librosa

        # The first split in a process JIT-compiles librosa's numba code (seconds), so it
        # runs here and counts as this replica's init time.
        noise = np.random.default_rng(0).standard_normal(WARMUP_SAMPLES).astype(np.float32)
        librosa.effects.split(
            noise,
            top_db=self.config.top_db,
            frame_length=self.config.frame_length,
            hop_length=self.config.hop_length,
        )

    def run(self, request: dict[str, Any], invocation: Invocation) -> dict[str, Any]:
        audio_uri = request.get("audio")
        if audio_uri is None:
            return {"segments": [], "note": NOTE_NO_AUDIO}
        if not isinstance(audio_uri, str) or not audio_uri:
            raise BadRequestError(
                f"{self.name}: field 'audio' must be an artifact URI or null, not {audio_uri!r}."
            )

        path = download_input(invocation, audio_uri, self.name, "audio", "audio")
        with EngineTimer(invocation.telemetry):
            samples, rate_hz = read_audio(path, self.name, audio_uri)
            segments = find_segments(samples, rate_hz, self.config)

        logger.info(
            "librosa found %d speech segment(s) in %s for request %s",
            len(segments),
            audio_uri,
            invocation.request_id,
        )
        output: dict[str, Any] = {"segments": segments}
        if not segments:
            output["note"] = NOTE_NO_SPEECH
        return output


def read_audio(path, stage: str, input: str) -> tuple[np.ndarray, int]:
    """Read a sound file at its own rate as mono float32 samples and return them and the rate.

    This is what ``librosa.load(path, sr=None)`` does for a wav, without its audioread
    fallback, so a file that is not a sound file fails at once with a clear error.

    Raises:
        MediaError: libsndfile cannot read the file.
    """
    import librosa
    import soundfile

    try:
        samples, rate_hz = soundfile.read(path, dtype="float32", always_2d=True)
    except soundfile.SoundFileError as exc:
        raise MediaError(
            stage, input, f"not a readable sound file ({exc}); give the wav made by ffmpeg-0"
        ) from exc
    return librosa.to_mono(samples.T), int(rate_hz)


def find_segments(
    samples: np.ndarray, rate_hz: int, config: SpeechSegmentsConfig
) -> list[dict[str, float]]:
    """Return the speech segments of mono ``samples`` as ``{start_s, end_s}`` dicts in order."""
    import librosa

    if samples.size == 0:
        return []
    peak = float(np.max(np.abs(samples)))
    if peak <= 0 or 20 * np.log10(peak) < config.silence_dbfs:
        return []

    intervals = librosa.effects.split(
        samples,
        top_db=config.top_db,
        frame_length=config.frame_length,
        hop_length=config.hop_length,
    )
    duration_s = samples.size / rate_hz
    spans = [(start / rate_hz, end / rate_hz) for start, end in intervals if end > start]

    spans = _merge(spans, config.min_gap_s)
    spans = [(start, end) for start, end in spans if end - start >= config.min_segment_s]
    padded = [
        (max(0.0, start - config.pad_s), min(duration_s, end + config.pad_s))
        for start, end in spans
    ]
    spans = _merge(padded, 0.0)
    return [{"start_s": round(start, 3), "end_s": round(end, 3)} for start, end in spans]


def _merge(spans: list[tuple[float, float]], max_gap_s: float) -> list[tuple[float, float]]:
    """Merge sorted spans whose gap is shorter than ``max_gap_s`` (or that overlap)."""
    merged: list[tuple[float, float]] = []
    for start, end in spans:
        if not merged:
            merged.append((start, end))
            continue
        previous_start, previous_end = merged[-1]
        gap_s = start - previous_end
        if gap_s <= 0 or gap_s < max_gap_s:
            merged[-1] = (previous_start, max(previous_end, end))
        else:
            merged.append((start, end))
    return merged
