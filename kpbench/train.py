"""The one training loop, used by every trainable model plugin: Adam on a masked MSE in crop
coordinates, optional flip augmentation that swaps left/right points and random erasing,
validation every epoch, the best epoch (by a score the runner supplies, lower is better) kept and
checkpointed. A network may add a term to the loss through ``auxiliary_loss(pred, target)``."""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from kpbench.data import Prepared
from kpbench.evaluate import predict
from kpbench.io import atomic_torch_save
from kpbench.keypoints import Schema


class Regressor(nn.Module):
    """A model plugin's network plus the training mean shape it predicts offsets from (unless the
    network says ``absolute_output = True``, as heatmap models do)."""

    def __init__(self, net: nn.Module, mean_shape: torch.Tensor):
        super().__init__()
        self.net = net
        self.register_buffer("mean_shape", mean_shape.float().clone())

    def forward(self, x):
        out = self.net(x).view(x.shape[0], -1, 2)
        return out if getattr(self.net, "absolute_output", False) else out + self.mean_shape


def backbone_modules(net: nn.Module) -> list[nn.Module]:
    """The pretrained part of a model, by convention ``net.backbone`` or ``net.backbones``
    (a ModuleDict, one per branch); what ``train.freeze_backbone`` freezes."""
    if isinstance(getattr(net, "backbones", None), nn.ModuleDict):
        return list(net.backbones.values())
    return [net.backbone] if isinstance(getattr(net, "backbone", None), nn.Module) else []


def masked_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MSE over the coordinates whose target is known (NaN marks a missing point)."""
    mask = ~torch.isnan(target)
    diff = torch.where(mask, pred - torch.nan_to_num(target), torch.zeros_like(pred))
    return diff.pow(2).sum() / mask.sum().clamp(min=1)


def mean_shape(targets: torch.Tensor) -> torch.Tensor:
    return torch.nan_to_num(torch.nanmean(targets, dim=0), nan=0.5)


def flip_batch(x: torch.Tensor, y: torch.Tensor, which: torch.Tensor, perm: list[int]):
    """Mirror the images in ``which`` and their points: x -> 1 - x, left/right pairs swapped."""
    x = torch.where(which[:, None, None, None], x.flip(-1), x)
    fy = y[:, perm].clone()
    fy[..., 0] = 1 - fy[..., 0]
    return x, torch.where(which[:, None, None], fy, y)


def erase_batch(x: torch.Tensor, prob: float, gen: torch.Generator) -> torch.Tensor:
    """Random erasing (occlusion): with probability ``prob`` an image gets a rectangle, 10-40 % of
    each side, filled with noise. Points keep their targets: the model must infer occluded ones."""
    b, _, h, w = x.shape
    u = torch.rand(b, 5, generator=gen)
    hit = u[:, 0] < prob
    eh, ew = (0.1 + 0.3 * u[:, 1]) * h, (0.1 + 0.3 * u[:, 2]) * w
    y0, x0 = u[:, 3] * (h - eh), u[:, 4] * (w - ew)
    rows, cols = torch.arange(h).view(1, h, 1), torch.arange(w).view(1, 1, w)
    box = ((rows >= y0.view(-1, 1, 1)) & (rows < (y0 + eh).view(-1, 1, 1)) & (cols >= x0.view(-1, 1, 1))
           & (cols < (x0 + ew).view(-1, 1, 1)) & hit.view(-1, 1, 1))
    return torch.where(box[:, None], torch.rand(x.shape, generator=gen), x)


@dataclass
class History:
    rows: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    best_score: float = math.inf


def train(
    net: nn.Module,
    train_data: Prepared,
    val_data: Prepared,
    schema: Schema,
    cfg: dict,
    seed: int,
    score: Callable[[np.ndarray], float],
    checkpoint: Path,
    device: str = "cpu",
    on_batch: Callable[[int, int, int], None] | None = None,
    on_epoch: Callable[[dict], None] | None = None,
) -> tuple[Regressor, History]:
    """Train ``net``; return it (best epoch's weights loaded) and the per-epoch history.

    ``score(pred_crop)`` rates validation predictions (lower is better); ``on_batch(epoch, done,
    total)`` and ``on_epoch(row)`` report progress.
    """
    model = Regressor(net, mean_shape(train_data.targets)).to(device)
    frozen = backbone_modules(net) if cfg.get("freeze_backbone") else []
    for module in frozen:
        module.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    epochs = int(cfg["epochs"]) if params else 0
    opt = torch.optim.Adam(params, lr=float(cfg["lr"]), weight_decay=float(cfg["weight_decay"])) if params else None
    gen = torch.Generator().manual_seed(seed)
    perm = list(schema.flip_permutation)
    bs = int(cfg["batch_size"])
    n = len(train_data)
    hist = History()
    best_state = copy.deepcopy(model.state_dict())
    stale = 0
    for epoch in range(epochs + 1):  # epoch 0 evaluates the untrained model (and is all a fixed model gets)
        t0 = time.perf_counter()
        train_loss = float("nan")
        if epoch > 0:
            model.train()
            for module in frozen:  # frozen backbones keep their BatchNorm statistics too
                module.eval()
            order = torch.randperm(n, generator=gen)
            batches = [order[i:i + bs] for i in range(0, n, bs)]
            if len(batches) > 1 and len(batches[-1]) < 2:  # BatchNorm cannot train on a batch of one
                batches.pop()
            total, count = 0.0, 0
            for b, idx in enumerate(batches):
                x, y = train_data.images[idx], train_data.targets[idx]
                if cfg["flip"]:
                    x, y = flip_batch(x, y, torch.rand(len(idx), generator=gen) < 0.5, perm)
                if cfg.get("erase"):
                    x = erase_batch(x, float(cfg["erase"]), gen)
                x, y = x.to(device), y.to(device)
                pred = model(x)
                mse = masked_mse(pred, y)
                loss = mse + net.auxiliary_loss(pred, y) if hasattr(net, "auxiliary_loss") else mse
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += mse.item() * len(idx)  # the reported training loss is the MSE alone
                count += len(idx)
                if on_batch:
                    on_batch(epoch, b + 1, len(batches))
            train_loss = total / count
        pred = predict(model, val_data.images, device=device)
        val_loss = float(masked_mse(torch.from_numpy(pred), val_data.targets))
        val_score = float(score(pred))
        row = {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "val_score": val_score,
               "seconds": time.perf_counter() - t0}
        hist.rows.append(row)
        if val_score < hist.best_score or epoch == 0:
            hist.best_epoch, hist.best_score, stale = epoch, val_score, 0
            best_state = copy.deepcopy(model.state_dict())
            atomic_torch_save({"state_dict": best_state, "epoch": epoch, "val_score": val_score}, checkpoint)
        else:
            stale += 1
        if on_epoch:
            on_epoch(row)
        if cfg.get("patience") and stale >= int(cfg["patience"]):
            break
    model.load_state_dict(best_state)
    model.eval()
    return model, hist
