"""Built-in metrics, per image, in the original image's pixels; missing true points are excluded.

MSE/MAE average over the visible coordinates of an image; RMSE is the square root of the mean of
the per-image MSE; NME is the mean point-to-point distance divided by the inter-ocular distance
(the schema's outer eye corners). Each image counts once in the average over images.
"""

from __future__ import annotations

import warnings

import numpy as np

import kpbench


def _nanmean(x: np.ndarray, axis) -> np.ndarray:
    with warnings.catch_warnings():  # an image with no visible point gives NaN, excluded later
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(x, axis=axis)


def squared_error(pred, true, ctx):
    return _nanmean((pred - true) ** 2, axis=(1, 2))


def absolute_error(pred, true, ctx):
    return _nanmean(np.abs(pred - true), axis=(1, 2))


def nme(pred, true, ctx):
    a, b = ctx.schema.norm_pair
    norm = np.linalg.norm(true[:, a] - true[:, b], axis=-1)
    dist = _nanmean(np.linalg.norm(pred - true, axis=-1), axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(norm > 0, dist / norm, np.nan)


@kpbench.hookimpl
def kpbench_metrics():
    M = kpbench.MetricSpec
    return [
        M("mse", lambda: squared_error, "Mean squared error per coordinate, pixels²", unit="px²"),
        M("mae", lambda: absolute_error, "Mean absolute error per coordinate, pixels", unit="px"),
        M("rmse", lambda: squared_error, "Root mean squared error per coordinate, pixels", aggregate="sqrt_mean",
          unit="px"),
        M("nme", lambda: nme, "Mean point-to-point error / inter-ocular (outer eye corners) distance"),
    ]
