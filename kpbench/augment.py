"""Random affine (rotate / scale / translate) and brightness/contrast augmentation for training batches.

Conventions (the same as :mod:`kpbench.train` and :mod:`kpbench.data`):

* ``x`` is a batch of images ``(B, C, H, W)`` with values in [0, 1]; ``y`` is ``(B, K, 2)`` targets
  ``(x, y)`` in crop coordinates scaled to [0, 1] with the pixel-EDGE convention: a point at pixel-edge
  coordinate ``u`` (pixel centers at ``j + 0.5``) has target ``u / W`` (``u / H`` for the row). NaN marks
  a missing point and stays NaN.
* With ``align_corners=False`` a target ``t`` is exactly the normalized coordinate ``2 t - 1`` used by
  :func:`torch.nn.functional.affine_grid`, so all geometry is done in that [-1, 1] space.
* The transform is described FORWARD, i.e. where pixel content goes: ``p_out = A p_in + b`` about the
  crop center. ``affine_grid`` wants the opposite direction (for every output pixel, where to sample
  the input), so the images are warped with ``[A^-1 | -A^-1 b]`` while the points move with ``A, b``.
* Rotation angles are in degrees; positive = counter-clockwise as seen on screen (rows growing
  downward), the same direction as ``torch.rot90(img, 1, dims=(-2, -1))``.
* Scale > 1 enlarges the content about the center; shifts are fractions of the side (+x = right,
  +y = down).
* Sampling is bilinear with ``padding_mode="zeros"``: regions uncovered by the transform become black
  (0), no border replication. Points that leave the image are KEPT with their (outside [0, 1]) targets;
  the model can still regress them, and nothing is masked.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def affine_matrices(angle: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Forward matrices ``(B, 2, 3)`` in normalized coordinates: where content at ``p`` goes.

    ``angle`` (B,) degrees (positive = counter-clockwise on screen), ``scale`` (B,), ``shift`` (B, 2)
    as fractions of the side (x, y); ``size = (H, W)`` keeps rotations angle-true on non-square images.
    """
    h, w = size
    rad = angle * (math.pi / 180.0)
    c, s = torch.cos(rad), torch.sin(rad)
    # Rows grow downward, so a visually counter-clockwise rotation is [[c, s], [-s, c]] in (x, y).
    # In normalized space x is divided by W/2 and y by H/2: conjugate by D = diag(W/2, H/2).
    a = torch.stack([torch.stack([c, s * h / w], -1), torch.stack([-s * w / h, c], -1)], -2)
    a = a * scale[:, None, None]
    return torch.cat([a, 2.0 * shift[:, :, None]], dim=-1)


def apply_affine(x: torch.Tensor, y: torch.Tensor, angle: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor):
    """Warp images ``x`` and move targets ``y`` by explicit per-image angle/scale/shift (see module doc)."""
    fwd = affine_matrices(angle, scale, shift, tuple(x.shape[-2:])).to(x.dtype)
    inv_a = torch.linalg.inv(fwd[:, :, :2])
    theta = torch.cat([inv_a, -inv_a @ fwd[:, :, 2:]], dim=-1)  # output pixel -> input pixel
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    fwd = fwd.to(y.device, y.dtype)
    n = 2 * y - 1
    ny = n @ fwd[:, :, :2].transpose(1, 2) + fwd[:, None, :, 2]  # NaN stays NaN
    return out, (ny + 1) / 2


def adjust_intensity(x: torch.Tensor, contrast: torch.Tensor, brightness: torch.Tensor) -> torch.Tensor:
    """Per image ``(x - mean) * contrast + mean + brightness``, clamped to [0, 1]."""
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    c, b = contrast.view(-1, 1, 1, 1).to(x), brightness.view(-1, 1, 1, 1).to(x)
    return ((x - mean) * c + mean + b).clamp(0.0, 1.0)


def affine_batch(x: torch.Tensor, y: torch.Tensor, gen: torch.Generator, rotate: float = 0.0, scale: float = 0.0,
                 translate: float = 0.0, brightness: float = 0.0, contrast: float = 0.0, prob: float = 1.0):
    """Randomly augment each image (with probability ``prob``); return ``(x, y)``.

    Angle ~ U[-rotate, rotate] degrees, scale factor ~ U[1 - scale, 1 + scale], shift ~
    U[-translate, translate] of the side in x and y (one affine per image, targets follow the pixels);
    contrast factor ~ U[1 - contrast, 1 + contrast], brightness offset ~ U[-brightness, brightness]
    (targets unchanged). Randomness comes from the CPU generator ``gen`` (one ``(B, 7)`` draw); when
    every magnitude is 0 the inputs are returned as they are and nothing is drawn.
    """
    geometric = bool(rotate or scale or translate)
    photometric = bool(brightness or contrast)
    if not (geometric or photometric):
        return x, y
    b = x.shape[0]
    u = 2 * torch.rand(b, 7, generator=gen, dtype=torch.float64) - 1  # uniform in [-1, 1)
    hit = (u[:, 6] + 1) / 2 < prob
    u = u.to(x.device)
    out_x, out_y = x, y
    if geometric:
        out_x, out_y = apply_affine(x, y, rotate * u[:, 0], 1 + scale * u[:, 1], translate * u[:, 2:4])
    if photometric:
        out_x = adjust_intensity(out_x, 1 + contrast * u[:, 4], brightness * u[:, 5])
    hx, hy = hit.to(x.device).view(-1, 1, 1, 1), hit.to(y.device).view(-1, 1, 1)
    return torch.where(hx, out_x, x), torch.where(hy, out_y, y)


def jitter_crops(context: torch.Tensor, y: torch.Tensor, size: int, gen: torch.Generator, scale: float = 0.0,
                 shift: float = 0.0, rotate: float = 0.0):
    """Face-box jitter: crops of ``size`` px cut from ``context`` crops ``(B, C, Sc, Sc)`` whose central
    ``size`` x ``size`` region is the nominal crop (the same box, ``Sc / size`` times larger), at a box
    whose side is multiplied by ``exp(scale * z)``, whose centre moves by ``shift * z`` of the side in x
    and in y, and which turns by ``rotate * z`` degrees; each ``z ~ N(0, 1)`` clipped to [-2, 2], one
    ``(B, 4)`` draw from ``gen``. This is how a real detector's box scatters around the annotated
    one (``kpbench calibrate`` measures the spread); unlike :func:`apply_affine` the new box sees the
    photo's real surroundings, not black padding. Targets ``y`` (nominal crop coordinates in [0, 1])
    become the jittered crop's."""
    b, c, sc, _ = context.shape
    z = torch.randn(b, 4, generator=gen, dtype=torch.float64).clamp(-2.0, 2.0)
    k = torch.exp(scale * z[:, 0])
    t = shift * z[:, 1:3]
    rad = rotate * z[:, 3] * (math.pi / 180.0)
    cos, sin = torch.cos(rad), torch.sin(rad)
    m = k[:, None, None] * torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
    # Output pixel at normalized u samples the nominal crop at m u + 2 t, i.e. the context at a (m u + 2 t).
    theta = (size / sc) * torch.cat([m, 2 * t[:, :, None]], dim=-1)
    grid = F.affine_grid(theta.to(context.dtype), [b, c, size, size], align_corners=False)
    out = F.grid_sample(context, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    n = (2 * y.to(torch.float64) - 1) - 2 * t[:, None, :]  # NaN stays NaN
    u = n @ torch.linalg.inv(m).transpose(1, 2)
    return out, ((u + 1) / 2).to(y.dtype)
