"""Plane geometry of faces, in one place: rectangles around points, overlap, the square crop box
of a detector's rectangle, the eye line's angle, the points' centre and spread, which found face
an annotation describes, where a box sits around points, and images as plain RGB arrays. Rectangles are ``(x1, y1, x2, y2)``,
boxes ``(x0, y0, side[, angle])``, both in pixel-edge coordinates (a point at pixel centre ``i``
spans ``[i, i + 1]``)."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from kpbench.errors import KpbenchError

Rect = tuple  # (x1, y1, x2, y2)


def points_rect(points: np.ndarray) -> Rect | None:
    """Bounding rectangle of the visible points in pixel-edge coordinates (points are pixel centres
    at integers, hence the +0.5); None when no point is visible."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    visible = pts[np.isfinite(pts).all(axis=1)]
    if len(visible) == 0:
        return None
    lo, hi = visible.min(axis=0) + 0.5, visible.max(axis=0) + 0.5
    return (float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1]))


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two rectangles; 0 when either is empty."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def best_overlap(rects: Sequence[Rect | None], ref: Rect, min_iou: float) -> int | None:
    """Index of the rectangle overlapping ``ref`` most (the earliest on ties), if its IoU is at
    least ``min_iou``; else None."""
    best, best_iou = None, -1.0
    for k, r in enumerate(rects):
        v = iou(r, ref) if r is not None else 0.0
        if v > best_iou:
            best, best_iou = k, v
    return best if best is not None and best_iou >= min_iou else None


def square_box(rect: Sequence[float], margin: float, scale: float = 1.0, shift_x: float = 0.0,
               shift_y: float = 0.0) -> tuple[float, float, float]:
    """A detector's rectangle -> square crop box (x0, y0, side).

    The face box (kpbench's convention: the square around the annotated points) is estimated as
    side ``scale * max(w, h)`` centred on the rectangle's centre moved by ``(shift_x, shift_y) *
    max(w, h)`` (+y is down); the crop is that face box plus ``margin`` of its side on each side,
    exactly as ``gt-box`` adds its margin."""
    x1, y1, x2, y2 = (float(v) for v in rect)
    extent = max(x2 - x1, y2 - y1)
    side = scale * extent * (1 + 2 * margin)
    cx, cy = (x1 + x2) / 2 + shift_x * extent, (y1 + y2) / 2 + shift_y * extent
    return (cx - side / 2, cy - side / 2, side)


def centre_and_spread(points: np.ndarray) -> tuple[np.ndarray, float]:
    """The points' centroid (x, y) and their RMS distance from it (NaN points left out; NaN and 0
    when none is left)."""
    p = points[np.isfinite(points).all(axis=1)]
    if not len(p):
        return np.full(2, np.nan), 0.0
    centre = p.mean(axis=0)
    return centre, float(np.sqrt(((p - centre) ** 2).sum(axis=1).mean()))


def place_around(box: Sequence[float], points: np.ndarray) -> np.ndarray:
    """Where a square box ``(x0, y0, side)`` sits around ``points``: its centre's offset from their
    centroid (x, y) and its side, in units of their spread (:func:`centre_and_spread`), (3,)."""
    centre, spread = centre_and_spread(points)
    x0, y0, side = (float(v) for v in box[:3])
    return np.array([x0 + side / 2 - centre[0], y0 + side / 2 - centre[1], side]) / spread


def box_at(place: np.ndarray, centre: np.ndarray, spread: float) -> tuple[float, float, float]:
    """The square box ``(x0, y0, side)`` that sits at ``place`` (:func:`place_around`) around points
    of that centroid and spread."""
    side = float(place[2] * spread)
    cx, cy = centre + np.asarray(place[:2]) * spread
    return (float(cx - side / 2), float(cy - side / 2), side)


def eye_angle(eyes: np.ndarray) -> float:
    """Degrees of the line from the image-left eye to the image-right one, of two eye points."""
    (x1, y1), (x2, y2) = sorted(tuple(float(v) for v in p) for p in np.asarray(eyes)[:2])  # image-left first
    return math.degrees(math.atan2(y2 - y1, x2 - x1))


def rgb_uint8(image: np.ndarray) -> np.ndarray:
    """(H, W) gray or (H, W, 1|3|4) colour, uint8 or float in [0, 1] -> C-contiguous (H, W, 3) uint8
    (floats clipped)."""
    img = np.asarray(image)
    if img.dtype != np.uint8:
        img = np.clip(np.rint(img.astype(np.float32) * 255.0), 0, 255).astype(np.uint8)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[..., 0]
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    elif not (img.ndim == 3 and img.shape[2] >= 3):
        raise KpbenchError(f"expected an (H, W) or (H, W, 3) image, got shape {img.shape}")
    return np.ascontiguousarray(img[..., :3])
