"""``synthetic``: procedurally rendered grayscale faces with exact ground truth for the 15 points.

Deterministic from (seed, index): varied head position, scale, in-plane rotation, a yaw-like
horizontal squeeze (features shift and compress, the nose tip most), expression (mouth opening,
smile, brow raise), gaze, hair, lighting gradient, background clutter, blur and noise. Shapes are
drawn in the face's own canonical frame (face half-width 1, y down, subject's left at +x), so the
15 points are known exactly; they are then mapped to pixel coordinates (pixel centers at integers).
"""

from __future__ import annotations

import numpy as np

import kpbench
from kpbench.data import Sample

VERSION = 1  # bump when the renderer changes: it is part of the dataset fingerprint


def _soft(signed_dist: np.ndarray, px: float) -> np.ndarray:
    """Anti-aliased inside-mask from a signed distance (negative inside), edge about one pixel wide."""
    return np.clip(0.5 - signed_dist / px, 0.0, 1.0)


def _ellipse(u, v, cx, cy, rx, ry, px):
    d = np.sqrt(((u - cx) / rx) ** 2 + ((v - cy) / ry) ** 2)
    return _soft((d - 1.0) * min(rx, ry), px)


def _segment(u, v, a, b, width, px):
    ab = np.subtract(b, a)
    t = np.clip(((u - a[0]) * ab[0] + (v - a[1]) * ab[1]) / (ab @ ab), 0, 1)
    d = np.hypot(u - a[0] - t * ab[0], v - a[1] - t * ab[1])
    return _soft(d - width, px)


def _paint(img, mask, value):
    img *= 1 - mask
    img += mask * value


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    if sigma < 0.3:
        return img
    r = int(np.ceil(3 * sigma))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    h, w = img.shape
    pad = np.pad(img, r, mode="edge")
    rows = sum(k[i] * pad[:, i:i + w] for i in range(2 * r + 1))
    return sum(k[i] * rows[i:i + h] for i in range(2 * r + 1))


def render(seed: int, index: int, size: int = 96) -> tuple[np.ndarray, np.ndarray]:
    """One face: (size, size) uint8 image and (15, 2) float32 points in its pixels."""
    rng = np.random.default_rng([seed, index, VERSION])
    U = rng.uniform

    # --- geometry in the canonical frame ------------------------------------------------------
    ex, ey, ew, eh = U(0.33, 0.44), U(-0.22, -0.10), U(0.13, 0.19), U(0.05, 0.09)
    raise_ = U(0.0, 0.14)
    by = ey - U(0.17, 0.24) - raise_
    ny = U(0.15, 0.30)
    my, mw = U(0.48, 0.62), U(0.22, 0.34)
    open_, smile = U(0.0, 1.0) ** 2 * 0.22, U(-0.04, 0.06)
    yaw = U(-0.45, 0.45)
    squeeze, shift = 1 - 0.3 * abs(yaw), 0.3 * yaw

    pts = np.array([
        [ex, ey], [-ex, ey],                                   # eye centers (subject's left first)
        [ex - ew, ey], [ex + ew, ey], [-ex + ew, ey], [-ex - ew, ey],   # eye corners
        [ex - 0.13, by], [ex + 0.22, by + U(0.0, 0.06)],       # left brow inner, outer
        [-ex + 0.13, by], [-ex - 0.22, by + U(0.0, 0.06)],     # right brow inner, outer
        [0.0, ny],                                             # nose tip
        [mw, my - smile], [-mw, my - smile],                   # mouth corners
        [0.0, my - 0.05 - 0.3 * open_], [0.0, my + 0.06 + open_],      # lip centers
    ])
    pts[:, 0] = pts[:, 0] * squeeze + shift
    pts[10, 0] += 0.25 * yaw  # the nose tip sticks out, so it moves most with yaw

    # --- canonical -> pixels: similarity transform ------------------------------------------
    scale = size * U(0.22, 0.30)  # pixels per canonical unit (face half-width)
    angle = np.deg2rad(U(-18, 18))
    cx, cy = size / 2 + U(-0.08, 0.08) * size, size / 2 + U(-0.06, 0.06) * size
    c, s = np.cos(angle), np.sin(angle)
    rot = np.array([[c, -s], [s, c]])
    points = (pts @ rot.T) * scale + [cx, cy]

    # pixel grid -> canonical coordinates
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    dx, dy = (xx - cx) / scale, (yy - cy) / scale
    u, v = c * dx + s * dy, -s * dx + c * dy
    px = 1.0 / scale  # one pixel in canonical units

    # --- background: gradient, clutter ----------------------------------------------------------
    bg = U(0.1, 0.9)
    img = np.full((size, size), bg) + U(-0.2, 0.2) * (xx / size - 0.5) + U(-0.2, 0.2) * (yy / size - 0.5)
    for _ in range(rng.integers(3, 12)):
        kind = rng.integers(3)
        qx, qy, r = U(0, size), U(0, size), U(2, size / 4)
        if kind == 0:
            m = np.clip(r - np.hypot(xx - qx, yy - qy) + 0.5, 0, 1)
        elif kind == 1:
            m = ((np.abs(xx - qx) < r) & (np.abs(yy - qy) < U(2, size / 4))).astype(float)
        else:
            t = U(0, np.pi)
            m = np.clip(U(1, 3) - np.abs((xx - qx) * np.sin(t) - (yy - qy) * np.cos(t)), 0, 1)
        _paint(img, m, U(0, 1))

    # --- the face ---------------------------------------------------------------------------------
    skin = U(0.35, 0.85)
    dark = skin * U(0.15, 0.45)
    if rng.random() < 0.7:  # hair
        _paint(img, _ellipse(u, v, 0, -0.35, 1.12, 1.05, px), U(0.02, 0.5))
    _paint(img, _ellipse(u, v, shift * 0.5, 0.12, 1.0 * (1 - 0.15 * abs(yaw)), 1.30, px), skin)
    # a soft shadow on the far side of a turned face
    _paint(img, _ellipse(u, v, -np.sign(yaw) * 0.85, 0.1, 0.35, 1.2, px) * min(1.0, abs(yaw) * 1.5) * 0.5,
           skin * 0.6)
    for k, (eye_c, inner, outer) in enumerate(((0, 2, 3), (1, 4, 5))):
        ecx, ecy = pts[eye_c]
        rx = abs(pts[outer, 0] - pts[inner, 0]) / 2
        _paint(img, _ellipse(u, v, ecx, ecy, rx, eh, px), min(1.0, skin + U(0.1, 0.3)))  # sclera
        gaze = U(-0.3, 0.3) * rx
        _paint(img, _ellipse(u, v, ecx + gaze, ecy, eh * 0.95, eh * 0.95, px), dark * 0.5)  # iris
        _paint(img, _segment(u, v, pts[inner] + [0, -eh * 0.6], pts[outer] + [0, -eh * 0.6], 0.015, px), dark)
    brow_w = U(0.025, 0.05)
    for a, b in ((6, 7), (8, 9)):
        _paint(img, _segment(u, v, pts[a], pts[b], brow_w, px), dark)
    nx, nyy = pts[10]
    mid = (pts[0, 0] + pts[1, 0]) / 2
    ridge_top = np.array([mid + 0.3 * (nx - mid), ey + 0.05])
    _paint(img, _segment(u, v, ridge_top, np.array([nx, nyy - 0.04]), 0.02, px), skin * 0.8)  # nose ridge
    for side in (-1, 1):
        _paint(img, _ellipse(u, v, nx + side * 0.08 * squeeze, nyy + 0.015, 0.04, 0.025, px), dark)
    _paint(img, _ellipse(u, v, nx, nyy - 0.01, 0.05, 0.04, px), min(1.0, skin + 0.12))  # tip highlight
    # mouth: lips as two half-ellipses between the corners, dark opening when open
    mcx = (pts[11, 0] + pts[12, 0]) / 2
    mcy = (pts[11, 1] + pts[12, 1]) / 2
    mrx = abs(pts[11, 0] - pts[12, 0]) / 2
    lips = skin * U(0.45, 0.75)
    top, bottom = mcy - pts[13, 1], pts[14, 1] - mcy
    upper = _ellipse(u, v, mcx, mcy, mrx, max(top, 0.02), px) * (v <= mcy)
    lower = _ellipse(u, v, mcx, mcy, mrx, max(bottom, 0.02), px) * (v > mcy)
    _paint(img, np.maximum(upper, lower), lips)
    if open_ > 0.02:
        _paint(img, _ellipse(u, v, mcx, mcy + open_ * 0.3, mrx * 0.8, open_ * 0.6, px), dark * 0.3)
    else:
        _paint(img, _segment(u, v, np.array([mcx - mrx, mcy]), np.array([mcx + mrx, mcy]), 0.012, px), dark * 0.5)

    # --- photometric: lighting gradient, blur, noise -------------------------------------------
    ang = U(0, 2 * np.pi)
    img *= 1 + U(0.0, 0.6) * ((xx / size - 0.5) * np.cos(ang) + (yy / size - 0.5) * np.sin(ang))
    img = _blur(img, U(0.0, 1.3))
    img += rng.normal(0, U(0.005, 0.06), img.shape)
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8), points.astype(np.float32)


class SyntheticFaces:
    """``n`` rendered faces; sample ``i`` is the same for a given (seed, size) on every machine."""

    schema = "kaggle15"

    def __init__(self, path=None, n: int = 1500, size: int = 96, seed: int = 0):
        if path:
            raise kpbench.KpbenchError(f"the synthetic dataset takes no path (got {path!r})")
        if int(n) < 3 or int(size) < 32:
            raise kpbench.KpbenchError(f"synthetic dataset needs n >= 3 and size >= 32, got n={n}, size={size}")
        self.n, self.size, self.seed = int(n), int(size), int(seed)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> Sample:
        if not 0 <= index < self.n:
            raise IndexError(index)
        image, points = render(self.seed, index, self.size)
        return Sample(image=image, points=points, id=f"synthetic-{self.seed}-{index:05d}", schema=self.schema)


@kpbench.hookimpl
def kpbench_datasets():
    return [kpbench.DatasetSpec("synthetic", SyntheticFaces,
                                "Procedural grayscale faces with exact 15-point ground truth (embedded default)")]
