"""Face boxes without a learned detector: ``none`` (the whole image, for pre-cropped data) and
``gt-box`` (the annotated points' box, the usual protocol when no detector is under test).
A box is ``(x0, y0, side)``: a square in pixel-edge coordinates."""

from __future__ import annotations

import numpy as np

import kpbench


def whole_image(**_options):
    def detect(image: np.ndarray, points: np.ndarray):
        h, w = image.shape[:2]
        side = float(max(h, w))
        return ((w - side) / 2, (h - side) / 2, side)

    return detect


def gt_box(margin: float = 0.25, **_options):
    """Square around the visible points, enlarged by ``margin`` of its side on each side."""

    def detect(image: np.ndarray, points: np.ndarray):
        visible = points[~np.isnan(points).any(axis=1)]
        if len(visible) < 2:
            return whole_image()(image, points)
        lo, hi = visible.min(axis=0) + 0.5, visible.max(axis=0) + 0.5
        side = float((hi - lo).max() * (1 + 2 * margin))
        if side <= 0:  # all visible points coincide
            return whole_image()(image, points)
        cx, cy = (lo + hi) / 2
        return (cx - side / 2, cy - side / 2, side)

    return detect


@kpbench.hookimpl
def kpbench_detectors():
    return [
        kpbench.DetectorSpec("none", whole_image, "Whole image as the face box (pre-cropped data)"),
        kpbench.DetectorSpec("gt-box", gt_box, "Box around the annotated points plus a margin (oracle detector)"),
    ]
