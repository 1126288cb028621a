"""Face boxes without a learned detector: ``none`` (the whole image, for pre-cropped data) and
``gt-box`` (the annotated points' box, the usual protocol when no detector is under test).
A box is ``(x0, y0, side)``: a square in pixel-edge coordinates."""

from __future__ import annotations

import numpy as np

import kpbench
from kpbench.data import image_box, points_box
from kpbench.keypoints import eye_line_angle


class WholeImage:
    """The whole image is the face (pre-cropped data such as Kaggle's 96x96 faces)."""

    def __call__(self, image: np.ndarray, points: np.ndarray):
        return image_box(image)

    def detect_all(self, image: np.ndarray) -> list[dict]:
        return [{"box": image_box(image), "score": 1.0, "landmarks": None}]


class GtBox:
    """Square around the annotated visible points, enlarged by ``margin`` of its side on each side
    (the whole image when fewer than two points are visible). Needs annotations, so it cannot
    find faces in new photos. ``align``: the crop turns with the annotated eye line (roll
    alignment; see :func:`kpbench.data.crop_resize`)."""

    def __init__(self, margin: float = 0.25, align: bool = False):
        self.margin, self.align = float(margin), bool(align)

    def __call__(self, image: np.ndarray, points: np.ndarray):
        box = points_box(points, self.margin)
        if box is None:
            return image_box(image)
        angle = eye_line_angle(points) if self.align else None
        return box if angle is None else (*box, angle)


@kpbench.hookimpl
def kpbench_detectors():
    return [
        kpbench.DetectorSpec("none", WholeImage, "Whole image as the face box (pre-cropped data)"),
        kpbench.DetectorSpec("gt-box", GtBox, "Box around the annotated points plus a margin (oracle detector)"),
    ]
