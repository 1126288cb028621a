"""What every face detector that finds faces shares, so that a detector plugin only detects.

A plugin subclasses :class:`FaceDetector` and writes ``raw_faces(rgb)``: its rectangles, scores
and (when it has them) landmarks with the two eyes first. The core does the rest, once for every
detector: the calibrated face box and the margin (the crop convention, :func:`square_box`), roll
alignment on the eye line, the score threshold, best-first order, and which face an annotation
describes. ``kpbench calibrate --detector NAME`` measures a subclass's ``calibration``::

    class MyDetector(kpbench.FaceDetector):
        calibration = {"scale": 0.9, "shift_x": 0.0, "shift_y": 0.1}  # from kpbench calibrate

        def raw_faces(self, rgb):
            return [RawFace(rect, score, eyes) for ...]
"""

from __future__ import annotations

import math
from typing import ClassVar, NamedTuple

import numpy as np

from kpbench.errors import KpbenchError
from kpbench.geometry import best_overlap, eye_angle, points_rect, rgb_uint8, square_box

Face = dict  # {"box", "raw_box", "score", "landmarks"}: one face of detect_all


class RawFace(NamedTuple):
    rect: tuple  # (x1, y1, x2, y2) in the image's pixels
    score: float
    landmarks: np.ndarray | None = None  # (L, 2), the two eyes first (any order), or None


def _number(name: str, value, low: float | None = None, high: float | None = None) -> float:
    """``value`` as a finite float within (low, high], or a one-line error naming the option."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise KpbenchError(f"detector option {name}: expected a number, got {value!r}") from None
    if not math.isfinite(v) or (low is not None and v <= low) or (high is not None and v > high):
        bounds = " and ".join(s for s in (f"> {low}" if low is not None else "",
                                          f"<= {high}" if high is not None else "") if s)
        raise KpbenchError(f"detector option {name}: must be a finite number{' ' + bounds if bounds else ''}, "
                           f"got {value!r}")
    return v


def match_face(faces: list[Face], points: np.ndarray, min_iou: float) -> Face | None:
    """The face (of ``detect_all``) that an annotation describes, or None for a miss.

    - no face: None; no visible point: the first (best-scoring) face;
    - otherwise the face whose ``raw_box`` has the highest IoU with the visible points' rectangle,
      if that is at least ``min_iou`` (ties: the better score). When the points' rectangle has no
      area (one point, or points on a line), the best-scoring face containing its centre."""
    if not faces:
        return None
    ref = points_rect(points)
    if ref is None:
        return faces[0]
    if ref[2] <= ref[0] or ref[3] <= ref[1]:
        cx, cy = (ref[0] + ref[2]) / 2, (ref[1] + ref[3]) / 2
        return next((f for f in faces if f["raw_box"][0] <= cx <= f["raw_box"][2]
                     and f["raw_box"][1] <= cy <= f["raw_box"][3]), None)
    k = best_overlap([f["raw_box"] for f in faces], ref, min_iou)
    return None if k is None else faces[k]


class FaceDetector:
    """A face detector under kpbench's crop convention (see the module docstring).

    Options, common to every detector:
      margin: the crop is the estimated face box plus this fraction of its side on each side, as
        for ``gt-box`` (default 0.15). ``evaluate`` and ``predict`` set it to a model's margin.
      scale, shift_x, shift_y: the calibration (:func:`kpbench.geometry.square_box`); default the
        class's measured ``calibration``.
      min_iou: a face matches an annotation when its rectangle's IoU with the visible points'
        rectangle is at least this (default 0.2).
      min_score: faces scoring below this are dropped (default: the class's ``min_score``).
      align: the crop turns with the eye line (roll alignment; the box gets its angle in degrees)."""

    calibration: ClassVar[dict] = {"scale": 1.0, "shift_x": 0.0, "shift_y": 0.0}
    min_score: float = 0.5
    cache_boxes = True  # slow enough that runs keep its boxes per image (kpbench.boxcache)

    def __init__(self, margin: float = 0.15, scale: float | None = None, shift_x: float | None = None,
                 shift_y: float | None = None, min_iou: float = 0.2, min_score: float | None = None,
                 align: bool = False):
        cal = type(self).calibration
        self.margin = _number("margin", margin, low=-0.5)
        self.scale = _number("scale", cal["scale"] if scale is None else scale, low=0)
        self.shift_x = _number("shift_x", cal["shift_x"] if shift_x is None else shift_x)
        self.shift_y = _number("shift_y", cal["shift_y"] if shift_y is None else shift_y)
        self.min_iou = _number("min_iou", min_iou, high=1)
        self.min_score = _number("min_score", type(self).min_score if min_score is None else min_score, high=1)
        if not isinstance(align, bool):
            raise KpbenchError(f"detector option align: expected true or false, got {align!r}")
        self.align = align

    def raw_faces(self, rgb: np.ndarray) -> list[RawFace]:
        """The detector's own faces on an (H, W, 3) uint8 image."""
        raise NotImplementedError

    def detect_all(self, image: np.ndarray) -> list[Face]:
        """Every face found, best score first: ``{"box": crop box, "raw_box": rectangle, "score",
        "landmarks"}``."""
        faces = []
        for raw in self.raw_faces(rgb_uint8(image)):
            rect = tuple(float(v) for v in raw.rect)
            score = float(raw.score)
            if not (math.isfinite(score) and score >= self.min_score and np.isfinite(rect).all()
                    and rect[2] > rect[0] and rect[3] > rect[1]):
                continue
            box = square_box(rect, self.margin, self.scale, self.shift_x, self.shift_y)
            marks = None if raw.landmarks is None else np.asarray(raw.landmarks, dtype=np.float32)
            if self.align and marks is not None:
                box = (*box, eye_angle(marks[:2]))
            faces.append({"box": box, "raw_box": rect, "score": score, "landmarks": marks})
        faces.sort(key=lambda f: -f["score"])
        return faces

    def __call__(self, image: np.ndarray, points: np.ndarray | None = None):
        """The crop box of the face ``points`` describe (the best face without points), or None."""
        face = match_face(self.detect_all(image), np.full((0, 2), np.nan) if points is None else points,
                          self.min_iou)
        return None if face is None else face["box"]
