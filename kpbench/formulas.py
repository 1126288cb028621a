"""The formulas, in one place: how per-image values aggregate, and the failure rate, AUC and
cumulative error distribution of normalized errors, and what confidences are worth. Used by the metrics plugin, evaluation,
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


def point_errors(pred: np.ndarray, true: np.ndarray, norm_pair: tuple[int, int]) -> np.ndarray:
    """(N, K) each point's distance from its annotation over its face's distance between the
    points ``norm_pair`` (inter-ocular: the ``nme`` metric's normalization); NaN where unknown."""
    a, b = norm_pair
    norm = np.linalg.norm(true[:, a] - true[:, b], axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.linalg.norm(pred - true, axis=-1) / np.where(norm > 0, norm, np.nan)[:, None]


def roc_auc(score: np.ndarray, positive: np.ndarray) -> float:
    """The area under the ROC curve of ``score`` as a detector of ``positive``: the probability
    that a random positive scores above a random negative (ties count half); NaN without both."""
    score, positive = np.asarray(score, dtype=np.float64), np.asarray(positive, dtype=bool)
    pos, neg = score[positive], score[~positive]
    if not len(pos) or not len(neg):
        return float("nan")
    return float((pos[:, None] > neg[None, :]).mean() + (pos[:, None] == neg[None, :]).mean() / 2)


def confidence_check(errors: np.ndarray, confidence: np.ndarray, threshold: float = 0.1) -> dict:
    """Whether confidences mean something, from per-point normalized errors and confidences
    (N, K) (NaN errors left out): the mean error of the least- and of the most-confident tenth of
    the points, and the ROC AUC of 1 - face confidence (the mean over its points) as a detector of
    failed faces (mean error above ``threshold``)."""
    errors, confidence = np.asarray(errors, dtype=np.float64), np.asarray(confidence, dtype=np.float64)
    ok = np.isfinite(errors) & np.isfinite(confidence)
    err, conf = errors[ok], confidence[ok]
    if not err.size:
        return {"conf_err_low10": float("nan"), "conf_err_high10": float("nan"), "fail_auroc": float("nan")}
    order = np.argsort(conf, kind="stable")
    tenth = max(1, err.size // 10)
    face_err = nanmean(np.where(ok, errors, np.nan), axis=1)
    face_conf = nanmean(np.where(ok, confidence, np.nan), axis=1)
    faces = np.isfinite(face_err)
    return {"conf_err_low10": float(err[order[:tenth]].mean()), "conf_err_high10": float(err[order[-tenth:]].mean()),
            "fail_auroc": roc_auc(1 - face_conf[faces], face_err[faces] > threshold)}
