"""The ``object-detector`` stage: detect objects in one jpg frame to ``detections_<i>_<j>.json``.

VideoSearcher ran YOLOv4 on onnxruntime here. No COCO YOLO file ships in any wheel, so the
default ``onnx`` engine runs the YOLOv8n network bundled in the ``nudenet`` wheel (18 body
and face classes) as a stand-in. It also runs a user's YOLOv4, YOLOv5 or YOLOv8 ONNX file
given as ``model_path``. The ``haar`` engine runs OpenCV's frontal-face cascade.
"""

from __future__ import annotations

import ast
import json
import logging
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast

import numpy as np

from pipeline import models
from pipeline.errors import EngineUnavailableError, MediaError, StageError
from pipeline.stages import yolo
from pipeline.stages.base import EngineTimer, Invocation, Stage, require
from pipeline.stages.coco import COCO_CLASS_NAMES
from pipeline.stages.yolo import Layout

logger = logging.getLogger(__name__)

ENGINE_NAMES = ("onnx", "haar")
AUTO_LAYOUT = "auto"
BUNDLED_MODEL_NAME = "nudenet-yolov8n-320"
BUNDLED_CLASSES_NOTE = "NudeNet YOLOv8n (18 body/face classes), a stand-in for a COCO detector"

HAAR_SCALE_FACTOR = 1.1
HAAR_MIN_NEIGHBORS = 5
HAAR_MIN_SIZE_PX = 30
"""OpenCV's usual ``detectMultiScale`` settings for faces in photographs."""


@dataclass
class DetectorConfig:
    """Settings of the ``object-detector`` stage.

    ``model_path`` None uses the bundled model (nudenet's YOLOv8n for ``onnx``, OpenCV's
    frontal-face cascade for ``haar``). ``layout`` ``auto`` reads it from the output shapes.
    ``input_size`` None takes the side from the model file, else 416 for yolov4 and 640
    for yolov5/v8. ``class_names`` None takes the model file's metadata names, else the
    bundled model's 18 names or the 80 COCO names.
    """

    engine: str = "onnx"
    model_path: str | None = None
    layout: str = AUTO_LAYOUT
    input_size: int | None = None
    class_names: list[str] | None = None
    score_threshold: float = 0.25
    iou_threshold: float = 0.45
    intra_op_threads: int = 1

    def __post_init__(self) -> None:
        for name in ("score_threshold", "iou_threshold"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"object-detector: {name} must be between 0 and 1, not {value}.")
        if self.input_size is not None and self.input_size < 32:
            raise ValueError(
                f"object-detector: input_size must be at least 32 pixels, not {self.input_size}."
            )


@dataclass(frozen=True)
class Detection:
    label: str
    score: float
    box: tuple[float, float, float, float]
    """x1, y1, x2, y2 in frame pixels."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "score": round(self.score, 4),
            "box": [round(value, 1) for value in self.box],
        }


class OnnxYoloDetector:
    """A YOLO-family ONNX model on onnxruntime's CPU provider."""

    def __init__(self, config: DetectorConfig, stage: str):
        self.config = config
        self.stage = stage
        # onnxruntime guarantees that several threads may call InferenceSession.run at once.
        self.lock: AbstractContextManager[Any] = nullcontext()

    def load(self) -> None:
        model_path = self.config.model_path
        bundled = not model_path
        if not model_path:
            path = models.nudenet_model_path(self.stage)
        else:
            path = models.configured_path(self.stage, "model_path", model_path)
        self.path = path
        self.session = self.open_session(path)

        model_input = self.session.get_inputs()[0]
        self.input_name = model_input.name
        self.input_dtype: type[np.floating[Any]] = (
            np.float16 if model_input.type == "tensor(float16)" else np.float32
        )
        self.channels_first = not (len(model_input.shape) == 4 and model_input.shape[3] == 3)
        output_shapes = [output.shape for output in self.session.get_outputs()]
        self.layout = self.choose_layout(output_shapes)
        metadata = self.session.get_modelmeta().custom_metadata_map
        self.input_size = self.choose_input_size(model_input.shape, metadata)
        class_count = yolo.class_count_from_shapes(self.layout, output_shapes)
        self.class_names, classes_note = self.choose_class_names(bundled, metadata, class_count)

        self.model_info = {
            "name": BUNDLED_MODEL_NAME if bundled else path.name,
            "layout": self.layout.value,
            "classes_note": classes_note,
        }
        logger.info(
            "Loaded %s: layout %s, input %d px, %d classes",
            path,
            self.layout.value,
            self.input_size,
            len(self.class_names),
        )

    def open_session(self, path: Path):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = self.config.intra_op_threads
        options.inter_op_num_threads = 1
        try:
            return onnxruntime.InferenceSession(
                str(path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except onnxruntime_errors() as exc:
            raise EngineUnavailableError(
                self.stage,
                str(path),
                f"onnxruntime cannot load the file as an ONNX model ({exc}); give a YOLO "
                "model exported to ONNX, or set model_path to null for the bundled model",
            ) from exc

    def choose_layout(self, output_shapes: list[list[Any]]) -> Layout:
        detected = yolo.detect_layout(output_shapes)
        if self.config.layout == AUTO_LAYOUT:
            if detected is None:
                raise EngineUnavailableError(
                    self.stage,
                    str(self.path),
                    f"the output shapes {output_shapes} do not tell the YOLO layout; set "
                    "layout to yolov8, yolov5 or yolov4",
                )
            return detected
        try:
            layout = Layout(self.config.layout)
        except ValueError:
            raise EngineUnavailableError(
                self.stage,
                str(self.config.layout),
                "unknown layout; set layout to auto, yolov8, yolov5 or yolov4",
            ) from None
        if detected is not None and (detected is Layout.YOLOV4) != (layout is Layout.YOLOV4):
            raise EngineUnavailableError(
                self.stage,
                str(self.path),
                f"layout {layout.value} does not fit the output shapes {output_shapes}; "
                f"they look like {detected.value}, so set layout to auto or {detected.value}",
            )
        return layout

    def choose_input_size(self, input_shape: list[Any], metadata: dict[str, str]) -> int:
        if self.config.input_size:
            return self.config.input_size
        sides = input_shape[2:4] if self.channels_first else input_shape[1:3]
        if len(sides) == 2 and all(isinstance(side, int) for side in sides):
            if sides[0] != sides[1]:
                raise EngineUnavailableError(
                    self.stage,
                    str(self.path),
                    f"the model input is {sides[0]}x{sides[1]}, but the detector letterboxes "
                    "to a square; use a model with a square input",
                )
            return sides[0]
        try:
            sizes = ast.literal_eval(metadata.get("imgsz", "None"))
        except (ValueError, SyntaxError):
            sizes = None
        if isinstance(sizes, list | tuple) and sizes and isinstance(sizes[0], int):
            return sizes[0]
        return yolo.DEFAULT_INPUT_SIZE[self.layout]

    def choose_class_names(
        self, bundled: bool, metadata: dict[str, str], class_count: int | None
    ) -> tuple[list[str], str]:
        metadata_names = names_from_metadata(metadata)
        if self.config.class_names:
            names = list(self.config.class_names)
            note = f"{len(names)} classes from the config field class_names"
        elif bundled:
            names = list(models.NUDENET_CLASS_NAMES)
            note = BUNDLED_CLASSES_NOTE
        elif metadata_names:
            names = metadata_names
            note = f"{len(names)} classes from the model file's metadata"
        else:
            names = list(COCO_CLASS_NAMES)
            note = "80 COCO classes"
        if class_count is not None and len(names) != class_count:
            raise EngineUnavailableError(
                self.stage,
                str(self.path),
                f"the model outputs {class_count} classes, but {len(names)} class names are "
                "set; set class_names to the model's class names in output order",
            )
        return names, note

    def detect(self, image: np.ndarray, source: str) -> list[Detection]:
        canvas, box = yolo.letterbox(image, self.input_size, yolo.PAD_VALUE[self.layout])
        tensor = canvas.astype(self.input_dtype) / self.input_dtype(255.0)
        if self.channels_first:
            tensor = tensor.transpose(2, 0, 1)
        tensor = np.ascontiguousarray(tensor[None])
        try:
            outputs = self.session.run(None, {self.input_name: tensor})
        except onnxruntime_errors() as exc:
            raise StageError(
                self.stage, source, f"onnxruntime failed on {self.path}: {exc}"
            ) from exc

        try:
            candidates = self.decode(outputs)
        except yolo.DecodeError as exc:
            raise StageError(
                self.stage, source, f"cannot decode the output of {self.path}: {exc}"
            ) from exc
        kept = yolo.non_max_suppression(candidates, self.config.iou_threshold)
        frame_boxes = yolo.undo_letterbox(kept.boxes, box)
        return [
            Detection(
                self.class_names[class_id],
                float(score),
                cast("tuple[float, float, float, float]", tuple(map(float, corners))),
            )
            for corners, score, class_id in zip(
                frame_boxes, kept.scores, kept.class_ids, strict=True
            )
            if corners[2] > corners[0] and corners[3] > corners[1]
        ]

    def decode(self, outputs: list[np.ndarray]) -> yolo.Candidates:
        count = len(self.class_names)
        threshold = self.config.score_threshold
        if self.layout is Layout.YOLOV8:
            return yolo.decode_yolov8(outputs[0], count, threshold)
        if self.layout is Layout.YOLOV5:
            return yolo.decode_yolov5(outputs[0], count, threshold)
        return yolo.decode_yolov4(outputs, count, threshold)


class HaarFaceDetector:
    """OpenCV's frontal-face Haar cascade: one class, ``face``, and no confidence."""

    def __init__(self, config: DetectorConfig, stage: str):
        self.config = config
        self.stage = stage
        # OpenCV does not promise that one CascadeClassifier may run in two threads at once.
        self.lock: AbstractContextManager[Any] = threading.Lock()

    def load(self) -> None:
        import cv2

        if self.config.model_path:
            path = models.configured_path(self.stage, "model_path", self.config.model_path)
        else:
            path = models.haar_cascade_path(self.stage)
        try:
            self.cascade = cv2.CascadeClassifier(str(path))
        except cv2.error as exc:
            raise EngineUnavailableError(
                self.stage, str(path), f"OpenCV cannot read the cascade: {exc}"
            ) from exc
        if self.cascade.empty():
            raise EngineUnavailableError(
                self.stage,
                str(path),
                "OpenCV cannot read the file as a Haar cascade; give a cascade XML file",
            )
        self.model_info = {
            "name": path.stem,
            "layout": "haar",
            "classes_note": "OpenCV Haar cascade (one class: face); it gives no confidence, "
            "so every score is 1.0",
        }
        logger.info("Loaded Haar cascade %s", path)

    def detect(self, image: np.ndarray, source: str) -> list[Detection]:
        import cv2

        gray = cv2.equalizeHist(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY))
        faces = self.cascade.detectMultiScale(
            gray,
            scaleFactor=HAAR_SCALE_FACTOR,
            minNeighbors=HAAR_MIN_NEIGHBORS,
            minSize=(HAAR_MIN_SIZE_PX, HAAR_MIN_SIZE_PX),
        )
        return [
            Detection("face", 1.0, (float(x), float(y), float(x + width), float(y + height)))
            for x, y, width, height in faces
        ]


class Detector(Protocol):
    """A detection engine as DetectorStage calls it: OnnxYoloDetector or HaarFaceDetector."""

    lock: AbstractContextManager[Any]
    model_info: dict[str, str]

    def load(self) -> None: ...

    def detect(self, image: np.ndarray, source: str) -> list[Detection]: ...


DETECTORS: dict[str, Callable[[DetectorConfig, str], Detector]] = {
    "onnx": OnnxYoloDetector,
    "haar": HaarFaceDetector,
}


class DetectorStage(Stage[DetectorConfig]):
    """Request ``{request_id, frame, clip_index, frame_index}`` -> detections in the frame."""

    name = "object-detector"
    config_class = DetectorConfig

    def load(self) -> None:
        detector_class = DETECTORS.get(self.config.engine)
        if detector_class is None:
            raise EngineUnavailableError(
                self.name,
                str(self.config.engine),
                f"unknown detection engine; set engine to one of: {', '.join(DETECTORS)}",
            )
        detector: Detector = detector_class(self.config, self.name)
        detector.load()
        self.detector = detector

    def run(self, request: dict[str, Any], invocation: Invocation) -> dict[str, Any]:
        frame_uri = require(request, "frame", self.name)
        clip_index = require(request, "clip_index", self.name, int)
        frame_index = require(request, "frame_index", self.name, int)
        local = invocation.scratch / "frame.jpg"
        invocation.store.get_file(frame_uri, local)

        image = read_image(local, self.name, frame_uri)
        # The stage serves concurrent invocations from threads; waiting for the lock is not
        # counted as compute time.
        with self.detector.lock, EngineTimer(invocation.telemetry):
            detections = self.detector.detect(image, frame_uri)

        found = [detection.to_dict() for detection in detections]
        document = {
            "frame": frame_uri,
            "width": image.shape[1],
            "height": image.shape[0],
            "model": self.detector.model_info,
            "detections": found,
        }
        key = invocation.key(self.name, f"detections_{clip_index}_{frame_index}.json")
        uri = invocation.store.put_bytes(key, json.dumps(document, indent=1).encode("utf-8"))
        logger.info("Found %d objects in %s", len(found), frame_uri)
        return {
            "detections_uri": uri,
            "detections": found,
            "model": self.detector.model_info,
            "clip_index": clip_index,
            "frame_index": frame_index,
        }


def read_image(path: Path, stage: str, source: str) -> np.ndarray:
    """Decode an image file to an RGB uint8 array (H, W, 3).

    Raises:
        MediaError: the file is empty or not an image OpenCV can decode (bad input).
    """
    import cv2

    data = np.fromfile(path, dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise MediaError(
            stage,
            source,
            f"the file ({data.size} bytes) is not an image OpenCV can decode; send a jpg frame",
        )
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def names_from_metadata(metadata: dict[str, str]) -> list[str] | None:
    """Return the class names that Ultralytics exports store as ``names`` metadata, if any."""
    raw = metadata.get("names")
    if not raw:
        return None
    try:
        names = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        logger.warning("Ignoring unreadable class names in the model metadata: %.80s", raw)
        return None
    if isinstance(names, dict) and sorted(names) == list(range(len(names))):
        return [str(names[index]) for index in range(len(names))]
    if isinstance(names, list):
        return [str(name) for name in names]
    return None


def onnxruntime_errors() -> tuple[type[Exception], ...]:
    """Return onnxruntime's exception classes, which derive from Exception directly."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    names: tuple[str, ...] = (
        "Fail",
        "InvalidArgument",
        "InvalidGraph",
        "InvalidProtobuf",
        "NoSuchFile",
    )
    names += ("NoModel", "NotImplemented", "RuntimeException", "EngineError")
    found = tuple(getattr(state, name) for name in names if hasattr(state, name))
    return (*found, RuntimeError)
