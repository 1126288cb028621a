"""Samples, datasets, seeded splits and the preprocessing that turns samples into tensors.

Every dataset yields :class:`Sample` objects: the image in its own pixels and a (K, 2) float array
of points in that image's pixel coordinates (pixel centers at integers), NaN for a missing point.
Preprocessing crops a square face box (given by a detector) and resizes it to the model's input;
targets are the points in that crop, scaled to [0, 1]. :func:`to_image_pixels` maps predictions
back, so every metric is computed in the original image's pixels.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from dataclasses import dataclass, field, replace
from pathlib import PurePath
from typing import TYPE_CHECKING, Callable, Protocol, Sequence

import numpy as np

from kpbench.errors import KpbenchError
from kpbench.geometry import centre_and_spread, place_around
from kpbench.keypoints import convert

if TYPE_CHECKING:  # torch is imported where tensors are made: reading and cutting photos needs none
    import torch


@dataclass
class Sample:
    image: np.ndarray  # (H, W) gray or (H, W, 3) RGB; uint8, or float in [0, 1]
    points: np.ndarray  # (K, 2) float32, image pixels, NaN where missing
    id: str
    schema: str
    group: str | None = None  # e.g. the person, so that splits can keep groups apart
    frame: tuple[str, int] | None = None  # a video frame: (its clip, its index in the clip), for temporal metrics
    # Where the annotation format puts a pixel's centre, in pixels: 0 for kpbench's own convention
    # (0-based pixel centres), 1 for formats that count pixels from 1 (iBUG .pts, as Matlab does).
    # Points stay as annotated (they are what is scored); crop targets mark the pixels themselves
    # (see Prepared.targets), so that mirroring, turning and scaling a crop move them exactly.
    origin: float = 0.0


class Dataset(Protocol):
    schema: str

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Sample: ...


class Concat:
    """Several datasets as one (``data.dataset`` given as a list): samples keep their own schema;
    groups are kept per dataset (a sample without a group is its own). Each sample's id is
    prefixed with its dataset's name (``<name>/<id>``), so reports can break results down by source."""

    def __init__(self, datasets: Sequence[Dataset], names: Sequence[str] | None = None):
        self.datasets = list(datasets)
        self.names = list(names) if names is not None else [str(k) for k in range(len(self.datasets))]
        self.schema = self.datasets[0].schema
        self.offsets = np.cumsum([0] + [len(d) for d in self.datasets])
        self.groups = []
        for k, d in enumerate(self.datasets):
            groups = getattr(d, "groups", None)
            self.groups += [f"{k}:{groups[i] if groups is not None else i}" for i in range(len(d))]

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, index: int) -> Sample:
        k = int(np.searchsorted(self.offsets, index, side="right") - 1)
        sample = self.datasets[k][index - int(self.offsets[k])]
        frame = sample.frame and (f"{self.names[k]}/{sample.frame[0]}", sample.frame[1])
        return replace(sample, id=f"{self.names[k]}/{sample.id}", frame=frame)


def source_names(specs: list[str]) -> list[str]:
    """Short names of combined datasets: the last part of each path (``youtube-faces-68``), or the
    kind for a dataset without one; a repeated name gets its position appended."""
    names = [PurePath(s.partition(":")[2]).name or s.partition(":")[0] for s in specs]
    return [f"{n}-{k}" if names.count(n) > 1 else n for k, n in enumerate(names)]


def source_of(ids: Sequence[str], names: Sequence[str]) -> np.ndarray:
    """The dataset name of each id of a :class:`Concat` (its prefix), as an array of strings."""
    known = set(names)
    return np.array([i.split("/", 1)[0] if i.split("/", 1)[0] in known else "" for i in ids])


def split_dataset(dataset: Dataset, fractions: Sequence[float], seed: int):
    """:func:`split_indices` of a dataset, by its groups when it has them. A :class:`Concat` is split
    part by part and the parts joined, so a combined run's test split is exactly the union of the
    test splits of runs on each dataset alone (same seed and fractions)."""
    if isinstance(dataset, Concat):
        parts = [split_dataset(d, fractions, seed) for d in dataset.datasets]
        return tuple(np.concatenate([p[k] + off for p, off in zip(parts, dataset.offsets)]) for k in range(3))
    return split_indices(len(dataset), fractions, seed, getattr(dataset, "groups", None))


class Subset:
    """A seeded random subset of ``limit`` samples of a dataset (``data.limit``), order kept."""

    def __init__(self, dataset: Dataset, limit: int, seed: int):
        self.dataset = dataset
        self.schema = dataset.schema
        n = len(dataset)
        self.indices = np.sort(np.random.default_rng(seed).choice(n, size=min(limit, n), replace=False))
        groups = getattr(dataset, "groups", None)
        self.groups = [groups[i] for i in self.indices] if groups is not None else None

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> Sample:
        return self.dataset[int(self.indices[index])]


def split_indices(n: int, fractions: Sequence[float], seed: int, groups: Sequence[str] | None = None):
    """Seeded train/val/test split. With ``groups``, whole groups go to one split."""
    fractions = np.asarray(fractions, dtype=float)
    if len(fractions) != 3 or (fractions < 0).any() or abs(fractions.sum() - 1) > 1e-6:
        raise KpbenchError(f"data.split must be three non-negative fractions summing to 1, got {list(map(float, fractions))}")
    rng = np.random.default_rng(seed)
    if groups is None:
        order = rng.permutation(n)
        cuts = np.round(np.cumsum(fractions)[:2] * n).astype(int)
        return tuple(np.sort(part) for part in np.split(order, cuts))
    names = np.array(sorted(set(groups)))
    rng.shuffle(names)
    cuts = np.round(np.cumsum(fractions)[:2] * len(names)).astype(int)
    which = {g: k for k, part in enumerate(np.split(names, cuts)) for g in part}
    labels = np.array([which[g] for g in groups])
    return tuple(np.flatnonzero(labels == k) for k in range(3))


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


MAX_PIXELS = 50_000_000  # a photo larger than this (a 7000 x 7000 one) is refused: its arrays would need GBs


def read_image(path) -> np.ndarray:
    """An image file as an (H, W, 3) uint8 RGB array; an unreadable file is a one-line error.

    16-bit and 32-bit gray images are scaled by their type's range (PIL's own conversion would clip
    them to white), palette and alpha images are composited to RGB, EXIF orientation is applied."""
    from PIL import Image, ImageOps

    try:
        with warnings.catch_warnings(), Image.open(path) as im:
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # refused below, in one line
            if im.width * im.height > MAX_PIXELS:
                raise KpbenchError(f"{path}: {im.width} x {im.height} pixels is more than kpbench reads "
                                   f"({MAX_PIXELS // 10**6} megapixels); scale it down first")
            im = ImageOps.exif_transpose(im)
            if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
                arr = np.asarray(im).astype(np.float64)
                top = 65535.0 if im.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
                if im.mode == "F":
                    top = 1.0 if arr.max(initial=0) <= 1.0 else 255.0
                gray = np.clip(np.rint(arr / top * 255.0), 0, 255).astype(np.uint8)
                return np.repeat(gray[..., None], 3, axis=2)
            if im.mode in ("P", "PA", "LA", "RGBA") and (im.mode != "P" or "transparency" in im.info):
                im = im.convert("RGBA")
            return np.asarray(im.convert("RGB"))
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise KpbenchError(f"{path}: cannot read image: {exc}") from None


GRAY = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R 601 luma


def to_gray(image: np.ndarray) -> np.ndarray:
    """An image as float32 gray in [0, 1] (uint8 scaled by 1/255; RGB by :data:`GRAY`)."""
    img = np.asarray(image)
    scale = np.float32(1 / 255) if img.dtype == np.uint8 else np.float32(1)
    if img.dtype != np.float32:  # float64 and the rest: float32 out, as for uint8
        # one contiguous float copy first: the products below on a uint8 channel view cast pixel by
        # pixel, 3x slower (1.8 against 0.56 ms for a 600 px face of a 720p frame), same bits
        img = img.astype(np.float32)
    if img.ndim < 3:
        return img * scale
    w = GRAY * scale  # elementwise, not a matrix product: BLAS's threads would spin on the other core
    return img[..., 0] * w[0] + img[..., 1] * w[1] + img[..., 2] * w[2]


def _square_grid(theta: torch.Tensor, out: int) -> torch.Tensor:
    """``F.affine_grid(theta[None], [1, 1, out, out], align_corners=False)`` as two outer sums of
    the pixel centres (five times faster for one image)."""
    import torch

    u = (torch.arange(out, dtype=torch.float32) * 2 + 1) / out - 1
    gx = (theta[0, 0] * u)[None, :] + (theta[0, 1] * u + theta[0, 2])[:, None]
    gy = (theta[1, 0] * u)[None, :] + (theta[1, 1] * u + theta[1, 2])[:, None]
    return torch.stack([gx, gy], -1)[None]


def _pad_for(side: float, size: int) -> int:
    """Pixels beyond a box that its crop's filter reads: the triangle's reach (the shrink factor)
    plus 2."""
    return int(math.ceil(side / size)) + 2


def _extent(box: Sequence[float], size: int) -> tuple[int, int, int, int]:
    """(top, bottom, left, right): the pixels a ``size`` crop of ``box`` reads (the box, turned by
    its angle, plus the filter's reach), unclipped: they may lie off the image."""
    x0, y0, side = (float(v) for v in box[:3])
    if len(box) > 3 and float(box[3]) != 0.0:
        rad = math.radians(float(box[3]))
        half = side / 2 * (abs(math.cos(rad)) + abs(math.sin(rad))) + _pad_for(side, size)
        cx, cy = x0 + side / 2, y0 + side / 2
        return (int(math.floor(cy - half)), int(math.ceil(cy + half)),
                int(math.floor(cx - half)), int(math.ceil(cx + half)))
    pad = _pad_for(side, size)
    return (int(math.floor(y0)) - pad, int(math.ceil(y0 + side)) + pad,
            int(math.floor(x0)) - pad, int(math.ceil(x0 + side)) + pad)


def _reach(h: int, w: int, box: Sequence[float], size: int) -> tuple[int, int, int, int]:
    """:func:`_extent` clipped to an ``h`` x ``w`` image; empty when the box lies off it."""
    top, bottom, left, right = _extent(box, size)
    return max(0, top), min(h, bottom), max(0, left), min(w, right)


def _resize_box(im, box: Sequence[float], size: int) -> np.ndarray:
    """PIL's bilinear resize of the square ``box = (x0, y0, side)`` of a mode-"F" image to
    ``size``: each crop pixel the triangle filter's average over the pixels around its centre,
    the triangle widened by the shrink factor when shrinking (antialiased, as torch's
    ``F.interpolate(..., antialias=True)``), plain bilinear interpolation when enlarging; pixels
    off the image are zeros (the image is first placed on a zero canvas covering the box and the
    filter's reach, so PIL's own edge handling never applies)."""
    from PIL import Image

    x0, y0, side = box
    w, h = im.size
    top, bottom, left, right = _extent(box, size)
    if left < 0 or top < 0 or right > w or bottom > h:
        canvas = Image.new("F", (right - left, bottom - top), 0.0)
        canvas.paste(im, (-left, -top))
        im, x0, y0 = canvas, x0 - left, y0 - top
    return np.asarray(im.resize((size, size), Image.BILINEAR, box=(x0, y0, x0 + side, y0 + side)))


def crop_resize(gray: np.ndarray, box: Sequence[float], size: int) -> np.ndarray:
    """Square crop ``box = (x0, y0, side[, angle])`` (pixel-edge coordinates) of a 2-D float image
    resized to ``size``, float32; zero padding. Upright (``angle`` 0, the default): PIL's
    bilinear resize of the box, antialiased when shrinking (:func:`_resize_box`). ``angle``
    (degrees) turns the crop about its centre: its x axis points that many degrees from the
    image's +x towards +y (clockwise on screen), so a face whose eye line has that angle comes out
    upright (roll alignment); a turned crop is bilinear samples at its pixel centres (at native
    resolution, then the same antialiased shrink, when shrinking by more than 1.5x)."""
    from PIL import Image

    h, w = gray.shape
    x0, y0, side = (float(v) for v in box[:3])
    angle = float(box[3]) if len(box) > 3 else 0.0
    if (h, w) == (size, size) and (x0, y0, side, angle) == (0.0, 0.0, float(size), 0.0):
        return gray
    if angle == 0.0:  # only the box and the filter's reach go to PIL
        top, bottom, left, right = _reach(h, w, box, size)
        if right <= left or bottom <= top:  # the box lies off the image: all padding
            return np.zeros((size, size), np.float32)
        region = Image.fromarray(np.ascontiguousarray(gray[top:bottom, left:right], dtype=np.float32))
        return _resize_box(region, (x0 - left, y0 - top, side), size)
    import torch
    import torch.nn.functional as F

    scale = side / size
    out = size if scale <= 1.5 else max(size, int(round(side)))
    # Output pixel at normalized u samples the input at edge coordinate centre + R(angle) (u * side / 2).
    cos, sin = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    theta = torch.tensor(
        [[[side / w * cos, -side / w * sin, (2 * x0 + side) / w - 1.0],
          [side / h * sin, side / h * cos, (2 * y0 + side) / h - 1.0]]],
        dtype=torch.float32,
    )
    src = torch.from_numpy(np.ascontiguousarray(gray, dtype=np.float32))[None, None]
    crop = F.grid_sample(src, _square_grid(theta[0], out), mode="bilinear", padding_mode="zeros", align_corners=False)
    if out != size:
        crop = F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return crop[0, 0].numpy()


def gray_region(image, top: int, bottom: int, left: int, right: int) -> np.ndarray:
    """:func:`to_gray` of ``image[top:bottom, left:right]``; an image with its own ``gray`` (a video
    :class:`kpbench.video.Frame`: from its luma plane, no RGB made) gives it."""
    if hasattr(image, "gray"):
        return image.gray(top, bottom, left, right)
    return to_gray(np.asarray(image)[top:bottom, left:right])


def crop_from_image(image: np.ndarray, box: Sequence[float], size: int) -> np.ndarray:
    """:func:`crop_resize` of ``to_gray(image)`` at ``box``, converting only the part of the image
    the crop reads (the box, turned by its angle, plus the filter's reach): the same crop, a
    fraction of the work on a large photo. An upright crop of 8-bit RGB goes to PIL whole: its
    gray (PIL's "F" conversion, ITU-R 601 as :data:`GRAY`, in float) and the resize, no numpy
    image between."""
    x0, y0, side = (float(v) for v in box[:3])
    top, bottom, left, right = _reach(*image.shape[:2], box, size)
    if right <= left or bottom <= top:  # the box lies off the image: all padding
        return np.zeros((size, size), np.float32)
    upright = len(box) < 4 or float(box[3]) == 0.0
    if upright and isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.shape[2:] == (3,):
        from PIL import Image

        region = Image.fromarray(np.ascontiguousarray(image[top:bottom, left:right])).convert("F")
        return _resize_box(region, (x0 - left, y0 - top, side), size) * np.float32(1 / 255)
    region = gray_region(image, top, bottom, left, right)
    return crop_resize(region, (x0 - left, y0 - top, side, *box[3:]), size)


def stack_boxes(boxes: Sequence[Sequence[float]]) -> np.ndarray:
    """Boxes ``(x0, y0, side[, angle])`` as one float32 array: (N, 3), or (N, 4) when any has an
    angle (the others at angle 0, e.g. a detector's misses)."""
    columns = max(len(b) for b in boxes)
    return np.stack([np.pad(np.asarray(b, dtype=np.float32), (0, columns - len(b))) for b in boxes])


def _turn(d: np.ndarray, boxes: np.ndarray, sign: float) -> np.ndarray:
    """Offsets ``d`` (N, K, 2) turned by ``sign`` x each box's angle (column 3, degrees)."""
    a = np.deg2rad(boxes[:, 3])[:, None] * sign
    cos, sin = np.cos(a), np.sin(a)
    return np.stack([d[..., 0] * cos - d[..., 1] * sin, d[..., 0] * sin + d[..., 1] * cos], -1)


def to_crop(points: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Image pixels -> crop coordinates in [0, 1]. points (N, K, 2), boxes (N, 3) or (N, 4) with
    an angle (see :func:`crop_resize`)."""
    if boxes.shape[1] < 4 or not boxes[:, 3].any():
        return (points + 0.5 - boxes[:, None, :2]) / boxes[:, None, 2:3]
    half = boxes[:, None, 2:3] / 2
    return _turn(points + 0.5 - boxes[:, None, :2] - half, boxes, -1.0) / boxes[:, None, 2:3] + 0.5


def pixel_origin(value, what: str) -> float:
    """A pixel origin given as data (a dataset's ``origin`` option, an export's ``points_origin``),
    checked: a finite number of pixels, else a one-line error naming ``what``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise KpbenchError(f"{what} must be a number of pixels (0: pixels counted from 0, 1: from 1), got {value!r}")
    return float(value)


def to_image_pixels(crop: np.ndarray, boxes: np.ndarray, origin: float = 0.0) -> np.ndarray:
    """Crop coordinates in [0, 1] -> the original image's pixels (inverse of :func:`to_crop`),
    numbered from ``origin`` (a model's ``origin``: its training annotations' Sample.origin)."""
    if boxes.shape[1] < 4 or not boxes[:, 3].any():
        return crop * boxes[:, None, 2:3] + boxes[:, None, :2] + (origin - 0.5)
    half = boxes[:, None, 2:3] / 2
    return _turn((crop - 0.5) * boxes[:, None, 2:3], boxes, 1.0) + boxes[:, None, :2] + half + (origin - 0.5)


def points_origin(model) -> float:
    """The pixel origin ``model`` numbers its points from (its ``origin``: a Regressor's training
    annotations', an exported graph's from its sidecar); 0 for a model without one."""
    return float(getattr(model, "origin", 0.0))


def split_confidence(out: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray | None]:
    """A model's output for N crops, (N, 2K) or (N, 3K) with confidences
    (:class:`kpbench.evaluate.PointsAndConfidence`), as (N, K, 2) points and (N, K) confidences,
    or None without them."""
    out = out.reshape(len(out), -1)
    return out[:, :2 * k].reshape(-1, k, 2), (out[:, 2 * k:] if out.shape[1] == 3 * k else None)


FAR_OUTSIDE = 0.5  # points more than this fraction of the image's size beyond its edges are an error


def check_sample(s: Sample) -> np.ndarray:
    """The sample's grayscale image, after checking what would silently corrupt training: an
    empty image, non-finite pixels, points of the wrong shape or far outside the image."""
    gray = to_gray(s.image)
    if gray.ndim != 2 or gray.size == 0:
        raise KpbenchError(f"{s.id}: image has shape {np.shape(s.image)}, expected (H, W) or (H, W, 3)")
    if not np.isfinite(gray).all():
        raise KpbenchError(f"{s.id}: image has {int((~np.isfinite(gray)).sum())} NaN or infinite pixels")
    pts = np.asarray(s.points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise KpbenchError(f"{s.id}: points have shape {pts.shape}, expected (K, 2)")
    h, w = gray.shape
    lo, hi = -FAR_OUTSIDE * np.array([w, h]), (1 + FAR_OUTSIDE) * np.array([w, h])
    with np.errstate(invalid="ignore"):
        far = ((pts < lo) | (pts > hi)).any(axis=1)
    if far.any():
        k = int(np.flatnonzero(far)[0])
        raise KpbenchError(f"{s.id}: point {k} at ({pts[k, 0]:.1f}, {pts[k, 1]:.1f}) is far outside the "
                           f"{w}x{h} image")
    return gray


FALLBACK_MARGIN = 0.15  # the gt-box crop used where a detector misses (policy "fallback")


def points_box(points: np.ndarray, margin: float) -> tuple[float, float, float] | None:
    """Square around the visible points, enlarged by ``margin`` of its side on each side; None
    when fewer than two distinct points are visible.

    The face-box convention: given a sample's *annotated* points (all 68 on 68-point data, not
    the run's target schema), this square at margin 0 is "the face box" that every detector is
    calibrated to (``kpbench calibrate``), and a crop is that box plus ``margin`` on each side."""
    visible = points[~np.isnan(points).any(axis=1)]
    if len(visible) < 2:
        return None
    lo, hi = visible.min(axis=0) + 0.5, visible.max(axis=0) + 0.5
    side = float((hi - lo).max() * (1 + 2 * margin))
    if side <= 0:
        return None
    cx, cy = (lo + hi) / 2
    return (float(cx - side / 2), float(cy - side / 2), side)


def image_box(image: np.ndarray) -> tuple[float, float, float]:
    """The whole image as a square box (centered, padded on the short side)."""
    h, w = image.shape[:2]
    side = float(max(h, w))
    return ((w - side) / 2, (h - side) / 2, side)


@dataclass
class Prepared:
    """One split, ready for a model: crops, targets in crop space, and how to map back."""

    images: torch.Tensor  # (N, 1, S, S) float32 in [0, 1]
    # (N, K, 2) float32 crop coordinates in [0, 1], NaN missing: where the points' pixels are (the
    # points less their Sample.origin), so a model learns the pixels, not an annotation format
    targets: torch.Tensor
    points: np.ndarray  # (N, K, 2) ground truth in the original image's pixels, as annotated
    boxes: np.ndarray  # (N, 3) x0, y0, side of each crop
    ids: list[str]
    missed: np.ndarray | None = None  # (N,) bool: the detector found no matching face (fallback box used)
    skipped: list[str] = field(default_factory=list)  # bad samples left out (data.skip_bad), one message each
    # (N, 1, Sc, Sc): the same boxes with context around them (Sc > S), for face-box jitter in training
    context: torch.Tensor | None = None
    frames: list[tuple[str, int] | None] | None = None  # each sample's Sample.frame
    origin: np.ndarray | None = None  # (N,) each sample's Sample.origin (px); None: all 0

    def __post_init__(self):
        if self.missed is None:
            self.missed = np.zeros(len(self.ids), dtype=bool)

    def __len__(self) -> int:
        return len(self.ids)

    def mean_origin(self) -> float:
        """The samples' mean Sample.origin (px): where a model trained on them reports its points."""
        return float(self.origin.mean()) if self.origin is not None and len(self.origin) else 0.0

    def crop_from_points(self) -> tuple[float, float, float] | None:
        """Where these crops sit around their faces' points: the median over the faces with every
        point annotated (detector misses left out) of :func:`kpbench.geometry.place_around` (the
        crop box's centre offset from the points' centroid, x and y, and its side, in units of
        their spread), in the image's pixels as a video track measures them; None when no face
        qualifies."""
        places = [place_around(box, pts) for box, pts, missed in zip(self.boxes, self.points, self.missed)
                  if not missed and np.isfinite(pts).all() and centre_and_spread(pts)[1] > 0]
        return tuple(round(float(v), 5) for v in np.median(places, axis=0)) if places else None

    def fingerprint(self) -> str:
        if not hasattr(self, "_fingerprint"):
            h = hashlib.sha256()
            for arr in (self.images.numpy(), np.nan_to_num(self.targets.numpy(), nan=-1.0)):
                h.update(np.ascontiguousarray(arr).tobytes())
            h.update("\n".join(self.ids).encode())
            self._fingerprint = h.hexdigest()[:16]
        return self._fingerprint


def prepare(
    dataset: Dataset,
    indices: Sequence[int],
    detect: Callable[[np.ndarray, np.ndarray], Sequence[float] | None],
    input_size: int,
    schema: str,
    like: Prepared | None = None,
    on_item: Callable[[], None] | None = None,
    skip_bad: bool = False,
    context: float = 0.0,
) -> Prepared:
    """Crop every sample's face box at ``input_size``. ``detect(image, points)`` gives the box from
    the sample's annotated points (its own schema, see :func:`points_box`), or None for a miss (then
    the annotated box with the detector's ``margin``, else ``FALLBACK_MARGIN``, is used and the
    sample is marked ``missed``). ``like`` reuses another preparation's boxes (same samples, another size).
    A bad sample (see :func:`check_sample`) is an error, or with ``skip_bad`` skipped and listed
    in ``Prepared.skipped``. With ``context`` > 0 each crop is also cut with ``context`` x
    ``input_size`` more pixels on each side (``Prepared.context``), for face-box jitter."""
    import torch

    images, points, boxes, ids, missed, skipped, contexts, frames, origins = [], [], [], [], [], [], [], [], []
    pad = int(round(context * input_size))
    for i in indices:
        try:
            s = dataset[int(i)]
            gray = check_sample(s)
        except KpbenchError as exc:
            if not skip_bad:
                raise
            skipped.append(str(exc))
            continue
        pts = convert(s.points, s.schema, schema)
        if like is not None:  # the same samples were kept there (the checks are deterministic)
            box, miss = like.boxes[len(ids)], bool(like.missed[len(ids)])
        else:  # the face box comes from the annotation as it is (see points_box), not the target schema
            box = detect(s.image, s.points)
            miss = box is None
            if miss:
                box = points_box(s.points, getattr(detect, "margin", FALLBACK_MARGIN)) or image_box(gray)
        box = np.asarray(box, dtype=np.float32)
        images.append(crop_resize(gray, box, input_size))
        if pad:  # the same centre and angle, a larger side
            grow = box[2] * pad / input_size
            contexts.append(crop_resize(gray, (box[0] - grow, box[1] - grow, box[2] + 2 * grow, *box[3:]),
                                        input_size + 2 * pad))
        points.append(pts)
        boxes.append(box)
        ids.append(s.id)
        frames.append(s.frame)
        origins.append(float(s.origin))
        missed.append(miss)
        if on_item:
            on_item()
    if hasattr(detect, "flush"):  # a detector that keeps its boxes (kpbench.boxcache)
        detect.flush()
    if not ids:
        raise KpbenchError("a data split is empty: use more samples or change data.split")
    boxes_a = stack_boxes(boxes)
    points_a = np.stack(points).astype(np.float32)
    origin_a = np.asarray(origins, np.float32)
    return Prepared(
        images=torch.from_numpy(np.stack(images).astype(np.float32))[:, None],
        targets=torch.from_numpy(to_crop(points_a - origin_a[:, None, None], boxes_a).astype(np.float32)),
        points=points_a,
        boxes=boxes_a,
        ids=ids,
        missed=np.array(missed, dtype=bool),
        skipped=skipped,
        context=torch.from_numpy(np.stack(contexts).astype(np.float32))[:, None] if pad else None,
        frames=frames,
        origin=origin_a,
    )
