"""The one training loop, used by every trainable model plugin.

Adam on a masked loss in crop coordinates (fractions of the crop side, or its pixels with
``targets: pixels``; MSE, or L1 / Wing; the reported training loss is
always the MSE); flip (left/right points swapped), random affine,
photometric and erasing augmentation; validation every epoch, the best epoch (by the runner's
score, lower is better) kept and checkpointed; an epoch checkpoint (``last.pt``) to resume from.

The paper's protocol: backbones frozen for ``freeze_epochs`` epochs, then the last stage of each
(or all of it) fine-tuned at ``backbone_lr`` x the learning rate. While the backbones are frozen
and the augmentation is deterministic (none, or the flip), a model that splits into
``frozen_features(x)`` and ``head_forward(z)`` trains its head on features computed once per image
and per flip, cached on disk (see :mod:`kpbench.features`), which gives the same updates as
recomputing them. A network may add a term to the loss through ``auxiliary_loss(pred, target)``.
"""

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

from kpbench.augment import affine_batch, jitter_crops
from kpbench.config import TrainSettings
from kpbench.data import Prepared
from kpbench.evaluate import predict
from kpbench.io import atomic_torch_save
from kpbench.keypoints import Schema
from kpbench.protocols import AuxiliaryLoss, SplitsInTwo
from kpbench.regressor import Regressor, backbone_modules, frozen_norms_to_eval, set_trainable
from kpbench.weights import read_checkpoint

AUGMENT_KEYS = ("rotate", "scale", "translate", "brightness", "contrast")
JITTER_KEYS = ("scale", "shift", "rotate")


def box_jitter(cfg: TrainSettings) -> dict:
    """``train.box_jitter`` as floats; empty when every magnitude is 0."""
    jitter = {k: float(getattr(cfg.box_jitter, k)) for k in JITTER_KEYS}
    return jitter if any(jitter.values()) else {}


def masked_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MSE over the coordinates whose target is known (NaN marks a missing point)."""
    mask = ~torch.isnan(target)
    diff = torch.where(mask, pred - torch.nan_to_num(target), torch.zeros_like(pred))
    return diff.pow(2).sum() / mask.sum().clamp(min=1)


def masked_loss(pred: torch.Tensor, target: torch.Tensor, kind: str = "mse", side: float = 1.0) -> torch.Tensor:
    """The training loss over known coordinates: ``mse``, ``l1``, or ``wing`` (Feng et al. 2018:
    w·ln(1 + |d|/ε) for |d| < w, |d| − C beyond; w = 0.04, ε = 0.008 of the crop side, i.e. the
    paper's 10 and 2 pixels at 256 px). Coordinates are in units where the crop side is ``side``
    (1, or the crop's pixels with ``train.targets: pixels``)."""
    if kind == "mse":
        return masked_mse(pred, target)
    mask = ~torch.isnan(target)
    d = torch.where(mask, pred - torch.nan_to_num(target), torch.zeros_like(pred)).abs()
    if kind == "wing":
        w, eps = 0.04 * side, 0.008 * side
        d = torch.where(d < w, w * torch.log1p(d / eps), d - (w - w * math.log1p(w / eps)))
    elif kind != "l1":
        raise ValueError(f"unknown loss {kind!r}")
    return d.sum() / mask.sum().clamp(min=1)


def mean_shape(targets: torch.Tensor) -> torch.Tensor:
    return torch.nan_to_num(torch.nanmean(targets, dim=0), nan=0.5)


def reported_origin(net, train_data: Prepared) -> float:
    """How a network trained on ``train_data`` numbers the points it reports (``Regressor.origin``):
    as its training annotations did (their mean ``Sample.origin``), or from 0 for one whose points
    are not learnt from them (``learns_points = False``: a reference tool's own)."""
    return train_data.mean_origin() if getattr(net, "learns_points", True) else 0.0


def flip_points(y: torch.Tensor, which: torch.Tensor, perm: list[int]) -> torch.Tensor:
    """Mirrored targets for the rows in ``which``: x -> 1 - x, left/right pairs swapped (exact for
    targets that mark pixels, as ``Prepared.targets`` do)."""
    fy = y[:, perm].clone()
    fy[..., 0] = 1 - fy[..., 0]
    return torch.where(which[:, None, None], fy, y)


def flip_batch(x: torch.Tensor, y: torch.Tensor, which: torch.Tensor, perm: list[int]):
    """Mirror the images in ``which`` and their points."""
    return torch.where(which[:, None, None, None], x.flip(-1), x), flip_points(y, which, perm)


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


def can_cache(net: nn.Module, cfg: TrainSettings) -> bool:
    """Frozen-phase feature caching applies: the model splits in two, it has a frozen phase and
    the augmentation is deterministic (at most the flip)."""
    return (cfg.feature_cache and cfg.freeze_epochs > 0
            and isinstance(net, SplitsInTwo) and bool(backbone_modules(net))
            and not cfg.erase and not any(getattr(cfg.augment, k) for k in AUGMENT_KEYS) and not box_jitter(cfg))


def _scheduler(opt, cfg: TrainSettings, epochs: int):
    kind = cfg.schedule
    if kind == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(epochs, 1))
    if kind == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=0.5, patience=2)
    return None


def param_groups(model: Regressor, cfg: TrainSettings) -> list[dict]:
    """Adam's parameter groups: the head at ``lr``, the pretrained backbones at ``lr`` x
    ``backbone_lr`` (empty groups left out)."""
    backbone_ids = {id(p) for m in backbone_modules(model.net) for p in m.parameters()}
    params = list(model.parameters())
    lr = float(cfg.lr)
    groups = [{"params": [p for p in params if id(p) not in backbone_ids], "lr": lr},
              {"params": [p for p in params if id(p) in backbone_ids], "lr": lr * float(cfg.backbone_lr)}]
    return [g for g in groups if g["params"]]


@dataclass
class Batches:
    """What one training epoch draws its batches from and how it augments them."""
    data: Prepared
    cfg: TrainSettings
    perm: list[int]
    side: float

    def __post_init__(self):
        self.aug = {k: float(getattr(self.cfg.augment, k)) for k in AUGMENT_KEYS}
        self.prob = float(self.cfg.augment.prob)
        self.jitter = box_jitter(self.cfg)
        if self.jitter and self.data.context is None:
            raise ValueError("train.box_jitter needs training crops prepared with context (prepare(context=...))")

    def inputs(self, model: Regressor, idx: torch.Tensor, gen: torch.Generator, cached: dict | None, device):
        """The batch ``idx``, augmented (flip, box jitter, affine, erasing; only the flip on cached
        features): the model's prediction and the targets."""
        y = self.data.targets[idx]
        which = torch.rand(len(idx), generator=gen) < 0.5 if self.cfg.flip else None
        if cached is not None:
            z = cached["train"][idx]
            if which is not None:
                z = torch.where(which[:, None], cached["train_flip"][idx], z)
                y = flip_points(y, which, self.perm)
            return model.from_features(z.to(device)), y.to(device)
        if self.jitter:
            x, y = jitter_crops(self.data.context[idx], y, self.data.images.shape[-1], gen, **self.jitter)
        else:
            x = self.data.images[idx]
        if which is not None:
            x, y = flip_batch(x, y, which, self.perm)
        if any(self.aug.values()):
            x, y = affine_batch(x, y, gen, **self.aug, prob=self.prob)
        if self.cfg.erase:
            x = erase_batch(x, float(self.cfg.erase), gen)
        return model(x.to(device)), y.to(device)


class WeightAverage:
    """An exponential moving average of a model's weights (``train.ema``: the decay), updated after
    every optimizer step, with timm's warm-up (the decay grows as ``(1 + t) / (10 + t)`` to its
    value, so the first steps do not drag the untrained weights along). The averaged copy is what
    is validated and kept: a steadier pick than the weights of one step."""

    def __init__(self, model: Regressor, decay: float):
        self.model, self.decay, self.steps = copy.deepcopy(model), float(decay), 0
        self.model.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: Regressor) -> None:
        self.steps += 1
        d = min(self.decay, (1 + self.steps) / (10 + self.steps))
        for avg, now in zip(self.model.state_dict().values(), model.state_dict().values()):
            if avg.dtype.is_floating_point:
                avg.mul_(d).add_(now.detach(), alpha=1 - d)
            else:
                avg.copy_(now)

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.steps = int(state["steps"])


def train_epoch(model: Regressor, batches: Batches, opt, gen: torch.Generator, cached: dict | None, device,
                on_batch: Callable[[int], None] | None = None, average: WeightAverage | None = None) -> float:
    """One pass over the training data in a seeded random order (``average`` updated after each
    step); returns the mean training MSE."""
    model.train()
    frozen_norms_to_eval(model.net)
    cfg, side = batches.cfg, batches.side
    loss_kind = cfg.loss
    bs, n = int(cfg.batch_size), len(batches.data)
    order = torch.randperm(n, generator=gen)
    chunks = [order[i:i + bs] for i in range(0, n, bs)]
    if len(chunks) > 1 and len(chunks[-1]) < 2:  # BatchNorm cannot train on a batch of one
        chunks.pop()
    total, count = 0.0, 0
    for b, idx in enumerate(chunks):
        pred, y = batches.inputs(model, idx, gen, cached, device)
        mse = masked_mse(pred * side, y * side)  # in the targets' unit
        loss = mse if loss_kind == "mse" else masked_loss(pred * side, y * side, loss_kind, side)
        if isinstance(model.net, AuxiliaryLoss):
            loss = loss + model.net.auxiliary_loss(pred, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if average is not None:
            average.update(model)
        total += mse.item() * len(idx)  # the reported training loss is the MSE alone
        count += len(idx)
        if on_batch:
            on_batch(b + 1, len(chunks))
    return total / count


def validation_predictions(model: Regressor, val_data: Prepared, cached: dict | None, device) -> np.ndarray:
    """The model's predictions on the validation crops (from cached frozen features where there are some)."""
    if cached is None:
        return predict(model, val_data.images, device=device)
    model.eval()
    with torch.inference_mode():
        return torch.cat([model.from_features(z.to(device)).float().cpu() for z in cached["val"].split(256)]).numpy()


class Checkpointer:
    """A training's checkpoints in ``ckpt_dir``: ``best.pt`` (the best epoch's weights) and
    ``last.pt`` (everything a resume needs), written together, at most every
    ``checkpoint_interval`` seconds and after the last epoch; and the resume from them."""

    def __init__(self, ckpt_dir: Path, interval: float):
        self.dir = Path(ckpt_dir)
        self.interval = float(interval)
        self.saved_at = time.perf_counter()
        self.best_saved = False

    def restore(self, model: Regressor, opt, sched, gen: torch.Generator,
                average: WeightAverage | None = None) -> tuple[History, int, int, dict] | None:
        """From ``last.pt`` (if any): the history, the stale-epoch count, the epoch to start at and
        the best weights; the model, optimizer, scheduler and random generators set as they were."""
        last = self.dir / "last.pt"
        if not last.is_file():
            return None
        ck = read_checkpoint(last)
        model.load_state_dict(ck["model"])
        if opt:
            opt.load_state_dict(ck["opt"])
        if sched:
            sched.load_state_dict(ck["sched"])
        gen.set_state(ck["gen"])
        torch.set_rng_state(ck["torch_rng"])
        if average is not None:
            if not ck.get("average"):
                raise ValueError(f"{last}: written without train.ema; resume it with the settings it ran with")
            average.load_state_dict(ck["average"])
        self.best_saved = True
        best_state = read_checkpoint(self.dir / "best.pt")["state_dict"]
        return History(ck["rows"], ck["best_epoch"], ck["best_score"]), ck["stale"], ck["epoch"] + 1, best_state

    def save(self, force: bool, best_state: dict, hist: History, model: Regressor, opt, sched, gen, stale: int,
             epoch: int, average: WeightAverage | None = None) -> None:
        """Write both checkpoints when ``force`` or when ``checkpoint_interval`` has passed (a
        cached frozen epoch of the hybrid trains in about a second; writing its 400 MB every epoch
        would triple that)."""
        if not force and time.perf_counter() - self.saved_at < self.interval:
            return
        if not self.best_saved:
            atomic_torch_save({"state_dict": best_state, "epoch": hist.best_epoch, "score": hist.best_score},
                              self.dir / "best.pt")
            self.best_saved = True
        atomic_torch_save({"model": model.state_dict(), "opt": opt.state_dict() if opt else None,
                           "sched": sched.state_dict() if sched else None, "gen": gen.get_state(),
                           "torch_rng": torch.get_rng_state(), "rows": hist.rows, "best_epoch": hist.best_epoch,
                           "best_score": hist.best_score, "stale": stale, "epoch": epoch,
                           "average": average.state_dict() if average is not None else None}, self.dir / "last.pt")
        self.saved_at = time.perf_counter()


def train(
    net: nn.Module,
    train_data: Prepared,
    val_data: Prepared,
    schema: Schema,
    cfg: TrainSettings,
    seed: int,
    evaluate: Callable[[np.ndarray], dict],
    ckpt_dir: Path,
    device: str = "cpu",
    on_batch: Callable[[int, int, int], None] | None = None,
    on_epoch: Callable[[dict], None] | None = None,
    resume: bool = False,
    features: Callable | None = None,
) -> tuple[Regressor, History]:
    """Train ``net``; return it (best epoch's weights loaded) and the per-epoch history.

    ``evaluate(pred_crop)`` rates validation predictions: a dict of metric values whose "score"
    is minimised. ``ckpt_dir`` receives ``best.pt`` and the epoch checkpoint ``last.pt``; with
    ``resume`` training continues from ``last.pt``. ``features(model)`` returns the
    cached frozen features (see :func:`kpbench.features.cached_features`); ``on_batch(epoch, done,
    total)`` and ``on_epoch(row)`` report progress.
    """
    side = float(train_data.images.shape[-1]) if cfg.targets == "pixels" else 1.0
    model = Regressor(net, mean_shape(train_data.targets), side, reported_origin(net, train_data)).to(device)
    if cfg.channels_last:
        model.use_channels_last()
    groups = param_groups(model, cfg)
    epochs = int(cfg.epochs) if groups else 0
    opt = torch.optim.Adam(groups, weight_decay=float(cfg.weight_decay)) if groups else None
    sched = _scheduler(opt, cfg, epochs) if opt else None
    freeze_epochs, unfreeze = int(cfg.freeze_epochs), cfg.unfreeze
    batches = Batches(train_data, cfg, list(schema.flip_permutation), side)
    use_cache = features is not None and can_cache(net, cfg)
    gen = torch.Generator().manual_seed(seed)
    checkpoints = Checkpointer(ckpt_dir, cfg.checkpoint_interval)
    hist, stale, start = History(), 0, 0
    best_state = copy.deepcopy(model.state_dict())
    average = WeightAverage(model, cfg.ema) if cfg.ema and opt else None
    judged = average.model if average else model  # the weights validated and kept
    restored = checkpoints.restore(model, opt, sched, gen, average) if resume else None
    if restored:
        hist, stale, start, best_state = restored
    cached = None

    for epoch in range(start, epochs + 1):  # epoch 0 evaluates the untrained model (all a fixed model gets)
        t0 = time.perf_counter()
        frozen = epoch <= freeze_epochs and freeze_epochs > 0  # epoch 0 is evaluated as the first epoch trains
        set_trainable(net, frozen, unfreeze, int(cfg.frozen_stages))
        if not (use_cache and frozen):
            cached = None
        elif cached is None:  # once per frozen phase: the frozen weights do not change within it
            cached = features(model)
        train_loss = float("nan")
        if epoch > 0:
            train_loss = train_epoch(model, batches, opt, gen, cached, device,
                                     on_batch and (lambda done, total, e=epoch: on_batch(e, done, total)), average)
        pred = validation_predictions(judged, val_data, cached, device)
        val_loss = float(masked_mse(torch.from_numpy(pred) * side, val_data.targets * side))
        scores = evaluate(pred)
        row = {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, **scores,
               "lr": opt.param_groups[0]["lr"] if opt else float("nan"), "seconds": time.perf_counter() - t0}
        hist.rows.append(row)
        if scores["score"] < hist.best_score or epoch == 0:
            hist.best_epoch, hist.best_score, stale = epoch, scores["score"], 0
            best_state = copy.deepcopy(judged.state_dict())
            checkpoints.best_saved = False
        else:
            stale += 1
        if sched is not None and epoch > 0:
            sched.step(scores["score"]) if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau) else sched.step()
        stop = bool(cfg.patience) and stale >= int(cfg.patience)
        checkpoints.save(epoch == epochs or stop, best_state, hist, model, opt, sched, gen, stale, epoch, average)
        if on_epoch:
            on_epoch(row)
        if stop:
            break
    model.load_state_dict(best_state)
    model.eval()
    return model, hist
