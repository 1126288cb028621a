"""``mtcnn``: a real face detector (MTCNN from facenet-pytorch, weights shipped inside the package,
no network), so that models can be evaluated on the crops a deployed pipeline would give them.

``det.detect_all(image)`` lists every face found, best score first, each a dict::

    {"box": (x0, y0, side),        # square crop box (pixel-edge coordinates), margin included
     "raw_box": (x1, y1, x2, y2),  # MTCNN's own rectangle
     "score": float,
     "landmarks": (5, 2) array or None}  # eyes, nose, mouth corners

``det(image, points)`` returns the box of the face that matches the annotation, or ``None`` (a
miss); the square box, margin, alignment and matching are the core's (:class:`kpbench.FaceDetector`).

The crop box is calibrated (``kpbench calibrate --detector mtcnn``) so that its face box matches
the square around the annotated points on average (same center and side), and ``margin`` adds to
it what ``gt-box`` adds: a model trained on ``gt-box`` crops with margin m sees similar crops
through ``mtcnn`` with margin m; see :class:`MTCNNDetector` for the numbers.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

import kpbench
from kpbench.faces import FaceDetector, RawFace
from kpbench.runtime import torch_threads


def as_float_array(value, tail: tuple[int, ...] = ()) -> np.ndarray:
    """MTCNN.detect's output -> float64 array of shape (N, *tail); N = 0 for "no face".

    facenet-pytorch 2.5.3 with numpy 2 returns ``None``, object-dtype arrays (possibly holding
    ``None``, or nested arrays) or plain float arrays, depending on what was found.
    """
    if value is None:
        return np.zeros((0, *tail))
    if isinstance(value, np.ndarray) and value.dtype != object:
        arr = value.astype(np.float64)
    else:
        arr = np.asarray(value, dtype=object)
        if arr.size == 0 or any(v is None for v in arr.flat):
            return np.zeros((0, *tail))
        try:
            arr = np.asarray(arr.tolist(), dtype=np.float64)
        except (TypeError, ValueError):  # ragged: stack the elements one by one
            arr = np.stack([np.asarray(v, dtype=np.float64) for v in arr.flat])
    size = int(np.prod(tail)) if tail else 1
    if arr.size == 0:
        return np.zeros((0, *tail))
    if arr.size % size:
        raise ValueError(f"MTCNN output of shape {arr.shape} does not split into items of shape {tail}")
    return arr.reshape(-1, *tail)


# The face box relative to MTCNN's rectangle, from
#   kpbench calibrate --detector mtcnn --dataset folder68:../shared/data/youtube-faces-68  (0.832, 0.017, 0.141)
#   kpbench calibrate --detector mtcnn --dataset ibug:../shared/data/300w-helen-train  (0.802, 0.011, 0.132)
# (400 faces of each, seed 0; the medians averaged over the two sets; robust spread after it: 7-8 %
# in log side, 3-4 % of the side in centre: see the README, "Face boxes").
CALIBRATION = {"scale": 0.817, "shift_x": 0.014, "shift_y": 0.136}


class MTCNNDetector(FaceDetector):
    """MTCNN face detector (facenet-pytorch): crops as ``gt-box`` cuts them, at the same margin.

    Options: those of every :class:`kpbench.FaceDetector` (margin, scale, shift_x, shift_y,
    min_iou, min_score, align), with
      scale, shift_x, shift_y: default CALIBRATION, measured by ``kpbench calibrate --detector mtcnn``.
      min_iou: default 0.2: correct faces scored IoU 0.29-0.80 (median 0.67-0.69), other faces in
        the same photos at most 0.13.
      min_score: default 0.9 (halves the extra faces found; 2 of 1200 true faces scored lower).
      min_face_size, thresholds, factor: MTCNN's own (defaults 20, (0.6, 0.7, 0.7), 0.709).
      device: torch device for MTCNN, default "cpu".
      threads: torch threads while detecting (the caller's setting is restored afterwards);
        default None: leave it as it is.
      align: the crop turns with the line between MTCNN's two eye landmarks.
    """

    calibration = CALIBRATION
    min_score = 0.9

    def __init__(
        self,
        margin: float = 0.15,
        scale: float = CALIBRATION["scale"],
        shift_x: float = CALIBRATION["shift_x"],
        shift_y: float = CALIBRATION["shift_y"],
        min_iou: float = 0.2,
        min_face_size: int = 20,
        thresholds: Sequence[float] = (0.6, 0.7, 0.7),
        factor: float = 0.709,
        min_score: float = 0.9,
        device: str = "cpu",
        threads: int | None = None,
        align: bool = False,
    ):
        super().__init__(margin, scale, shift_x, shift_y, min_iou, min_score, align)
        if isinstance(min_face_size, bool) or not isinstance(min_face_size, (int, float)) or min_face_size < 1:
            raise kpbench.KpbenchError(f"mtcnn: min_face_size must be a number of pixels >= 1, got {min_face_size!r}")
        if not isinstance(factor, (int, float)) or not 0.05 <= factor <= 0.95:
            raise kpbench.KpbenchError(f"mtcnn: factor (the image pyramid's step) must be in [0.05, 0.95], "
                                       f"got {factor!r}")
        if not isinstance(thresholds, (list, tuple)) or len(thresholds) != 3:
            raise kpbench.KpbenchError(f"mtcnn: thresholds must be three numbers, got {thresholds!r}")
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise kpbench.KpbenchError(f"mtcnn: threads must be a whole number >= 1, got {threads!r}")
        self.min_face_size, self.factor = int(min_face_size), float(factor)
        self.thresholds = [float(t) for t in thresholds]
        self.device, self.threads = str(device), threads
        self._net = None

    def _mtcnn(self):
        if self._net is None:
            from facenet_pytorch import MTCNN

            try:
                self._net = MTCNN(keep_all=True, select_largest=False, min_face_size=self.min_face_size,
                                  thresholds=self.thresholds, factor=self.factor, device=self.device)
            except RuntimeError as exc:
                raise kpbench.KpbenchError(f"mtcnn: device {self.device!r}: {str(exc).splitlines()[0]}") from None
            self._net.eval()
        return self._net

    def raw_faces(self, rgb: np.ndarray) -> list[RawFace]:
        if min(rgb.shape[:2]) < max(self.min_face_size, 12):
            return []  # MTCNN's image pyramid would be empty (and facenet-pytorch would crash)
        with torch_threads(self.threads):
            boxes, probs, marks = self._mtcnn().detect(rgb, landmarks=True)
        boxes, probs, marks = as_float_array(boxes, (4,)), as_float_array(probs), as_float_array(marks, (5, 2))
        return [RawFace(tuple(boxes[i]), float(probs[i]), marks[i] if i < len(marks) else None)
                for i in range(min(len(boxes), len(probs)))]


@kpbench.hookimpl
def kpbench_detectors():
    return [
        kpbench.DetectorSpec(
            "mtcnn",
            MTCNNDetector,
            "MTCNN face detector (facenet-pytorch, offline weights), calibrated to the annotated face box",
        )
    ]
