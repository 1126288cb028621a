"""``mediapipe``: MediaPipe Face Mesh (the legacy ``mp.solutions.face_mesh`` solution: BlazeFace
short-range detector, then a 468-point mesh regressor) as a fixed reference row in the
leaderboard. It has no trainable parameters, so kpbench's training loop only evaluates it.

Optional: ``pip install 'kpbench[mediapipe]'`` (``mediapipe==0.10.14``; its models ship inside the
wheel, so nothing is downloaded). The model is registered only when mediapipe is importable; the
Face Mesh graph is created on the first forward pass (once per process), so ``kpbench list``
works fast.

Each crop is upscaled to at least ``min_size`` pixels (bicubic), its gray replicated to RGB, and
Face Mesh runs on it as users run it on a photo (``static_image_mode=True``, ``max_num_faces=1``,
``refine_landmarks=False``: its own detector finds the face in the crop). The 468 mesh vertices are
mapped to the 68 iBUG points with :data:`MESH_TO_IBUG68` and from there to the run's schema.

Where Face Mesh finds no face, the output is the mean 68-point face (:data:`MEAN_SHAPE68`) placed
where kpbench's ``gt-box`` rule with ``margin`` puts the face in the crop (set it to the run's
``detector_options.margin``; default 0.25, gt-box's default), as dlib68 falls back to the crop's
box. Such misses are counted in the module's ``fallbacks`` (out of ``images``; ``reset_stats()``
zeroes both).

:func:`photo_landmarks68` runs the same model on a whole photo (every face, in the photo's pixels);
``photo_keypoints`` is kpbench's ``own-detector`` path (the reference run on the whole photo, as
its users run it, beside the same model on kpbench's crops).
"""

from __future__ import annotations

import importlib.util
import os
import warnings

import numpy as np
import torch

import kpbench
from kpbench.reference import ReferenceModel

# Face Mesh vertex for each iBUG 68 point (0-based iBUG order: jaw 0-16 from the image's left,
# brows 17-26, nose 27-35, eyes 36-47, mouth 48-67). The widely used table; checked on 100 HELEN
# photos of 300-W: mean error over the 68 points 0.052 of the outer-eye-corner distance (jaw 0.092,
# brows 0.064, nose 0.033, eyes 0.029, mouth 0.034), no point mirrored or misplaced (the
# best-fitting vertex for a point is at most 0.021 better than this table's).
MESH_TO_IBUG68 = (
    127, 234, 132, 58, 172, 150, 149, 148, 152, 377, 378, 379, 397, 288, 361, 454, 356,  # jaw
    70, 63, 105, 66, 107, 336, 296, 334, 293, 300,  # brows: subject's right (image left), then left
    168, 197, 5, 4, 75, 97, 2, 326, 305,  # nose bridge, then nostrils
    33, 160, 158, 133, 153, 144, 362, 385, 387, 263, 373, 380,  # eyes
    61, 39, 37, 0, 267, 269, 291, 405, 314, 17, 84, 181,  # outer lips
    78, 82, 13, 312, 308, 317, 14, 87,  # inner lips
)

# The mean iBUG 68-point face inside the square around its points (kpbench's points_box at margin
# 0, edge coordinates in [0, 1]): the 870 HELEN faces of 300-W, made left/right symmetric.
MEAN_SHAPE68 = np.array([
    0.022, 0.232, 0.027, 0.358, 0.042, 0.482, 0.068, 0.602, 0.119, 0.714, 0.196, 0.810, 0.289, 0.890, 0.389,
    0.953, 0.500, 0.971, 0.611, 0.953, 0.711, 0.890, 0.804, 0.810, 0.881, 0.714, 0.932, 0.602, 0.958, 0.482,
    0.973, 0.358, 0.978, 0.232, 0.105, 0.136, 0.163, 0.079, 0.249, 0.060, 0.337, 0.071, 0.422, 0.101, 0.578,
    0.101, 0.663, 0.071, 0.751, 0.060, 0.837, 0.079, 0.895, 0.136, 0.500, 0.204, 0.500, 0.286, 0.500, 0.366,
    0.500, 0.449, 0.401, 0.508, 0.449, 0.524, 0.500, 0.537, 0.551, 0.524, 0.599, 0.508, 0.204, 0.217, 0.257,
    0.187, 0.321, 0.188, 0.375, 0.230, 0.317, 0.241, 0.252, 0.240, 0.625, 0.230, 0.679, 0.188, 0.743, 0.187,
    0.796, 0.217, 0.748, 0.240, 0.683, 0.241, 0.315, 0.657, 0.382, 0.629, 0.453, 0.614, 0.500, 0.626, 0.547,
    0.614, 0.618, 0.629, 0.685, 0.657, 0.619, 0.723, 0.551, 0.753, 0.500, 0.758, 0.449, 0.753, 0.381, 0.723,
    0.342, 0.660, 0.453, 0.654, 0.500, 0.659, 0.547, 0.654, 0.658, 0.660, 0.548, 0.691, 0.500, 0.697, 0.452,
    0.691,
], dtype=np.float32).reshape(68, 2)

_MESHES: dict[tuple, object] = {}  # (pid, max_faces, min_confidence) -> FaceMesh, created on first use


def _import_mediapipe():
    try:
        import mediapipe
    except ImportError:
        raise kpbench.KpbenchError("model 'mediapipe' needs mediapipe: pip install 'kpbench[mediapipe]'") from None
    # mediapipe 0.10.14 calls a protobuf API that protobuf 4.25 deprecates, warning on every run
    warnings.filterwarnings("ignore", message=r"SymbolDatabase\.GetPrototype\(\) is deprecated", category=UserWarning)
    return mediapipe


def face_mesh(max_faces: int = 1, min_confidence: float = 0.5):
    """This process's FaceMesh (static images, no iris refinement), created on first use."""
    key = (os.getpid(), int(max_faces), float(min_confidence))
    if key not in _MESHES:
        mp = _import_mediapipe()
        _MESHES[key] = mp.solutions.face_mesh.FaceMesh(
            static_image_mode=True, max_num_faces=int(max_faces), refine_landmarks=False,
            min_detection_confidence=float(min_confidence))
    return _MESHES[key]


def _mesh68(landmarks, w: int, h: int) -> np.ndarray:
    """One face's MediaPipe landmarks -> (68, 2) edge coordinates in pixels of a (h, w) image."""
    lm = landmarks.landmark
    return np.array([(lm[i].x * w, lm[i].y * h) for i in MESH_TO_IBUG68], dtype=np.float32)


def photo_landmarks68(image: np.ndarray, max_faces: int = 10, min_confidence: float = 0.5) -> list[np.ndarray]:
    """Face Mesh on a whole (H, W, 3) RGB uint8 photo, as its users run it (its own face detector):
    the 68 iBUG points of every face found, each (68, 2) in the photo's pixels (pixel-centre
    coordinates, as kpbench's annotations: the top-left pixel's centre is (0, 0)). Empty if none."""
    img = np.ascontiguousarray(image, dtype=np.uint8)
    h, w = img.shape[:2]
    result = face_mesh(max_faces, min_confidence).process(img)
    return [_mesh68(face, w, h) - 0.5 for face in result.multi_face_landmarks or ()]


class MediaPipeFaceMesh(ReferenceModel):
    """(B, C, H, W) face crops in [0, 1] -> (B, 2K) absolute crop coordinates in [0, 1] (pixel
    edges). No parameters; see the module docstring."""

    name = "mediapipe"

    def __init__(self, num_keypoints: int, input_size: int, in_chans: int = 1, min_size: int = 192,
                 margin: float = 0.25, min_confidence: float = 0.5, photo_faces: int = 5):
        super().__init__(num_keypoints, min_size)
        if not (-0.5 < margin and int(min_size) >= 1 and 0 <= min_confidence <= 1 and int(photo_faces) >= 1):
            raise kpbench.KpbenchError(
                f"model 'mediapipe': bad options min_size={min_size}, margin={margin}, min_confidence={min_confidence},"
                f" photo_faces={photo_faces}")
        _import_mediapipe()
        self.margin, self.min_confidence = float(margin), float(min_confidence)
        self.photo_faces = int(photo_faces)
        # fallbacks: faces where Face Mesh found none (the mean shape was output)

    def extra_repr(self) -> str:
        return f"num_keypoints={self.num_keypoints}, min_size={self.min_size}, margin={self.margin}"

    def fallback(self) -> np.ndarray:
        """(68, 2) crop coordinates: the mean face where the gt-box rule with ``margin`` puts it."""
        return (MEAN_SHAPE68 + self.margin) / (1 + 2 * self.margin)

    def photo_keypoints(self, image: np.ndarray) -> list[np.ndarray]:
        """Face Mesh on a whole (H, W, 3) uint8 photo as its users run it (:func:`photo_landmarks68`,
        up to ``photo_faces`` faces): every face's points in the run's schema, in the photo's pixels."""
        faces = photo_landmarks68(image, max_faces=self.photo_faces, min_confidence=self.min_confidence)
        return [self.in_schema(f) for f in faces]

    def points68(self, images: np.ndarray, gray: torch.Tensor) -> np.ndarray:
        mesh = face_mesh(1, self.min_confidence)
        rgb = np.ascontiguousarray(np.repeat(images[..., None], 3, axis=-1))
        out = np.empty((len(images), 68, 2), dtype=np.float32)
        for i in range(len(images)):
            faces = mesh.process(rgb[i]).multi_face_landmarks
            if faces:
                out[i] = _mesh68(faces[0], 1, 1)  # normalized landmarks are already crop fractions
            else:
                self.fallbacks += 1
                out[i] = self.fallback()
        return out


def factory(num_keypoints: int, input_size: int, in_chans: int = 1, **options) -> MediaPipeFaceMesh:
    """``model_options: {mediapipe: {min_size: 192, margin: 0.25, min_confidence: 0.5, photo_faces: 5}}``
    (``margin`` only places the no-face fallback; ``photo_faces``: faces Face Mesh may return on a
    whole photo, where kpbench picks the annotated one); an unknown option is a TypeError, which kpbench reports as a
    bad option of model 'mediapipe'."""
    return MediaPipeFaceMesh(num_keypoints, input_size, in_chans, **options)


@kpbench.hookimpl
def kpbench_models():
    if importlib.util.find_spec("mediapipe") is None:
        return []
    return [kpbench.ModelSpec("mediapipe", factory, "MediaPipe Face Mesh (reference; does not train),"
                              " 68 of its 468 points mapped to the run's schema")]
