"""``blazeface``: MediaPipe's BlazeFace face detector (its two TFLite models, shipped in
``kpbench_plugins/data``, see the README there), run by LiteRT: 2-2.5 ms a photo on a busy 2-core
CPU with the default short-range model (6 ms with the full-range one; mtcnn: 50-100 ms).

``det.detect_all(image)`` lists every face found, best score first, each a dict::

    {"box": (x0, y0, side),        # square crop box (pixel-edge coordinates), margin included
     "raw_box": (x1, y1, x2, y2),  # BlazeFace's own rectangle
     "score": float,
     "landmarks": (6, 2) array}    # subject's right eye, left eye, nose tip, mouth centre,
                                   # right ear tragion, left ear tragion

``det(image, points)`` returns the box of the face that matches the annotation, or ``None`` (a
miss); the square box, margin, alignment and matching are the core's (:class:`kpbench.FaceDetector`).

The pipeline is MediaPipe's face_detection graph: the photo letterboxed (centred, aspect ratio
kept, black padding) to the model's square input, RGB scaled to [-1, 1]; SSD anchors
(:func:`ssd_anchors`); boxes and keypoints decoded against them (:func:`decode`); scores
``sigmoid(clip(raw, -100, 100))``; weighted non-maximum suppression (:func:`weighted_nms`); the
result mapped back through the letterbox to the photo's pixels. Calibrated like ``mtcnn``
(``kpbench calibrate --detector blazeface``): see :class:`BlazeFaceDetector` for the numbers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

import kpbench
from kpbench.faces import FaceDetector, RawFace
from kpbench.io import fd_to_devnull

DATA = Path(__file__).parent / "data"

# name -> (file, input side, SSD strides, anchors per cell and layer): MediaPipe's
# face_detection_{short,full}_range graphs (SsdAnchorsCalculatorOptions).
MODELS = {
    "short": ("face_detection_short_range.tflite", 128, (8, 16, 16, 16), 2),
    "full": ("face_detection_full_range.tflite", 192, (4,), 1),
}
NMS_IOU = 0.3  # MediaPipe's min_suppression_threshold (both graphs)

# The face box relative to BlazeFace's rectangle, per model, from
#   kpbench calibrate --detector blazeface --dataset folder68:../shared/data/youtube-faces-68  (0.9983, 0.0085, 0.0593)
#   kpbench calibrate --detector blazeface --dataset ibug:../shared/data/300w-helen-train  (0.9814, 0.0085, 0.0545)
# and the same two with --detector-options '{model: full}'  (0.9431, 0.0167, 0.1088), (0.9162, 0.0075, 0.0934)
# (400 faces of each, seed 0, the other options at their defaults; the medians averaged over the two
# sets). Robust spread after it: short 7.8 % in log side, 2.2-3.0 % of the side in x, 3.7-3.8 % in y
# (mtcnn's: 7.1-7.9 %, 2.9-3.9 %, 3.0-3.5 %); full 8.2-8.6 %, 8.1-10.9 % in x (its box follows the
# head's turn), 3.2-3.5 % in y.
CALIBRATION = {
    "short": {"scale": 0.9899, "shift_x": 0.0085, "shift_y": 0.0569},
    "full": {"scale": 0.9297, "shift_x": 0.0121, "shift_y": 0.1011},
}
MIN_SCORE = {"short": 0.6, "full": 0.5}  # see BlazeFaceDetector


def ssd_anchors(size: int, strides, per_layer: int) -> np.ndarray:
    """(N, 2) anchor centres (x, y) in [0, 1] of MediaPipe's SSD anchors with a fixed anchor size
    of 1 (so only the centres matter) and offset 0.5: consecutive layers with the same stride
    share one grid of ``ceil(size / stride)`` cells a side, ``per_layer`` anchors per cell for each
    of them; cells row by row, a cell's anchors together."""
    out, i = [], 0
    while i < len(strides):
        j = i
        while j < len(strides) and strides[j] == strides[i]:
            j += 1
        cells = -(-size // strides[i])
        c = (np.arange(cells) + 0.5) / cells
        grid = np.stack(np.meshgrid(c, c), axis=-1).reshape(-1, 1, 2)  # (y, x) row by row, as (x, y)
        out.append(np.repeat(grid, per_layer * (j - i), axis=1).reshape(-1, 2))
        i = j
    return np.concatenate(out).astype(np.float32)


def decode(regressors: np.ndarray, logits: np.ndarray, anchors: np.ndarray, size: int):
    """Raw model outputs -> (boxes (N, 4) as x1, y1, x2, y2; keypoints (N, 6, 2); scores (N,)), in
    the model's input square scaled to [0, 1]. ``regressors`` (N, 16): box centre x, y, width,
    height, then six keypoints x, y, all in input pixels relative to the anchor centre (the
    sizes absolute); ``logits`` (N,) or (N, 1)."""
    r = regressors.reshape(-1, 16) / size
    centre = r[:, :2] + anchors
    half = r[:, 2:4] / 2
    boxes = np.concatenate([centre - half, centre + half], axis=1)
    keypoints = r[:, 4:].reshape(-1, 6, 2) + anchors[:, None, :]
    return boxes, keypoints, score(logits.reshape(-1))


def score(logits: np.ndarray) -> np.ndarray:
    """MediaPipe's detection score of a logit: sigmoid(clip(logit, -100, 100)), in float64."""
    return 1.0 / (1.0 + np.exp(-np.clip(logits.astype(np.float64), -100.0, 100.0)))


def _iou(boxes: np.ndarray, box: np.ndarray) -> np.ndarray:
    """IoU of each of (N, 4) rectangles with one."""
    wh = np.clip(np.minimum(boxes[:, 2:], box[2:]) - np.maximum(boxes[:, :2], box[:2]), 0, None)
    inter = wh[:, 0] * wh[:, 1]
    area = np.prod(boxes[:, 2:] - boxes[:, :2], axis=1)
    union = area + np.prod(box[2:] - box[:2]) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def weighted_nms(boxes: np.ndarray, keypoints: np.ndarray, scores: np.ndarray, threshold: float = NMS_IOU):
    """MediaPipe's weighted non-maximum suppression: the best remaining detection and every
    remaining one overlapping it by IoU > ``threshold`` become one detection, their boxes and
    keypoints averaged with the scores as weights, the best score kept; repeated until none is
    left. Returns (boxes, keypoints, scores), best first."""
    order = np.argsort(-scores, kind="stable")
    boxes, keypoints, scores = boxes[order], keypoints[order], scores[order]
    out_b, out_k, out_s = [], [], []
    while len(scores):
        group = _iou(boxes, boxes[0]) > threshold
        group[0] = True
        w = scores[group][:, None]
        out_b.append((boxes[group] * w).sum(0) / w.sum())
        out_k.append((keypoints[group] * w[:, :, None]).sum(0) / w.sum())
        out_s.append(scores[0])
        boxes, keypoints, scores = boxes[~group], keypoints[~group], scores[~group]
    if not out_s:
        return np.zeros((0, 4)), np.zeros((0, 6, 2)), np.zeros(0)
    return np.array(out_b), np.array(out_k), np.array(out_s)


def letterbox(rgb: np.ndarray, size: int):
    """(H, W, 3) uint8 -> ((1, size, size, 3) float32 in [-1, 1], (ox, oy, fx, fy)): the image
    resized to fit the square (aspect ratio kept; PIL's box reduction by the whole factor, then
    bilinear), centred, black padding around. A point at (u, v) of the square scaled to [0, 1] is
    at ``((u * size - ox) * fx, (v * size - oy) * fy)`` in the image's pixels (pixel-edge
    coordinates)."""
    from PIL import Image

    h, w = rgb.shape[:2]
    rw, rh = max(1, round(w * size / max(h, w))), max(1, round(h * size / max(h, w)))
    ox, oy = (size - rw) // 2, (size - rh) // 2
    img, k = Image.fromarray(rgb), max(h, w) // size
    if k > 1:
        img = img.reduce(k)  # a box filter by a whole factor first: as smooth, twice as fast
    small = np.asarray(img.resize((rw, rh), Image.BILINEAR), dtype=np.float32)
    x = np.full((1, size, size, 3), -1.0, dtype=np.float32)
    x[0, oy:oy + rh, ox:ox + rw] = small * np.float32(2 / 255) - 1
    return x, (ox, oy, w / rw, h / rh)


class BlazeFaceDetector(FaceDetector):
    """MediaPipe's BlazeFace (LiteRT): crops as ``gt-box`` cuts them, at the same margin.

    Options: those of every :class:`kpbench.FaceDetector` (margin, scale, shift_x, shift_y,
    min_iou, min_score, align), with
      model: "short" (default) or "full": MediaPipe's short-range model (128 px input, faces
        within about 2 m of the camera) or its full-range one (192 px, smaller faces in wider
        shots). On 2809 annotated 300-W and YouTube faces (a face about a third of the photo's
        side) "short" finds every face, with the tighter box, in less than half the time; "full"
        scores them lower (1 % below 0.48) and misses 43 (1.5 %) at its min_score.
      scale, shift_x, shift_y: default the model's CALIBRATION, measured by ``kpbench calibrate
        --detector blazeface`` (``--detector-options '{model: full}'``).
      min_iou: default 0.4: correct faces scored IoU 0.52-0.98 (median 0.80; full: 0.46, 0.67),
        the other faces found in the same photos at most 0.29 (full: 0.25).
      min_score: default the model's MIN_SCORE, also applied before the suppression (as
        MediaPipe's min_score_thresh): short 0.6 (MediaPipe's 0.5 keeps 62 % more extra faces;
        the lowest true face scored 0.67), full 0.5 (0.6 would miss 6 % of the faces).
      threads: LiteRT's num_threads, a whole number >= 1; default torch's thread count when the
        model loads (what the keypoint model runs on, so ``kpbench predict`` and
        ``benchmarks/photo_path.py`` detect alike): on a quiet 2-core CPU 2 threads took the HELEN
        photo path 0.79-1.08x the time of 1 (``benchmarks/detector_threads.py``, four runs; faster
        in three); on a busy one 1 can be faster (2.5 against 3.9 ms a 480 px photo).
      align: the crop turns with the line between BlazeFace's two eye keypoints.
    Needs ``ai-edge-litert``; the model loads on first use, once."""

    calibration = CALIBRATION["short"]
    min_score = MIN_SCORE["short"]
    cache_boxes = False  # a few milliseconds a photo: boxes need no disk cache

    def __init__(
        self,
        margin: float = 0.15,
        scale: float | None = None,
        shift_x: float | None = None,
        shift_y: float | None = None,
        min_iou: float = 0.4,
        min_score: float | None = None,
        model: str = "short",
        threads: int | None = None,
        align: bool = False,
    ):
        if not isinstance(model, str) or model not in MODELS:
            raise kpbench.KpbenchError(f"blazeface: model must be one of {', '.join(MODELS)}, got {model!r}")
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise kpbench.KpbenchError(f"blazeface: threads must be a whole number >= 1, got {threads!r}")
        cal = CALIBRATION[model]
        super().__init__(margin, cal["scale"] if scale is None else scale,
                         cal["shift_x"] if shift_x is None else shift_x, cal["shift_y"] if shift_y is None else shift_y,
                         min_iou, MIN_SCORE[model] if min_score is None else min_score, align)
        self.model, self.threads = model, threads
        file, self.size, strides, per_layer = MODELS[model]
        self.path = DATA / file
        self.anchors = ssd_anchors(self.size, strides, per_layer)
        self._net = None

    def _interpreter(self):
        if self._net is None:
            try:
                from ai_edge_litert.interpreter import Interpreter
            except ImportError:
                raise kpbench.KpbenchError("blazeface needs ai-edge-litert: pip install ai-edge-litert") from None
            if not self.path.is_file():
                raise kpbench.KpbenchError(f"blazeface: model file {self.path} is missing; reinstall kpbench")
            from kpbench.runtime import default_threads

            net = Interpreter(model_path=str(self.path), num_threads=self.threads or default_threads())
            with fd_to_devnull(2):
                net.allocate_tensors()
            outputs = sorted(net.get_output_details(), key=lambda d: -int(d["shape"][-1]))  # 16 coords, 1 score
            self._io = (net.get_input_details()[0]["index"], outputs[0]["index"], outputs[1]["index"])
            self._net = net
        return self._net

    def raw_faces(self, rgb: np.ndarray) -> list[RawFace]:
        net = self._interpreter()
        if min(rgb.shape[:2]) < 1:
            return []
        x, (ox, oy, fx, fy) = letterbox(rgb, self.size)
        inp, reg, cls = self._io
        net.set_tensor(inp, x)
        net.invoke()
        logits = net.get_tensor(cls).reshape(-1)
        keep = score(logits) >= self.min_score  # before the suppression, as MediaPipe's min_score_thresh
        if not keep.any():
            return []
        boxes, marks, scores = decode(net.get_tensor(reg).reshape(-1, 16)[keep], logits[keep],
                                      self.anchors[keep], self.size)
        boxes, marks, scores = weighted_nms(boxes, marks, scores)
        off, f = np.array([ox, oy]), np.array([fx, fy])
        boxes = ((boxes.reshape(-1, 2, 2) * self.size - off) * f).reshape(-1, 4)
        marks = (marks * self.size - off) * f
        return [RawFace(tuple(boxes[i]), float(scores[i]), marks[i]) for i in range(len(scores))]


@kpbench.hookimpl
def kpbench_detectors():
    return [
        kpbench.DetectorSpec(
            "blazeface",
            BlazeFaceDetector,
            "MediaPipe BlazeFace face detector (LiteRT, models shipped), fast, calibrated to the annotated face box",
        )
    ]
