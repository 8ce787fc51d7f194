"""YOLO decoders, letterbox and NMS on synthetic tensors whose boxes are known."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.stages import yolo
from pipeline.stages.yolo import Candidates, DecodeError, Layout

FRAME_BOX = np.array([[100.0, 50.0, 200.0, 150.0]])
"""A box in the pixels of a 480x360 frame, the sample's frame size."""


def frame_480x360() -> np.ndarray:
    return np.zeros((360, 480, 3), dtype=np.uint8)


def to_input_xywh(box: np.ndarray, fitted: yolo.Letterbox) -> np.ndarray:
    """Return centre x, centre y, width, height of a frame box in letterboxed input pixels."""
    x1, y1, x2, y2 = box[0] * fitted.scale
    x1, x2 = x1 + fitted.pad_x, x2 + fitted.pad_x
    y1, y2 = y1 + fitted.pad_y, y2 + fitted.pad_y
    return np.array([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], dtype=np.float32)


def test_letterbox_centres_frame():
    canvas, fitted = yolo.letterbox(frame_480x360(), 320, 114)

    assert canvas.shape == (320, 320, 3)
    assert fitted.scale == pytest.approx(320 / 480)
    assert (fitted.pad_x, fitted.pad_y) == (0, 40)
    assert (canvas[:40] == 114).all()
    assert (canvas[280:] == 114).all()
    assert (canvas[40:280] == 0).all()


def test_undo_letterbox_clips_to_frame():
    _, fitted = yolo.letterbox(frame_480x360(), 320, 114)
    boxes = np.array([[-10.0, 20.0, 400.0, 330.0]])

    frame = yolo.undo_letterbox(boxes, fitted)

    assert frame[0].tolist() == pytest.approx([0.0, 0.0, 480.0, 360.0])


def test_yolov8_box_returns_in_frame_pixels():
    _, fitted = yolo.letterbox(frame_480x360(), 320, 114)
    class_count, anchors = 18, 2100
    output = np.zeros((1, 4 + class_count, anchors), dtype=np.float32)
    output[0, 0:4, 700] = to_input_xywh(FRAME_BOX, fitted)
    output[0, 4 + 12, 700] = 0.9
    output[0, 4 + 3, 700] = 0.4
    output[0, 0:4, 5] = [10, 10, 5, 5]
    output[0, 4 + 1, 5] = 0.1

    found = yolo.decode_yolov8(output, class_count, score_threshold=0.25)
    frame = yolo.undo_letterbox(found.boxes, fitted)

    assert found.class_ids.tolist() == [12]
    assert found.scores.tolist() == pytest.approx([0.9])
    assert frame[0].tolist() == pytest.approx(FRAME_BOX[0].tolist(), abs=1e-3)


def test_yolov5_score_is_objectness_times_class():
    _, fitted = yolo.letterbox(frame_480x360(), 640, 114)
    class_count = 80
    output = np.zeros((1, 25200, 5 + class_count), dtype=np.float32)
    output[0, 1234, 0:4] = to_input_xywh(FRAME_BOX, fitted)
    output[0, 1234, 4] = 0.8
    output[0, 1234, 5 + 16] = 0.9
    output[0, 99, 0:4] = [50, 50, 20, 20]
    output[0, 99, 4] = 0.2
    output[0, 99, 5 + 2] = 0.9

    found = yolo.decode_yolov5(output, class_count, score_threshold=0.25)
    frame = yolo.undo_letterbox(found.boxes, fitted)

    assert found.class_ids.tolist() == [16]
    assert found.scores.tolist() == pytest.approx([0.72])
    assert frame[0].tolist() == pytest.approx(FRAME_BOX[0].tolist(), abs=1e-3)


def yolov4_outputs(class_count: int = 80) -> list[np.ndarray]:
    return [
        np.zeros((1, 416 // stride, 416 // stride, 3, 5 + class_count), dtype=np.float32)
        for stride in yolo.YOLOV4_STRIDES
    ]


def test_yolov4_anchor_box_returns_in_frame_pixels():
    image = np.zeros((624, 832, 3), dtype=np.uint8)
    _, fitted = yolo.letterbox(image, 416, 128)
    outputs = yolov4_outputs()
    # Stride 16, cell x=10, y=12, third anchor (72 x 146 px): sigmoid(0) = 0.5 puts the centre
    # in the middle of the cell, and exp(log 2) doubles the anchor width.
    outputs[1][0, 12, 10, 2, 0:4] = [0.0, 0.0, math.log(2.0), 0.0]
    outputs[1][0, 12, 10, 2, 4] = 0.9
    outputs[1][0, 12, 10, 2, 5 + 7] = 0.8

    found = yolo.decode_yolov4(outputs, 80, score_threshold=0.25)
    frame = yolo.undo_letterbox(found.boxes, fitted)

    centre_x, centre_y = 10.5 * 16, 12.5 * 16
    expected_input = [centre_x - 72, centre_y - 73, centre_x + 72, centre_y + 73]
    assert found.class_ids.tolist() == [7]
    assert found.scores.tolist() == pytest.approx([0.72])
    assert found.boxes[0].tolist() == pytest.approx(expected_input, abs=1e-3)
    assert (fitted.scale, fitted.pad_x, fitted.pad_y) == (0.5, 0, 52)
    assert frame[0].tolist() == pytest.approx([192.0, 150.0, 480.0, 442.0], abs=1e-3)


def test_yolov4_xy_scale_reaches_past_cell():
    outputs = yolov4_outputs(class_count=1)
    # A saturated sigmoid with xy_scale 1.2 gives 1.2 - 0.1 = 1.1 cells, not 1.0.
    outputs[0][0, 4, 3, 0, 0:4] = [30.0, -30.0, 0.0, 0.0]
    outputs[0][0, 4, 3, 0, 4:6] = [1.0, 1.0]

    found = yolo.decode_yolov4(outputs, 1, score_threshold=0.5)

    centre_x = (found.boxes[0, 0] + found.boxes[0, 2]) / 2
    centre_y = (found.boxes[0, 1] + found.boxes[0, 3]) / 2
    width = found.boxes[0, 2] - found.boxes[0, 0]
    assert centre_x == pytest.approx((3 + 1.1) * 8, abs=1e-3)
    assert centre_y == pytest.approx((4 - 0.1) * 8, abs=1e-3)
    assert width == pytest.approx(12.0, abs=1e-3)


def test_yolov4_needs_three_outputs():
    with pytest.raises(DecodeError, match="needs 3 outputs, not 2"):
        yolo.decode_yolov4(yolov4_outputs()[:2], 80, score_threshold=0.25)


def test_yolov8_rejects_wrong_class_count():
    output = np.zeros((1, 84, 100), dtype=np.float32)

    with pytest.raises(DecodeError, match=r"needs 4 \+ 18 rows .* not shape \(1, 84, 100\)"):
        yolo.decode_yolov8(output, 18, score_threshold=0.25)


def test_yolov5_rejects_missing_dimension():
    with pytest.raises(DecodeError, match="yolov5 output needs 3 dimensions"):
        yolo.decode_yolov5(np.zeros(85, dtype=np.float32), 80, score_threshold=0.25)


def candidates(boxes: list[list[float]], scores: list[float], class_ids: list[int]) -> Candidates:
    return Candidates(
        np.array(boxes, dtype=np.float32),
        np.array(scores, dtype=np.float32),
        np.array(class_ids, dtype=np.int64),
    )


def test_nms_keeps_best_overlapping_box():
    found = candidates(
        [[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], [0.6, 0.9, 0.7], [0, 0, 0]
    )

    kept = yolo.non_max_suppression(found, iou_threshold=0.45)

    assert kept.scores.tolist() == pytest.approx([0.9, 0.7])
    assert kept.boxes[0].tolist() == [1, 1, 11, 11]


def test_nms_keeps_overlaps_of_other_classes():
    found = candidates([[0, 0, 10, 10], [1, 1, 11, 11]], [0.6, 0.9], [0, 1])

    kept = yolo.non_max_suppression(found, iou_threshold=0.45)

    assert kept.class_ids.tolist() == [1, 0]


def test_nms_of_nothing_is_empty():
    kept = yolo.non_max_suppression(Candidates.empty(), iou_threshold=0.45)

    assert kept.boxes.shape == (0, 4)


def test_nms_matches_opencv():
    import cv2

    generator = np.random.default_rng(7)
    corners = generator.uniform(0, 200, size=(300, 2))
    sizes = generator.uniform(5, 60, size=(300, 2))
    boxes = np.concatenate([corners, corners + sizes], axis=1)
    scores = generator.uniform(0.3, 1.0, size=300)
    xywh = np.concatenate([corners, sizes], axis=1)

    ours = yolo.suppress(boxes, scores, iou_threshold=0.4)
    theirs = cv2.dnn.NMSBoxes(xywh.tolist(), scores.tolist(), 0.0, 0.4)

    assert sorted(ours) == sorted(int(index) for index in np.ravel(theirs))


@pytest.mark.parametrize(
    ("shapes", "layout"),
    [
        ([[1, 22, "anchors"]], Layout.YOLOV8),
        ([[1, 84, 8400]], Layout.YOLOV8),
        ([[1, 25200, 85]], Layout.YOLOV5),
        ([["batch", "anchors", 85]], Layout.YOLOV5),
        ([[1, 52, 52, 3, 85], [1, 26, 26, 3, 85], [1, 13, 13, 3, 85]], Layout.YOLOV4),
        ([["batch", "rows", "columns"]], None),
        ([[1, 100, 4], [1, 100]], None),
    ],
)
def test_detect_layout_from_shapes(shapes, layout):
    assert yolo.detect_layout(shapes) is layout


def test_class_count_from_shapes():
    assert yolo.class_count_from_shapes(Layout.YOLOV8, [[1, 22, "n"]]) == 18
    assert yolo.class_count_from_shapes(Layout.YOLOV5, [[1, 25200, 85]]) == 80
    assert yolo.class_count_from_shapes(Layout.YOLOV4, [[1, 52, 52, 3, 85]] * 3) == 80
    assert yolo.class_count_from_shapes(Layout.YOLOV5, [[1, "n", "c"]]) is None
