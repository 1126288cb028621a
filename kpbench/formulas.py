"""The formulas, in one place: how per-image values aggregate, and the failure rate, AUC and
cumulative error distribution of normalized errors. Used by the metrics plugin, evaluation,
statistics, plots and reports. Shapes: ``values`` (..., N), one per image, NaN where undefined
(left out)."""

from __future__ import annotations

import warnings

import numpy as np

AGGREGATIONS = ("mean", "sqrt_mean")


def nanmean(x: np.ndarray, axis=-1) -> np.ndarray:
    """Mean along ``axis`` leaving NaN out (NaN where nothing is left, without a warning)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(x, axis=axis)


def check_aggregation(how: str) -> None:
    """A ValueError unless ``how`` is one of AGGREGATIONS."""
    if how not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {how!r}")


def aggregate(values: np.ndarray, how: str):
    """Per-image values (..., N) -> their aggregate along the last axis: "mean", or "sqrt_mean"
    (the root of the mean: RMSE from squared errors); NaN values left out. A float for 1-D input."""
    check_aggregation(how)
    m = nanmean(np.asarray(values, dtype=np.float64))
    out = np.sqrt(m) if how == "sqrt_mean" else m
    return float(out) if np.ndim(out) == 0 else out


def failure(nme: np.ndarray, threshold: float) -> np.ndarray:
    """Per image 1.0 where the error exceeds ``threshold``, else 0.0 (NaN stays NaN)."""
    return np.where(np.isnan(nme), np.nan, (nme > threshold).astype(float))


def auc(nme: np.ndarray, threshold: float) -> np.ndarray:
    """Per image ``max(0, 1 - nme / threshold)``: its mean is the area under the CED up to
    ``threshold``, normalized to [0, 1] (NaN stays NaN)."""
    return np.maximum(0.0, 1.0 - nme / threshold)


def auc_and_failure_rate(nme: np.ndarray, threshold: float = 0.1) -> tuple[float, float]:
    """(AUC, failure rate) at ``threshold`` over the images with an error."""
    e = np.asarray(nme, dtype=float).ravel()
    e = e[np.isfinite(e)]
    if e.size == 0:
        return float("nan"), float("nan")
    return float(np.mean(auc(e, threshold))), float(np.mean(failure(e, threshold)))


def ced(nme: np.ndarray, max_error: float = 0.1, steps: int = 101) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative error distribution: ``steps`` thresholds evenly spaced on [0, max_error] and, for
    each, the fraction of images with error <= threshold (NaN left out; all NaN without errors)."""
    thresholds = np.linspace(0.0, max_error, steps)
    e = np.asarray(nme, dtype=np.float64).ravel()
    e = np.sort(e[~np.isnan(e)])
    if e.size == 0:
        return thresholds, np.full(steps, np.nan)
    return thresholds, np.searchsorted(e, thresholds, side="right") / e.size
