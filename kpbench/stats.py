"""Statistics over per-image metric values: error distributions, per-keypoint errors, bootstrap
confidence intervals and paired tests between two models on the same images. numpy only.

NaN marks an undefined per-image value (see :mod:`kpbench_plugins.metrics`) and is dropped first;
in paired functions a pair is dropped when either value is NaN.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from kpbench.formulas import aggregate, ced, check_aggregation  # noqa: F401  (ced: re-exported)

_BOOT_CELLS = 1 << 22  # resampled values held in memory at once by the bootstrap


def _finite(values) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64).ravel()
    return v[~np.isnan(v)]


def _resampled(columns: list[np.ndarray], how: str, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, len(columns)) aggregates of bootstrap resamples; every column is resampled with the
    same row indices, drawn as an index matrix in chunks that bound memory."""
    rng = np.random.default_rng(seed)
    n = len(columns[0])
    chunk = max(1, _BOOT_CELLS // n)
    out = []
    for start in range(0, n_boot, chunk):
        idx = rng.integers(0, n, size=(min(chunk, n_boot - start), n))
        out.append(np.stack([aggregate(c[idx], how) for c in columns], axis=-1))
    return np.concatenate(out)


def per_keypoint_error(pred: np.ndarray, true: np.ndarray, norm: np.ndarray | None = None) -> np.ndarray:
    """(K,) mean point-to-point distance per keypoint over the images where it is annotated.

    pred/true are (N, K, 2) with NaN in ``true`` for missing points. With ``norm`` (N,), each
    image's distances are divided by its normalizer first (an image whose normalizer is NaN or not
    positive is left out). A keypoint missing in every image gets NaN.
    """
    d = np.linalg.norm(np.asarray(pred, float) - np.asarray(true, float), axis=-1)
    if norm is not None:
        norm = np.asarray(norm, dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            d = np.where((norm > 0)[:, None], d / norm[:, None], np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(d, axis=0)


def bootstrap_ci(values, how: str = "mean", n_boot: int = 1000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the aggregated metric (``how`` = "mean" or
    "sqrt_mean"). Deterministic for a seed; (NaN, NaN) when no value is left."""
    v = _finite(values)
    check_aggregation(how)
    if v.size == 0:
        return float("nan"), float("nan")
    stats = _resampled([v], how, n_boot, seed)[:, 0]
    lo, hi = np.quantile(stats, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def paired_bootstrap(a, b, how: str = "mean", n_boot: int = 2000, seed: int = 0,
                     level: float = 0.95) -> dict:
    """Paired bootstrap of ``agg(a) - agg(b)`` over the same images (resampled together).

    Returns ``diff``, the percentile interval ``lo``/``hi`` and ``p``, the two-sided bootstrap
    p-value ``2 * min(#(d* <= 0) + 1, #(d* >= 0) + 1) / (n_boot + 1)`` clipped to 1, where d* are
    the resampled differences. Identical inputs give p = 1. All NaN when no pair is left.
    """
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    keep = ~(np.isnan(a) | np.isnan(b))
    a, b = a[keep], b[keep]
    check_aggregation(how)
    if a.size == 0:
        return {"diff": float("nan"), "lo": float("nan"), "hi": float("nan"), "p": float("nan")}
    boot = _resampled([a, b], how, n_boot, seed)
    d = boot[:, 0] - boot[:, 1]
    lo, hi = np.quantile(d, [(1 - level) / 2, (1 + level) / 2])
    tail = min(np.sum(d <= 0), np.sum(d >= 0)) + 1
    return {"diff": float(aggregate(a, how) - aggregate(b, how)), "lo": float(lo), "hi": float(hi),
            "p": float(min(1.0, 2 * tail / (n_boot + 1)))}


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n of x, ties sharing the average of their ranks."""
    order = np.argsort(x, kind="stable")
    xs = x[order]
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])
    ends = np.r_[starts[1:], xs.size]  # exclusive
    ranks = np.empty(x.size)
    ranks[order] = np.repeat((starts + ends + 1) / 2, ends - starts)
    return ranks


def wilcoxon_signed_rank(a, b) -> dict:
    """Two-sided Wilcoxon signed-rank test of ``a - b`` on paired values, normal approximation.

    Pairs with a NaN are dropped, and so are zero differences (Wilcoxon's original method, not
    Pratt's). Tied |differences| get average ranks and the variance is reduced by
    ``sum(t³ - t) / 48`` over tie groups; no continuity correction. Returns ``statistic`` =
    min(W+, W-) (rank sums of positive and negative differences), ``z`` = (W+ - n(n+1)/4) / sd
    (positive when a tends to exceed b), ``p`` = erfc(|z| / sqrt 2) and ``n``, the number of
    non-zero differences. With n = 0 (e.g. identical inputs): statistic 0, z 0, p 1.
    """
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    d = a - b
    d = d[~np.isnan(d) & (d != 0)]
    n = d.size
    if n == 0:
        return {"statistic": 0.0, "z": 0.0, "p": 1.0, "n": 0}
    ranks = _average_ranks(np.abs(d))
    w_plus = float(ranks[d > 0].sum())
    w_minus = n * (n + 1) / 2 - w_plus
    _, t = np.unique(np.abs(d), return_counts=True)
    var = n * (n + 1) * (2 * n + 1) / 24 - float(np.sum(t ** 3 - t)) / 48
    z = (w_plus - n * (n + 1) / 4) / math.sqrt(var)
    return {"statistic": min(w_plus, w_minus), "z": z, "p": math.erfc(abs(z) / math.sqrt(2)), "n": n}


def mean_std(values) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1) across seeds, NaN values dropped. The std of a
    single value is NaN (undefined, not 0); with no value both are NaN."""
    v = _finite(values)
    mean = float(v.mean()) if v.size else float("nan")
    std = float(v.std(ddof=1)) if v.size > 1 else float("nan")
    return mean, std
