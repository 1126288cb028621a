"""The faces ``kpbench predict`` found, drawn on their photo or video frame: each face's box and
keypoints, with PIL only (the run reports' figures, :mod:`kpbench.plots`, need matplotlib, whose
import alone costs a second at start-up)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from kpbench.data import to_image_pixels
from kpbench.io import atomic_write_bytes

PRED_COLOR = "#d62728"  # predicted points, here and in the reports' overlays
BOX_COLOR = "#1f77b4"


def draw_faces(image: np.ndarray, points: np.ndarray, boxes: np.ndarray):
    """A PIL RGB copy of ``image`` with every face's box and predicted keypoints drawn.
    ``points`` (F,K,2) and ``boxes`` (F,3|4) = x0, y0, side[, angle], in the image's pixels."""
    img = np.asarray(image)
    if img.dtype != np.uint8:
        img = np.clip(np.rint(img.astype(np.float32) * 255), 0, 255).astype(np.uint8)
    im = Image.fromarray(img).convert("RGB")
    draw = ImageDraw.Draw(im)
    boxes = np.asarray(boxes, dtype=np.float64)
    if not len(boxes):  # a photo or video frame without a face: drawn as it is
        return im
    corners = to_image_pixels(np.array([[[0, 0], [1, 0], [1, 1], [0, 1], [0, 0]]] * len(boxes), float), boxes)
    for box, corner, p in zip(boxes, corners, points):
        side = float(box[2])
        draw.line([tuple(c) for c in corner], fill=BOX_COLOR, width=max(1, int(round(side / 150))))
        r = max(1.5, side / 90)
        for x, y in p[~np.isnan(p).any(axis=1)]:
            draw.ellipse((x - r, y - r, x + r, y + r), fill=PRED_COLOR, outline="white")
    return im


def photo_keypoints(image: np.ndarray, points: np.ndarray, boxes: np.ndarray, path) -> Path:
    """A photo with every face's box and predicted keypoints drawn (``kpbench predict``,
    :func:`draw_faces`), written as JPEG (PNG for a ``.png`` path) with PIL: no matplotlib figure,
    a few milliseconds a photo."""
    im = draw_faces(image, points, boxes)
    buf = io.BytesIO()
    if str(path).lower().endswith(".png"):
        im.save(buf, format="PNG", compress_level=1)
    else:
        im.save(buf, format="JPEG", quality=90)
    atomic_write_bytes(Path(path), buf.getvalue())
    return Path(path)
