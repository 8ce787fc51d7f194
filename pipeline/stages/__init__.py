"""The stages of VideoSearcher, one module each, and the registry that names them."""

from __future__ import annotations

import importlib

from pipeline.stages.base import Stage

STAGE_CLASSES: dict[str, str] = {
    "ffmpeg-0": "pipeline.stages.ffmpeg0:Ffmpeg0Stage",
    "librosa": "pipeline.stages.speech_segments:SpeechSegmentsStage",
    "ffmpeg-1": "pipeline.stages.ffmpeg1:Ffmpeg1Stage",
    "ffmpeg-2": "pipeline.stages.ffmpeg2:Ffmpeg2Stage",
    "asr": "pipeline.stages.asr:AsrStage",
    "ffmpeg-3": "pipeline.stages.ffmpeg3:Ffmpeg3Stage",
    "object-detector": "pipeline.stages.detector:DetectorStage",
    "orchestrator": "pipeline.orchestrator:OrchestratorStage",
}
"""Function name -> ``module:class``. Imported lazily so a process loads only its engine."""

STAGE_NAMES: tuple[str, ...] = tuple(STAGE_CLASSES)


def stage_class(name: str) -> type[Stage]:
    """Import and return the class of stage ``name``; raise ValueError listing the names."""
    try:
        target = STAGE_CLASSES[name]
    except KeyError:
        raise ValueError(
            f"Unknown stage {name!r}; choose one of: {', '.join(STAGE_NAMES)}."
        ) from None
    module_name, class_name = target.split(":")
    return getattr(importlib.import_module(module_name), class_name)
