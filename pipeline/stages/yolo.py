"""Pre- and post-processing of YOLO-family ONNX detectors, in numpy only.

The detector letterboxes a frame to the model's square input and runs the model. This module
then decodes the raw output of one of three layouts into boxes in input pixels and drops low
scores. Per-class non-maximum suppression follows, and the boxes go back to frame pixels:

- ``yolov8``: one output ``(1, 4 + nc, N)`` of centre x, centre y, width, height and the
  class scores, without objectness (Ultralytics YOLOv8 exports).
- ``yolov5``: one output ``(1, N, 5 + nc)`` of centre x, centre y, width, height,
  objectness and the class scores (Ultralytics YOLOv5 exports).
- ``yolov4``: three outputs ``(1, S, S, 3, 5 + nc)`` with strides 8, 16 and 32 and three
  anchors each, decoded as the ONNX model zoo's YOLOv4 does (the model VideoSearcher ran).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

import numpy as np

logger = logging.getLogger(__name__)


class Layout(StrEnum):
    """The output layout of a YOLO model, named for the family that introduced it."""

    YOLOV8 = "yolov8"
    YOLOV5 = "yolov5"
    YOLOV4 = "yolov4"


DEFAULT_INPUT_SIZE = {Layout.YOLOV8: 640, Layout.YOLOV5: 640, Layout.YOLOV4: 416}
"""Input side in pixels when neither the config nor the model file gives one."""

PAD_VALUE = {Layout.YOLOV8: 114, Layout.YOLOV5: 114, Layout.YOLOV4: 128}
"""Grey level of the letterbox border each family was trained with (Ultralytics, zoo)."""

YOLOV4_ANCHORS = np.array(
    [12, 16, 19, 36, 40, 28, 36, 75, 76, 55, 72, 146, 142, 110, 192, 243, 459, 401],
    dtype=np.float32,
).reshape(3, 3, 2)
"""Anchor width and height in input pixels: three per output, smallest stride first."""

YOLOV4_STRIDES = (8, 16, 32)
YOLOV4_XY_SCALE = (1.2, 1.1, 1.05)
"""Scale of the sigmoid of the centre offsets per output, so a centre can pass a cell edge."""


class DecodeError(ValueError):
    """A model output does not have the shape its layout needs."""


@dataclass(frozen=True)
class Letterbox:
    """The fit of a frame into the square input: ``input = frame * scale + pad``."""

    scale: float
    pad_x: int
    pad_y: int
    frame_width: int
    frame_height: int


@dataclass(frozen=True)
class Candidates:
    """Decoded boxes ``(n, 4)`` as x1, y1, x2, y2 in input pixels, with scores and class ids."""

    boxes: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray

    @classmethod
    def empty(cls) -> Candidates:
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))

    def select(self, keep: np.ndarray) -> Candidates:
        return Candidates(self.boxes[keep], self.scores[keep], self.class_ids[keep])


def letterbox(image: np.ndarray, size: int, pad_value: int) -> tuple[np.ndarray, Letterbox]:
    """Resize ``image`` (H, W, 3) to fit a ``size`` square, keeping its aspect, and centre it."""
    import cv2

    height, width = image.shape[:2]
    scale = min(size / width, size / height)
    new_width = max(1, round(width * scale))
    new_height = max(1, round(height * scale))
    resized = cv2.resize(image, (new_width, new_height), interpolation=cv2.INTER_LINEAR)

    pad_x = (size - new_width) // 2
    pad_y = (size - new_height) // 2
    canvas = np.full((size, size, 3), pad_value, dtype=np.uint8)
    canvas[pad_y : pad_y + new_height, pad_x : pad_x + new_width] = resized
    return canvas, Letterbox(scale, pad_x, pad_y, width, height)


def undo_letterbox(boxes: np.ndarray, box: Letterbox) -> np.ndarray:
    """Map x1, y1, x2, y2 boxes from input pixels to frame pixels, clipped to the frame."""
    frame = boxes.astype(np.float64).copy()
    frame[:, [0, 2]] = (frame[:, [0, 2]] - box.pad_x) / box.scale
    frame[:, [1, 3]] = (frame[:, [1, 3]] - box.pad_y) / box.scale
    frame[:, [0, 2]] = frame[:, [0, 2]].clip(0, box.frame_width)
    frame[:, [1, 3]] = frame[:, [1, 3]].clip(0, box.frame_height)
    return frame


def centre_to_corners(xywh: np.ndarray) -> np.ndarray:
    half = xywh[:, 2:4] / 2.0
    return np.concatenate([xywh[:, 0:2] - half, xywh[:, 0:2] + half], axis=1)


def best_class(class_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    class_ids = class_scores.argmax(axis=1)
    return class_ids, class_scores[np.arange(len(class_ids)), class_ids]


def decode_yolov8(output: np.ndarray, class_count: int, score_threshold: float) -> Candidates:
    """Decode one image's ``(1, 4 + nc, N)`` YOLOv8 output."""
    rows = squeeze_batch(output, 2, Layout.YOLOV8)
    if rows.shape[0] != 4 + class_count:
        raise DecodeError(
            f"a yolov8 output needs 4 + {class_count} rows (box and class scores), "
            f"not shape {output.shape}"
        )
    table = rows.T
    class_ids, scores = best_class(table[:, 4:])
    keep = scores >= score_threshold
    boxes = centre_to_corners(table[keep, 0:4])
    return Candidates(boxes, scores[keep], class_ids[keep])


def decode_yolov5(output: np.ndarray, class_count: int, score_threshold: float) -> Candidates:
    """Decode one image's ``(1, N, 5 + nc)`` YOLOv5 output; a score is objectness x class."""
    table = squeeze_batch(output, 2, Layout.YOLOV5)
    if table.shape[1] != 5 + class_count:
        raise DecodeError(
            f"a yolov5 output needs 5 + {class_count} columns (box, objectness and class "
            f"scores), not shape {output.shape}"
        )
    class_ids, class_scores = best_class(table[:, 5:])
    scores = table[:, 4] * class_scores
    keep = scores >= score_threshold
    boxes = centre_to_corners(table[keep, 0:4])
    return Candidates(boxes, scores[keep], class_ids[keep])


def decode_yolov4(
    outputs: Sequence[np.ndarray],
    class_count: int,
    score_threshold: float,
    anchors: np.ndarray = YOLOV4_ANCHORS,
    strides: Sequence[int] = YOLOV4_STRIDES,
    xy_scale: Sequence[float] = YOLOV4_XY_SCALE,
) -> Candidates:
    """Decode one image's three ``(1, S, S, 3, 5 + nc)`` YOLOv4 outputs.

    A box centre is ``(sigmoid(t) * xy_scale - (xy_scale - 1) / 2 + cell) * stride`` and its
    size ``exp(t) * anchor``. Objectness and class scores are used as the model outputs
    them, because the model zoo's export already applies the sigmoid to both.
    """
    if len(outputs) != len(strides):
        raise DecodeError(f"a yolov4 model needs {len(strides)} outputs, not {len(outputs)}")
    pieces = [
        decode_yolov4_scale(output, class_count, anchors[level], strides[level], xy_scale[level])
        for level, output in enumerate(outputs)
    ]
    table = np.concatenate(pieces, axis=0)
    class_ids, class_scores = best_class(table[:, 5:])
    scores = table[:, 4] * class_scores
    keep = scores >= score_threshold
    boxes = centre_to_corners(table[keep, 0:4])
    return Candidates(boxes, scores[keep], class_ids[keep])


def decode_yolov4_scale(
    output: np.ndarray, class_count: int, anchors: np.ndarray, stride: int, xy_scale: float
) -> np.ndarray:
    """Return the ``(S * S * 3, 5 + nc)`` rows of one output with centres and sizes in pixels."""
    grid = squeeze_batch(output, 4, Layout.YOLOV4)
    rows, columns, anchor_count, channels = grid.shape
    if rows != columns or anchor_count != len(anchors) or channels != 5 + class_count:
        raise DecodeError(
            f"a yolov4 output needs shape (1, S, S, {len(anchors)}, 5 + {class_count}), "
            f"not {output.shape}"
        )
    # cell[y, x] = (x, y), broadcast over the anchors.
    cell_x, cell_y = np.meshgrid(np.arange(columns), np.arange(rows))
    cell = np.stack([cell_x, cell_y], axis=-1)[:, :, None, :].astype(np.float32)

    offsets = 1.0 / (1.0 + np.exp(-grid[..., 0:2]))
    centre = (offsets * xy_scale - 0.5 * (xy_scale - 1.0) + cell) * stride
    size = np.exp(grid[..., 2:4]) * anchors
    decoded = np.concatenate([centre, size, grid[..., 4:]], axis=-1)
    return decoded.reshape(-1, channels)


def squeeze_batch(output: np.ndarray, dims: int, layout: Layout) -> np.ndarray:
    """Return the first image of a batched output with ``dims`` dimensions per image."""
    array = np.asarray(output, dtype=np.float32)
    if array.ndim == dims + 1:
        if array.shape[0] != 1:
            logger.debug("Decoding only the first of %d images in a batch", array.shape[0])
        array = array[0]
    if array.ndim != dims:
        raise DecodeError(
            f"a {layout.value} output needs {dims + 1} dimensions with the batch, "
            f"not shape {np.shape(output)}"
        )
    return array


def non_max_suppression(candidates: Candidates, iou_threshold: float) -> Candidates:
    """Keep the best of each group of same-class boxes that overlap more than ``iou_threshold``.

    The result is sorted by decreasing score.
    """
    kept: list[int] = []
    for class_id in np.unique(candidates.class_ids):
        members = np.flatnonzero(candidates.class_ids == class_id)
        kept.extend(
            members[suppress(candidates.boxes[members], candidates.scores[members], iou_threshold)]
        )
    order = np.array(sorted(kept, key=lambda index: -candidates.scores[index]), dtype=np.int64)
    return candidates.select(order) if len(order) else Candidates.empty()


def suppress(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> list[int]:
    """Return the indices of the boxes that survive greedy NMS, best first."""
    areas = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(
        boxes[:, 3] - boxes[:, 1], 0, None
    )
    order = np.argsort(-scores, kind="stable")
    kept: list[int] = []
    while len(order):
        best = order[0]
        kept.append(int(best))
        rest = order[1:]
        left = np.maximum(boxes[best, 0], boxes[rest, 0])
        top = np.maximum(boxes[best, 1], boxes[rest, 1])
        right = np.minimum(boxes[best, 2], boxes[rest, 2])
        bottom = np.minimum(boxes[best, 3], boxes[rest, 3])
        overlap = np.clip(right - left, 0, None) * np.clip(bottom - top, 0, None)
        union = areas[best] + areas[rest] - overlap
        iou = np.divide(overlap, union, out=np.zeros_like(overlap), where=union > 0)
        order = rest[iou <= iou_threshold]
    return kept


def detect_layout(output_shapes: Sequence[Sequence[int | str | None]]) -> Layout | None:
    """Return the layout that the model's output shapes imply, or None if they are ambiguous.

    Symbolic dimensions (strings or None) count as unknown. One 3-D output is ``yolov8``
    when its middle dimension is the smaller (channels first), ``yolov5`` otherwise.
    """
    if len(output_shapes) == 3 and all(len(shape) == 5 for shape in output_shapes):
        return Layout.YOLOV4
    if len(output_shapes) != 1 or len(output_shapes[0]) != 3:
        return None
    _, middle, last = output_shapes[0]
    if isinstance(middle, int) and isinstance(last, int):
        return Layout.YOLOV8 if middle < last else Layout.YOLOV5
    if isinstance(middle, int):
        return Layout.YOLOV8
    if isinstance(last, int):
        return Layout.YOLOV5
    return None


def class_count_from_shapes(
    layout: Layout, output_shapes: Sequence[Sequence[int | str | None]]
) -> int | None:
    """Return the number of classes that the static output shapes imply, or None."""
    if layout is Layout.YOLOV8:
        channels, offset = output_shapes[0][1], 4
    else:
        channels, offset = output_shapes[0][-1], 5
    return channels - offset if isinstance(channels, int) else None
