"""``dlib68``: dlib's 68-point shape predictor (Kazemi & Sullivan's regression-tree cascade, trained
on iBUG 300-W) as a fixed reference row in the leaderboard. It has no trainable parameters, so
kpbench's training loop only evaluates it.

Optional: ``pip install 'kpbench[dlib]'`` (the ``dlib-bin`` wheel, imported as ``dlib``) and the
model file ``shape_predictor_68_face_landmarks.dat`` (``bin/fetch-dlib-model`` puts it in the user
cache; Debian's ``libdlib-data`` ships it under /usr/share/dlib). The model is registered only when
dlib is importable; the model file is looked up on the first forward pass, so ``kpbench list``
works without it.

Each crop is upscaled to at least ``min_size`` pixels (bicubic), since dlib wants a decent
resolution. The predictor starts from a face rectangle like the ones dlib's HOG frontal face
detector gives (it was trained on such boxes):

- ``box: detector`` (default) runs that detector on the crop (upsampled once below 320 px, option
  ``upsample``) and takes the detection nearest the crop centre; on a miss it tries once more at
  ``retry_scale`` (1.6) times the size. Where there is still none, or it is off-centre or
  implausibly sized, it falls back to the ``crop`` rectangle. Fallbacks are counted in the
  module's ``fallbacks`` (out of ``images``; ``reset_stats()`` zeroes both).
- ``box: crop`` derives the rectangle from the crop alone, assuming kpbench's ``gt-box`` rule with
  ``margin`` (set it to the run's ``detector_options.margin``; default 0.25, gt-box's default).

On the whole photo (``photo_keypoints``, kpbench's ``own-detector`` path) it runs exactly as dlib's
own example does: the HOG detector with one upsampling, the predictor in each box, no refinement.

``refine`` (default 1) then re-fits that many times from a detector-like rectangle placed on the
previous fit's points. Measured on gt-box crops of YouTube Faces and HELEN, the detector with one
refinement is the best default: the crop rectangle alone mis-fits strongly turned heads (a
frontal start centred on the crop flips the face), which the detector's pose-specific boxes avoid.
"""

from __future__ import annotations

import bz2
import importlib.util
import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

import kpbench
from kpbench.reference import ReferenceModel, upscaled_uint8

FILENAME = "shape_predictor_68_face_landmarks.dat"
ENV_VAR = "KPBENCH_DLIB_PREDICTOR"
SYSTEM_DIR = Path("/usr/share/dlib")
HINT = "run bin/fetch-dlib-model or pass model_options: {dlib68: {predictor: PATH}}"

# Where dlib's HOG frontal detector puts its box, relative to the square around the 68 annotated
# points (side = their larger extent; the gt-box rule's square before its margin): about the same
# side, centre raised by a tenth of it. And relative to dlib's own 68 points fitted from that box:
# side 2.86 x the points' RMS distance from their mean, centre 0.057 x side above their mean
# (this follows head pose better than the points' extent). Medians over 284 detections on 150
# YouTube Faces frames and 150 HELEN photos.
BOX_SCALE = 1.02
BOX_SHIFT = -0.10
FIT_SCALE = 2.86
FIT_SHIFT = -0.057

_PREDICTORS: dict[str, object] = {}  # path -> loaded dlib.shape_predictor (100 MB, loaded once)
_DETECTOR: list = []


def cache_path() -> Path:
    """Where ``bin/fetch-dlib-model`` puts the model file (and where a .bz2 is decompressed to)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "kpbench" / "dlib" / FILENAME


def _import_dlib():
    try:
        import dlib
    except ImportError:
        raise kpbench.KpbenchError("model 'dlib68' needs dlib: pip install 'kpbench[dlib]'") from None
    return dlib


def _decompressed(path: Path) -> Path:
    """A .bz2 model file decompressed (once) into the user cache; other paths as they are."""
    if path.suffix != ".bz2":
        return path
    target = cache_path().with_name(path.name[:-4])
    if not target.is_file() or target.stat().st_mtime < path.stat().st_mtime:
        target.parent.mkdir(parents=True, exist_ok=True)
        with bz2.open(path, "rb") as src, tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        os.replace(dst.name, target)
    return target


def find_predictor(predictor: str | os.PathLike | None = None) -> Path:
    """The model file: the ``predictor`` option, else $KPBENCH_DLIB_PREDICTOR, else the user cache
    (bin/fetch-dlib-model), else /usr/share/dlib (also as .dat.bz2). A path given explicitly (option
    or variable) must exist; if nothing is found the error names every path tried."""
    for value, source in ((predictor, "model_options dlib68.predictor"), (os.environ.get(ENV_VAR), f"${ENV_VAR}")):
        if value:
            path = Path(value).expanduser()
            if not path.is_file():
                raise kpbench.KpbenchError(f"dlib68: {source} {str(path)!r} does not exist; {HINT}")
            return _decompressed(path)
    tried = [cache_path(), SYSTEM_DIR / FILENAME, SYSTEM_DIR / (FILENAME + ".bz2")]
    for path in tried:
        if path.is_file():
            return _decompressed(path)
    raise kpbench.KpbenchError(
        f"dlib68: no {FILENAME} found (tried ${ENV_VAR} (unset), {', '.join(map(str, tried))}); {HINT}"
    )


def _load_predictor(path: Path):
    key = str(path.resolve())
    if key not in _PREDICTORS:
        dlib = _import_dlib()
        try:
            _PREDICTORS[key] = dlib.shape_predictor(key)
        except RuntimeError as exc:
            msg = " ".join(str(exc).split())
            raise kpbench.KpbenchError(f"dlib68: cannot load shape predictor {key!r}: {msg}") from None
    return _PREDICTORS[key]


def _detector():
    if not _DETECTOR:
        _DETECTOR.append(_import_dlib().get_frontal_face_detector())
    return _DETECTOR[0]


class Dlib68(ReferenceModel):
    """(B, C, H, W) face crops in [0, 1] -> (B, 2K) absolute crop coordinates in [0, 1] (pixel
    edges: a pixel centre c maps to (c + 0.5) / S). No parameters; see the module docstring."""

    name = "dlib68"

    def __init__(self, num_keypoints: int, input_size: int, in_chans: int = 1, predictor=None,
                 box: str = "detector", margin: float = 0.25, refine: int = 1, min_size: int = 160,
                 upsample: int | None = None, threshold: float = 0.0, retry_scale: float = 1.6,
                 box_scale: float = BOX_SCALE, box_shift: float = BOX_SHIFT):
        super().__init__(num_keypoints, min_size)
        if box not in ("detector", "crop"):
            raise kpbench.KpbenchError(f"model 'dlib68': box must be 'detector' or 'crop', got {box!r}")
        if not (-0.5 < margin and box_scale > 0 and int(min_size) >= 1 and int(refine) >= 0
                and (upsample is None or int(upsample) >= 0) and (not retry_scale or retry_scale > 1)):
            raise kpbench.KpbenchError(
                f"model 'dlib68': bad options margin={margin}, refine={refine}, min_size={min_size},"
                f" upsample={upsample}, retry_scale={retry_scale}, box_scale={box_scale}")
        _import_dlib()
        self.predictor = predictor
        self.box, self.margin, self.refine = box, float(margin), int(refine)
        self.upsample, self.threshold = upsample, float(threshold)
        self.retry_scale = float(retry_scale or 0)
        self.box_scale, self.box_shift = float(box_scale), float(box_shift)
        # fallbacks: faces where box=detector found none near the crop centre (the crop box was used)

    def extra_repr(self) -> str:
        return (f"num_keypoints={self.num_keypoints}, box={self.box!r}, margin={self.margin}, refine={self.refine}, "
                f"min_size={self.min_size}")

    def check(self) -> Path:
        """Find and load the model file now (KpbenchError if it cannot); returns its path."""
        path = find_predictor(self.predictor)
        _load_predictor(path)
        return path

    @staticmethod
    def _rect(dlib, cx: float, cy: float, side: float):
        """A square dlib.rectangle (inclusive integer pixel bounds) around an edge-coordinate centre."""
        s = max(int(round(side)), 1)
        left, top = int(round(cx - s / 2)), int(round(cy - s / 2))
        return dlib.rectangle(left, top, left + s - 1, top + s - 1)

    def _crop_box(self, dlib, h: int, w: int):
        """The detector-like box for a gt-box crop with ``margin`` (calibrated in BOX_*)."""
        side = min(h, w) / (1 + 2 * self.margin)  # the annotated points' square inside the crop
        return self._rect(dlib, w / 2, h / 2 + self.box_shift * side, self.box_scale * side)

    @classmethod
    def _box_from_points(cls, dlib, pts: np.ndarray):
        """The detector-like box for a fit's 68 points (pixel centres), calibrated in FIT_*."""
        q = pts + 0.5
        cx, cy = q.mean(0)
        side = FIT_SCALE * float(np.sqrt(((q - (cx, cy)) ** 2).sum(1).mean()))
        return cls._rect(dlib, cx, cy + FIT_SHIFT * side, side)

    def _detect(self, img: np.ndarray):
        """The HOG detection nearest the crop centre, or None (none, or not plausibly the face)."""
        h, w = img.shape
        up = int(self.upsample) if self.upsample is not None else int(min(h, w) < 320)
        rects, _, _ = _detector().run(img, up, self.threshold)
        best, best_d = None, math.inf
        for r in rects:
            d = math.hypot((r.left() + r.right() + 1) / 2 - w / 2, (r.top() + r.bottom() + 1) / 2 - h / 2)
            if d < best_d:
                best, best_d = r, d
        if best is None or best_d > 0.25 * min(h, w) or not 0.25 * min(h, w) < best.width() < 1.5 * min(h, w):
            return None
        return best

    def _detect_twice(self, dlib, img: np.ndarray, gray: torch.Tensor):
        """Detect on the working image; on a miss, once more at ``retry_scale`` times its size (the
        HOG detector's recall depends on the face's scale), the box scaled back."""
        rect = self._detect(img)
        if rect is None and self.retry_scale > 1:
            h, w = img.shape
            r = self._detect(upscaled_uint8(gray, round(h * self.retry_scale), round(w * self.retry_scale))[0])
            if r is not None:
                fx, fy = w / round(w * self.retry_scale), h / round(h * self.retry_scale)
                rect = self._rect(dlib, (r.left() + r.right() + 1) / 2 * fx, (r.top() + r.bottom() + 1) / 2 * fy,
                                  r.width() * fx)
        return rect

    def photo_keypoints(self, image: np.ndarray) -> list[np.ndarray]:
        """dlib on a whole (H, W, 3) uint8 photo as its users run it (dlib's own example): the HOG
        frontal face detector upsampling the photo once, then the shape predictor in each box.
        Every face's points in the run's schema, in the photo's pixels (pixel centres)."""
        predictor = _load_predictor(find_predictor(self.predictor))
        img = np.ascontiguousarray(image, dtype=np.uint8)
        faces = []
        for rect in _detector()(img, 1):
            pts = np.array([(p.x, p.y) for p in predictor(img, rect).parts()], dtype=np.float32)
            faces.append(self.in_schema(pts))
        return faces

    def points68(self, images: np.ndarray, gray: torch.Tensor) -> np.ndarray:
        dlib = _import_dlib()
        predictor = _load_predictor(find_predictor(self.predictor))
        b, hh, ww = images.shape
        out = np.empty((b, 68, 2), dtype=np.float32)
        for i in range(b):
            img = images[i]  # a C-contiguous (hh, ww) uint8 view, as dlib wants
            rect = self._detect_twice(dlib, img, gray[i:i + 1]) if self.box == "detector" else None
            if rect is None:
                self.fallbacks += self.box == "detector"
                rect = self._crop_box(dlib, hh, ww)
            for step in range(self.refine + 1):
                pts = np.array([(p.x, p.y) for p in predictor(img, rect).parts()], dtype=np.float32)
                if step < self.refine:
                    rect = self._box_from_points(dlib, pts)
            out[i] = pts
        return (out + 0.5) / np.array([ww, hh], dtype=np.float32)  # pixel centres -> edges, scaled to [0, 1]


def factory(num_keypoints: int, input_size: int, in_chans: int = 1, predictor=None, **options) -> Dlib68:
    """``model_options: {dlib68: {predictor: PATH, box: detector|crop, margin: 0.25, refine: 1,
    min_size: 160, upsample: null, threshold: 0.0, retry_scale: 1.6, box_scale: 1.02, box_shift: -0.1}}``
    (``retry_scale: 0`` turns the second detection attempt off); an unknown
    option is a TypeError, which kpbench reports as a bad option of model 'dlib68'."""
    return Dlib68(num_keypoints, input_size, in_chans, predictor=predictor, **options)


@kpbench.hookimpl
def kpbench_models():
    if importlib.util.find_spec("dlib") is None:
        return []
    return [kpbench.ModelSpec("dlib68", factory,
                              "dlib 68-point shape predictor (reference; does not train), mapped to the run's schema",
                              check=lambda options: find_predictor(options.get("predictor")))]
