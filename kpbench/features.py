"""Frozen-phase feature cache: a frozen backbone's features, computed once per image and per flip,
kept on disk so that a second run (or a resumed one) reuses them.

The key covers everything the features depend on: the model class, the frozen part's weights
(hashed), the crops themselves (each split's fingerprint, which covers input size and
preprocessing) and the cache format. The directory is ``$KPBENCH_CACHE_DIR`` or
``~/.cache/kpbench``, under ``features/``; delete it to reclaim the space.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from kpbench.data import Prepared
from kpbench.io import atomic_torch_save, cache_root
from kpbench.weights import read_checkpoint

VERSION = 1


def cache_dir() -> Path:
    return cache_root() / "features"


def weights_digest(modules) -> str:
    h = hashlib.sha256()
    for m in modules:
        for name, t in m.state_dict().items():
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def compute(model, images: torch.Tensor, device: str, batch_size: int = 64) -> torch.Tensor:
    """``model.net.frozen_features`` of every image, in eval mode under inference mode."""
    net = model.net
    was_training = net.training
    net.eval()
    with torch.inference_mode():
        out = torch.cat([net.frozen_features(images[i:i + batch_size].to(device)).float().cpu()
                         for i in range(0, len(images), batch_size)])
    net.train(was_training)
    return out


def cached_features(model, train: Prepared, val: Prepared, flip: bool, device: str, backbones,
                    directory: Path | None = None, on_compute=None) -> dict[str, torch.Tensor]:
    """{"train", "train_flip" (if ``flip``), "val"}: features per image, from disk when present."""
    key = hashlib.sha256("|".join([
        str(VERSION), type(model.net).__module__, type(model.net).__qualname__, weights_digest(backbones),
        train.fingerprint(), val.fingerprint(), str(bool(flip))]).encode()).hexdigest()[:24]
    path = (directory or cache_dir()) / f"{key}.pt"
    if path.is_file():
        return read_checkpoint(path)
    if on_compute:
        on_compute(path)
    feats = {"train": compute(model, train.images, device), "val": compute(model, val.images, device)}
    if flip:
        feats["train_flip"] = compute(model, train.images.flip(-1), device)
    atomic_torch_save(feats, path)
    return feats
