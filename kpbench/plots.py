"""The figures of a run's report, drawn from plain data (no run paths): training curves, keypoint
overlays, cumulative error distributions, per-keypoint errors and accuracy against cost.

Each function writes one PNG atomically (temp file in the same folder, then rename) and returns its
path. Figures are built on :class:`matplotlib.figure.Figure` directly, so no pyplot state or GUI
backend is involved, and are saved without a ``Software`` tag so re-rendering gives identical bytes.
Pass the same ``colors`` (see :func:`model_colors`) to every function to keep one color per model.
"""

from __future__ import annotations

import io
import textwrap
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.colors import to_hex
from matplotlib.figure import Figure

from kpbench.formulas import auc_and_failure_rate
from matplotlib.lines import Line2D

from kpbench.io import atomic_write_bytes
from kpbench.overlay import PRED_COLOR

DPI = 110
# tab10 first, then the lighter halves of tab20, so up to 20 models get distinct colors.
PALETTE = [to_hex(c) for c in colormaps["tab10"].colors] + [to_hex(c) for c in colormaps["tab20"].colors[1::2]]
TRUE_COLOR = "#00d400"


def model_colors(labels: Sequence[str]) -> dict[str, str]:
    """One fixed qualitative color (hex) per label, in the given order (cycles after 20)."""
    out: dict[str, str] = {}
    for label in labels:
        if label not in out:
            out[label] = PALETTE[len(out) % len(PALETTE)]
    return out


def _colors(labels: Sequence[str], colors: Mapping[str, str] | None) -> dict[str, str]:
    base = model_colors(labels)
    if colors:
        base.update({k: v for k, v in colors.items() if k in base})
    return base


def _t(text) -> str:
    """A label as plain text: escape ``$`` so matplotlib never parses it as mathtext."""
    return str(text).replace("$", r"\$")


def _save(fig: Figure, path) -> Path:
    """Render ``fig`` to PNG bytes, then write them atomically to ``path``."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None}, facecolor="white")
    fig.clf()
    atomic_write_bytes(Path(path), buf.getvalue())
    return Path(path)


def _empty(ax, message: str = "no data") -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


def _style(ax) -> None:
    ax.grid(True, color="0.88", linewidth=0.8)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


# --------------------------------------------------------------------------- training curves

def training_curves(histories: Mapping[str, pd.DataFrame], path, metrics: Sequence[str] | None = ("mae", "rmse"),
                    colors: Mapping[str, str] | None = None) -> Path:
    """Figure-4 style: one row per quantity (loss, then each ``val_<metric>`` present in some
    history), every model on each panel in its color. Loss: train solid, validation dashed; log y
    wherever the values are positive.
    ``metrics=None`` shows every ``val_*`` column found."""
    labels = list(histories)
    cmap = _colors(labels, colors)
    if metrics is None:
        seen: list[str] = []
        for h in histories.values():
            seen += [c[4:] for c in h.columns if c.startswith("val_") and c != "val_loss" and c[4:] not in seen]
        metrics = seen
    shown = [m for m in metrics if any(f"val_{m}" in h.columns for h in histories.values())]
    rows = ["loss"] + shown
    fig = Figure(figsize=(7.0, 1.0 + 2.3 * len(rows)), layout="constrained")
    axes = fig.subplots(len(rows), 1, sharex=True, squeeze=False)[:, 0]
    n_epochs = max((len(h) for h in histories.values()), default=0)
    marker = "o" if n_epochs <= 30 else None

    def xs(h):
        return h["epoch"].to_numpy(float) if "epoch" in h.columns else np.arange(len(h), dtype=float)

    ax = axes[0]
    positive = True
    drawn = False
    for label, h in histories.items():
        for col, style in (("train_loss", "-"), ("val_loss", "--")):
            if col in h.columns:
                y = h[col].to_numpy(float)
                if np.isfinite(y).any():
                    drawn = True
                    positive &= bool(np.all(y[np.isfinite(y)] > 0))
                    ax.plot(xs(h), y, style, color=cmap[label], marker=marker, markersize=3, linewidth=1.6)
    if drawn:
        if positive:
            ax.set_yscale("log")
        _style(ax)
    else:
        _empty(ax)
    ax.set_ylabel("loss")
    model_handles = [Line2D([], [], color=cmap[lb], linewidth=2, label=_t(lb)) for lb in labels]
    style_handles = [Line2D([], [], color="0.3", linestyle="-", label="train"),
                     Line2D([], [], color="0.3", linestyle="--", label="validation")]
    if drawn:
        ax.legend(handles=model_handles + style_handles, fontsize=8, loc="upper right",
                  ncol=2 if len(labels) + 2 > 6 else 1, frameon=False)

    for ax, metric in zip(axes[1:], shown):
        col = f"val_{metric}"
        any_drawn, positive = False, True
        for label, h in histories.items():
            y = h[col].to_numpy(float) if col in h.columns else np.array([np.nan])
            if np.isfinite(y).any():
                any_drawn = True
                positive &= bool(np.all(y[np.isfinite(y)] > 0))
                ax.plot(xs(h), y, "-", color=cmap[label], marker=marker, markersize=3, linewidth=1.6)
        if any_drawn:
            if positive:  # log y: an untrained epoch 0 does not flatten the rest
                ax.set_yscale("log")
            _style(ax)
        else:
            _empty(ax)
        ax.set_ylabel(f"val {metric}")
    axes[-1].set_xlabel("epoch")
    if n_epochs and n_epochs <= 20 and any("epoch" in h.columns for h in histories.values()):
        axes[-1].xaxis.get_major_locator().set_params(integer=True)
    return _save(fig, path)


# --------------------------------------------------------------------------- keypoint overlays

def keypoint_overlays(images: np.ndarray, preds: Mapping[str, np.ndarray], true: np.ndarray, path, n: int = 8,
                      point_names: Sequence[str] | None = None) -> Path:
    """Figure-5 style grid: one row per model, one column per face (the first ``n``). ``images``
    (N,S,S) grayscale crops; ``preds[label]`` and ``true`` (N,K,2) in crop pixel coordinates
    (pixel centers, as imshow draws them). True points: green circles; predictions: red crosses;
    NaN points are not drawn. ``point_names``, if given, are listed in order under the grid."""
    images = np.asarray(images)
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    true = np.asarray(true, dtype=float)
    labels = list(preds)
    cols = int(min(n, len(images)))
    rows = max(len(labels), 1)
    if point_names is not None and len(point_names) != true.shape[1]:
        raise ValueError(f"{len(point_names)} point names for {true.shape[1]} keypoints")
    cell = 1.35
    key = ""
    if point_names is not None:
        # no-break space inside an entry, so lines only break between entries
        names = [_t(name).replace(" ", "\u00a0") for name in point_names]
        key = textwrap.fill(f"keypoints ({len(names)}): " + ", ".join(names),
                            width=int((max(cols, 3) * cell + 0.5) * 21), break_long_words=False)
    fig = Figure(figsize=(max(cols, 1) * cell + 0.5, rows * cell + 0.45 + 0.16 * (key.count("\n") + 1 if key else 0)),
                 layout="constrained")
    fig.get_layout_engine().set(w_pad=0.02, h_pad=0.02, wspace=0.01, hspace=0.01)
    axes = fig.subplots(rows, max(cols, 1), squeeze=False)
    gray = images.dtype == np.uint8
    for r in range(rows):
        label = labels[r] if labels else None
        pred = np.asarray(preds[label], dtype=float) if label is not None else None
        for c in range(max(cols, 1)):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= cols:
                _empty(ax)
                continue
            img = images[c]
            ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0 if gray else None,
                      vmax=255 if gray else None, interpolation="nearest")
            t = true[c]
            ok = np.isfinite(t).all(axis=1)
            ax.scatter(t[ok, 0], t[ok, 1], s=14, facecolors="none", edgecolors=TRUE_COLOR, linewidths=0.9)
            if pred is not None:
                p = pred[c]
                okp = np.isfinite(p).all(axis=1)
                ax.scatter(p[okp, 0], p[okp, 1], s=14, marker="x", color=PRED_COLOR, linewidths=0.9)
            ax.set_xlim(-0.5, img.shape[1] - 0.5)
            ax.set_ylim(img.shape[0] - 0.5, -0.5)
            if r == 0:
                ax.set_title(f"#{c}", fontsize=8)
            if c == 0 and label is not None:
                ax.set_ylabel(_t(label), fontsize=9)
    handles = [Line2D([], [], marker="o", linestyle="none", markerfacecolor="none", markeredgecolor=TRUE_COLOR,
                      label="true"),
               Line2D([], [], marker="x", linestyle="none", color=PRED_COLOR, label="predicted")]
    fig.legend(handles=handles, loc="outside upper center", ncol=2, fontsize=8, frameon=False)
    if key:
        fig.supxlabel(key, fontsize=6.5, color="0.3", x=0.01, ha="left", multialignment="left")
    return _save(fig, path)


# --------------------------------------------------------------------------- CED

def ced_curves(nme: Mapping[str, np.ndarray], path, max_error: float = 0.1,
               colors: Mapping[str, str] | None = None) -> Path:
    """Cumulative error distribution of per-image NME (fraction of images with NME <= x) for
    every model on one axis, x from 0 to ``max_error``; AUC and FR at max_error in the legend."""
    labels = list(nme)
    cmap = _colors(labels, colors)
    fig = Figure(figsize=(6.4, 4.4), layout="constrained")
    ax = fig.subplots()
    for label in labels:
        e = np.asarray(nme[label], dtype=float).ravel()
        e = np.sort(e[np.isfinite(e)])
        auc, fr = auc_and_failure_rate(e, max_error)
        if e.size == 0:
            continue
        frac = np.arange(1, e.size + 1) / e.size
        x = np.concatenate([[0.0], e, [max(max_error, e[-1])]])
        y = np.concatenate([[0.0], frac, [1.0]])
        ax.step(x, y, where="post", color=cmap[label], linewidth=1.8,
                label=f"{_t(label)}  AUC {auc:.3f}  FR {100 * fr:.1f}%")
    ax.set_xlim(0, max_error)
    ax.set_ylim(0, 1.0)
    ax.set_xlabel("NME (per image)")
    ax.set_ylabel("fraction of images")
    ax.set_title(f"Cumulative error distribution (AUC, FR at {max_error:g})", fontsize=10)
    _style(ax)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right", fontsize=8, frameon=True, framealpha=0.9)
    return _save(fig, path)


# --------------------------------------------------------------------------- per keypoint

def per_keypoint_errors(errors: Mapping[str, np.ndarray], point_names: Sequence[str], path,
                        ylabel: str = "mean error", colors: Mapping[str, str] | None = None) -> Path:
    """Grouped bars: mean error per keypoint (``errors[label]`` is (K,)), one color per model."""
    labels = list(errors)
    cmap = _colors(labels, colors)
    k = len(point_names)
    for label in labels:
        if np.asarray(errors[label]).shape != (k,):
            raise ValueError(f"errors[{label!r}] has shape {np.asarray(errors[label]).shape}, expected ({k},)")
    fig = Figure(figsize=(max(6.0, 1.2 + k * (0.22 + 0.1 * len(labels))), 4.2), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / max(len(labels), 1)
    pos = np.arange(k)
    for i, label in enumerate(labels):
        ax.bar(pos - 0.4 + width * (i + 0.5), np.asarray(errors[label], dtype=float), width=width,
               color=cmap[label], label=_t(label))
    ax.set_xticks(pos, [_t(p) for p in point_names], rotation=55, ha="right", rotation_mode="anchor", fontsize=8)
    ax.set_xlim(-0.6, k - 0.4)
    ax.set_ylabel(ylabel)
    _style(ax)
    ax.grid(False, axis="x")
    if labels:
        ax.legend(fontsize=8, frameon=False, ncol=min(len(labels), 4), loc="upper left")
        ax.margins(y=0.15)
    return _save(fig, path)


def error_by_confidence(errors: Mapping[str, np.ndarray], confidences: Mapping[str, np.ndarray], path,
                        colors: Mapping[str, str] | None = None, bins: int = 10) -> Path:
    """Mean normalized error of each tenth of the points, least confident first, one line per
    model (``errors[label]``, ``confidences[label]``: (N, K), NaN errors left out): a model whose
    confidences mean something falls from left to right."""
    labels = list(errors)
    cmap = _colors(labels, colors)
    fig = Figure(figsize=(6.0, 4.0), layout="constrained")
    ax = fig.subplots()
    for label in labels:
        err, conf = np.asarray(errors[label], float).ravel(), np.asarray(confidences[label], float).ravel()
        ok = np.isfinite(err) & np.isfinite(conf)
        if not ok.any():
            continue
        chunks = np.array_split(err[ok][np.argsort(conf[ok], kind="stable")], bins)
        ax.plot(np.arange(1, bins + 1), [c.mean() if c.size else np.nan for c in chunks], marker="o",
                color=cmap[label], label=_t(label))
    ax.set_xticks(np.arange(1, bins + 1))
    ax.set_xlabel("tenth of the points by confidence (1 = least confident)")
    ax.set_ylabel("mean error / inter-ocular distance")
    _style(ax)
    if labels:
        ax.legend(fontsize=8, frameon=False)
    return _save(fig, path)


# --------------------------------------------------------------------------- accuracy vs cost

def pareto_front(x, y) -> np.ndarray:
    """Boolean mask of the points no other point dominates (lower x and lower y both better):
    j dominates i when x_j <= x_i and y_j <= y_i with one strictly less. Identical points are
    all kept; points with a NaN coordinate are never on the front."""
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    ok = np.isfinite(x) & np.isfinite(y)
    front = ok.copy()
    for i in np.flatnonzero(ok):
        dominated = ok & (x <= x[i]) & (y <= y[i]) & ((x < x[i]) | (y < y[i]))
        front[i] = not dominated.any()
    return front


COST_LABELS = {"latency_ms": "latency (ms)", "gmacs": "GMACs", "params": "parameters"}


def accuracy_vs_cost(df: pd.DataFrame, path, x: str = "latency_ms", y: str = "nme", label: str = "model",
                     colors: Mapping[str, str] | None = None) -> Path:
    """Each model at (cost, error), named, with the Pareto front (lower both is better) as a step
    line through its highlighted points. If ``x`` is missing or all NaN, falls back to ``gmacs``,
    then ``params`` (log x scale)."""
    def usable(col):
        return col in df.columns and pd.to_numeric(df[col], errors="coerce").notna().any()

    for cand in (x, "gmacs", "params"):
        if usable(cand):
            x = cand
            break
    labels = [str(v) for v in df[label]] if label in df.columns else [str(i) for i in range(len(df))]
    cmap = _colors(labels, colors)
    fig = Figure(figsize=(6.4, 4.4), layout="constrained")
    ax = fig.subplots()
    if not usable(x) or not usable(y):
        _empty(ax, f"no {x} / {y} to plot")
        return _save(fig, path)
    xs = pd.to_numeric(df[x], errors="coerce").to_numpy(float)
    ys = pd.to_numeric(df[y], errors="coerce").to_numpy(float)
    keep = np.isfinite(xs) & np.isfinite(ys)
    log = x == "params" and bool(np.all(xs[keep] > 0))
    front = pareto_front(np.where(keep, xs, np.nan), ys)
    for i in np.flatnonzero(keep):
        on = bool(front[i])
        ax.scatter([xs[i]], [ys[i]], s=70 if on else 40, color=cmap[labels[i]], zorder=3,
                   edgecolors="black" if on else "none", linewidths=1.2)
        ax.annotate(_t(labels[i]), (xs[i], ys[i]), xytext=(5, 4), textcoords="offset points", fontsize=8,
                    color="0.15")
    order = np.flatnonzero(front)
    order = order[np.lexsort((ys[order], xs[order]))]
    if order.size > 1:
        ax.step(xs[order], ys[order], where="post", color="0.35", linestyle="--", linewidth=1.2, zorder=2,
                label="Pareto front")
        ax.legend(fontsize=8, frameon=False, loc="upper right")
    if log:
        ax.set_xscale("log")
    ax.margins(x=0.15, y=0.12)
    ax.set_xlabel(COST_LABELS.get(x, x) + (" (log)" if log else ""))
    ax.set_ylabel(y + " (lower is better)")
    skipped = [labels[i] for i in np.flatnonzero(~keep)]
    if skipped:
        ax.text(0.01, 0.01, _t("not shown (no value): " + ", ".join(skipped)), transform=ax.transAxes, fontsize=7,
                color="0.4", va="bottom", ha="left")
    _style(ax)
    return _save(fig, path)
