"""The object-detector stage on real models: nudenet's YOLOv8n and OpenCV's face cascade."""

from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import pytest
from model_fixtures import ASTRONAUT_FRAME_S, CAT_FRAME_S, extract_frame

from pipeline import models
from pipeline.errors import BadRequestError, EngineUnavailableError, MediaError
from pipeline.stages import stage_class
from pipeline.stages.detector import DetectorConfig, DetectorStage, names_from_metadata
from pipeline.store import LocalStore

FACE_LABELS = {"FACE_FEMALE", "FACE_MALE"}
ASTRONAUT_FACE_REGION = (140.0, 20.0, 280.0, 150.0)
"""x1, y1, x2, y2 in the sample's 480x360 frame that contain the astronaut's face."""


@pytest.fixture(scope="module")
def frames(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("detector-frames")
    not_image = folder / "frame_0_0.jpg"
    not_image.write_text("This is a text file with a jpg name.\n" * 20)
    empty = folder / "empty.jpg"
    empty.write_bytes(b"")
    return {
        "astronaut": extract_frame(folder / "astronaut.jpg", ASTRONAUT_FRAME_S),
        "cat": extract_frame(folder / "cat.jpg", CAT_FRAME_S),
        "not_image": not_image,
        "empty": empty,
    }


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> LocalStore:
    return LocalStore(tmp_path_factory.mktemp("detector-store"))


@pytest.fixture(scope="module")
def yolov8() -> DetectorStage:
    stage = DetectorStage(DetectorConfig(engine="onnx"))
    stage.ensure_loaded()
    return stage


@pytest.fixture(scope="module")
def haar() -> DetectorStage:
    stage = DetectorStage(DetectorConfig(engine="haar"))
    stage.ensure_loaded()
    return stage


def detect(stage: DetectorStage, store: LocalStore, frame: Path, request_id: str):
    uri = store.put_file(f"inputs/{request_id}/{frame.name}", frame)
    request = {"request_id": request_id, "frame": uri, "clip_index": 2, "frame_index": 5}
    return stage.invoke(request, store)


def inside(box: list[float], region: tuple[float, float, float, float]) -> bool:
    centre_x = (box[0] + box[2]) / 2
    centre_y = (box[1] + box[3]) / 2
    return region[0] <= centre_x <= region[2] and region[1] <= centre_y <= region[3]


def test_registry_names_detector_stage():
    assert stage_class("object-detector") is DetectorStage


def test_yolov8_finds_astronaut_face(yolov8, store, frames):
    result = detect(yolov8, store, frames["astronaut"], "r-astro")

    faces = [d for d in result.output["detections"] if d["label"] in FACE_LABELS]
    # The bundled model scores the astronaut's face as FACE_FEMALE at about 0.78.
    assert faces, f"no face among {result.output['detections']}"
    assert faces[0]["score"] >= 0.25
    assert inside(faces[0]["box"], ASTRONAUT_FACE_REGION)
    assert result.telemetry.compute_ms > 0


def test_yolov8_model_info_names_nudenet(yolov8, store, frames):
    result = detect(yolov8, store, frames["astronaut"], "r-model")

    model = result.output["model"]
    assert model["name"] == "nudenet-yolov8n-320"
    assert model["layout"] == "yolov8"
    assert model["classes_note"].startswith("NudeNet YOLOv8n (18 body/face classes)")
    assert yolov8.detector.input_size == 320


def test_yolov8_finds_no_face_on_cat(yolov8, store, frames):
    result = detect(yolov8, store, frames["cat"], "r-cat")

    labels = {d["label"] for d in result.output["detections"]}
    assert not labels & FACE_LABELS


def test_detections_document_written(yolov8, store, frames):
    result = detect(yolov8, store, frames["astronaut"], "r-doc")

    uri = result.output["detections_uri"]
    assert uri.endswith("requests/r-doc/object-detector/detections_2_5.json")
    document = json.loads(store.get_bytes(uri))
    assert document["detections"] == result.output["detections"]
    assert (document["width"], document["height"]) == (480, 360)
    assert document["model"]["layout"] == "yolov8"
    for detection in document["detections"]:
        x1, y1, x2, y2 = detection["box"]
        assert 0 <= x1 < x2 <= 480
        assert 0 <= y1 < y2 <= 360


def test_haar_finds_astronaut_face(haar, store, frames):
    result = detect(haar, store, frames["astronaut"], "r-haar")

    detections = result.output["detections"]
    assert [d["label"] for d in detections] == ["face"]
    assert inside(detections[0]["box"], ASTRONAUT_FACE_REGION)
    assert result.output["model"]["layout"] == "haar"


@pytest.mark.parametrize("name", ["not_image", "empty"])
def test_not_image_raises_media_error(yolov8, store, frames, name):
    uri = store.put_file(f"inputs/bad/{frames[name].name}", frames[name])
    request = {"request_id": "r-bad", "frame": uri, "clip_index": 0, "frame_index": 0}

    with pytest.raises(
        MediaError, match=r"^object-detector: the file .* is not an image"
    ) as caught:
        yolov8.invoke(request, store)

    assert caught.value.bad_input is True
    assert caught.value.input == uri


def test_missing_frame_index_is_bad_request(yolov8, store, frames):
    uri = store.put_file("inputs/astronaut.jpg", frames["astronaut"])
    request = {"request_id": "r-index", "frame": uri, "clip_index": 0}

    with pytest.raises(BadRequestError, match="missing the field 'frame_index'"):
        yolov8.invoke(request, store)


def test_bundled_class_names_match_model():
    import nudenet.nudenet
    import onnxruntime

    session = onnxruntime.InferenceSession(
        str(models.nudenet_model_path()), providers=["CPUExecutionProvider"]
    )
    metadata = session.get_modelmeta().custom_metadata_map

    assert names_from_metadata(metadata) == list(models.NUDENET_CLASS_NAMES)
    assert getattr(nudenet.nudenet, "__labels") == list(models.NUDENET_CLASS_NAMES)


def test_missing_yolov4_file_names_path(tmp_path):
    missing = tmp_path / "yolov4.onnx"
    stage = DetectorStage(DetectorConfig(model_path=str(missing), layout="yolov4"))

    with pytest.raises(EngineUnavailableError, match=re.escape(str(missing))) as caught:
        stage.load()

    assert "does not exist" in str(caught.value)


def test_not_onnx_model_names_path(tmp_path):
    fake = tmp_path / "model.onnx"
    fake.write_text("not a protobuf")
    stage = DetectorStage(DetectorConfig(model_path=str(fake)))

    with pytest.raises(
        EngineUnavailableError, match="cannot load the file as an ONNX model"
    ) as caught:
        stage.load()

    assert caught.value.input == str(fake)


def test_class_names_must_fit_model():
    stage = DetectorStage(DetectorConfig(class_names=["person", "car"]))

    with pytest.raises(EngineUnavailableError, match="outputs 18 classes, but 2 class names"):
        stage.load()


def test_layout_must_fit_outputs():
    stage = DetectorStage(DetectorConfig(layout="yolov4"))

    with pytest.raises(EngineUnavailableError, match="set layout to auto or yolov8"):
        stage.load()


def test_unknown_engine_lists_engines():
    with pytest.raises(EngineUnavailableError, match="one of: onnx, haar"):
        DetectorStage(DetectorConfig(engine="yolo")).load()


def test_threshold_out_of_range_rejected():
    with pytest.raises(ValueError, match="score_threshold must be between 0 and 1, not 1.5"):
        DetectorConfig(score_threshold=1.5)


def test_haar_missing_cascades_explained(tmp_path, monkeypatch):
    monkeypatch.setattr(cv2.data, "haarcascades", str(tmp_path) + "/")

    with pytest.raises(EngineUnavailableError, match=r"opencv-python-headless 5\.x has none"):
        DetectorStage(DetectorConfig(engine="haar")).load()
