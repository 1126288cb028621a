"""What the reference models (dlib, MediaPipe Face Mesh: landmark tools run as their users run
them, scored beside kpbench's trained models) share: they predict the 68 iBUG points, answer in
the run's schema (68, or the 15 Kaggle points mapped from them), do not train, take no test-time
flip averaging, see the crops as upscaled 8-bit gray images and count the faces they had to
answer for without finding one.

A reference subclasses :class:`ReferenceModel` and writes ``points68(images, gray) -> (B, 68, 2)``
crop fractions (pixel edges) for (B, h, w) uint8 gray crops upscaled to at least ``min_size`` px
(``gray``: the crops as given, (B, 1, H, W) float), and ``photo_keypoints(image)`` for whole
photos (:meth:`in_schema` maps each face's points)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from kpbench.errors import KpbenchError
from kpbench.keypoints import convert

REFERENCE_POINTS = (15, 68)  # the schemas a reference answers in: kaggle15 (mapped from its 68) or ibug68


def upscaled_uint8(gray: torch.Tensor, h: int, w: int) -> np.ndarray:
    """(B, 1, H0, W0) float in [0, 1] -> (B, h, w) uint8, bicubic (pixel-edge aligned) where resized."""
    if gray.shape[-2:] != (h, w):
        gray = F.interpolate(gray, size=(h, w), mode="bicubic", align_corners=False)
    return np.ascontiguousarray((gray[:, 0].clamp(0, 1) * 255).round().to(torch.uint8).numpy())


class ReferenceModel(nn.Module):
    """(B, C, H, W) face crops in [0, 1] -> (B, 2K) absolute crop coordinates in [0, 1] (pixel
    edges), through :meth:`points68`. No parameters."""

    absolute_output = True
    flip_test = False  # a reference runs as its users run it: no test-time flip averaging
    learns_points = False  # and its points are its own, numbered as it numbers them
    name = "reference"

    def __init__(self, num_keypoints: int, min_size: int):
        super().__init__()
        if num_keypoints not in REFERENCE_POINTS:
            raise KpbenchError(
                f"model {self.name!r} predicts the 68 iBUG points (mapped to kaggle15 for 15); it cannot output"
                f" {num_keypoints} points: use a dataset schema with 15 or 68 points")
        self.num_keypoints, self.min_size = num_keypoints, int(min_size)
        self.images = 0  # faces predicted since construction / reset_stats()
        self.fallbacks = 0  # of those, the tool found no face and a fallback answered

    def reset_stats(self) -> None:
        self.images = self.fallbacks = 0

    def in_schema(self, points68: np.ndarray) -> np.ndarray:
        """(..., 68, 2) iBUG points as the run's schema wants them."""
        return convert(points68, "ibug68", "kaggle15") if self.num_keypoints == 15 else points68

    def points68(self, images: np.ndarray, gray: torch.Tensor) -> np.ndarray:
        """(B, h, w) uint8 gray crops -> (B, 68, 2) crop fractions (pixel edges)."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gray = x.detach().float().cpu().mean(1, keepdim=True)
        h, w = x.shape[-2:]
        f = max(1.0, self.min_size / min(h, w))  # these tools want a decent resolution: small crops upscaled
        out = self.in_schema(self.points68(upscaled_uint8(gray, round(h * f), round(w * f)), gray).astype(np.float32))
        self.images += len(x)
        return torch.from_numpy(np.ascontiguousarray(out)).reshape(len(x), -1).to(device=x.device, dtype=x.dtype)
