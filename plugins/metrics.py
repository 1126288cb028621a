"""Built-in metrics, computed per image; each image then counts once in the average over images.

Missing points (NaN in the ground truth) are excluded from every metric. An image with nothing
left to measure, or whose normalizer is undefined or zero, gets NaN and is left out of the average.

Pixel metrics, in the original image's pixels:

- ``mse`` / ``mae``: mean squared / absolute error over the visible x and y coordinates of an image.
- ``rmse``: square root of the mean over images of the per-image MSE.
- ``mape``: mean absolute percentage error, ``100 * |pred - true| / |true|`` averaged over the
  visible coordinates of an image. A coordinate whose true value is within 1 pixel of zero
  (``|true| < 1``) is excluded, since dividing by it is unstable; an image with no coordinate
  left gets NaN. The value depends on where the image's origin is, so it compares models only on
  the same data.

Normalized-coordinate metrics (``mse_norm``, ``mae_norm``, ``rmse_norm``, ``mape_norm``): the same
errors, with coordinates first mapped into the face crop the prediction was made in and scaled to
[0, 1]: ``(p + 0.5 - (x0, y0)) / side``. So ``mse_norm = mse / side²`` and
``mae_norm = mae / side`` per image. ``mape_norm`` divides by the normalized true coordinate and
excludes coordinates with ``|true_norm| < 0.01``.

Normalized mean error: the mean point-to-point (Euclidean) distance of an image divided by

- ``nme``: the inter-ocular distance, between the schema's outer eye corners;
- ``nme_ip``: the inter-pupil distance, between the schema's eye centers. A schema without eye
  center points uses the mean of each eye's points where kpbench knows them (iBUG 68: points
  36-41 and 42-47, all six must be visible); for any other schema it is NaN;
- ``nme_box``: ``sqrt(w * h)`` of the bounding box of the image's visible true points (works for
  any schema).

``nme15``: the inter-ocular NME on the 15 Kaggle points, with predictions and annotations of a richer
schema mapped to them first (a run on all 68 iBUG points reports it beside its 68-point ``nme``, so
models trained on 68 and on 15 points compare on the same points; on a 15-point run it is ``nme``).

From the inter-ocular NME: ``fr10`` is the failure rate, the fraction of images with NME > 0.1;
``auc10`` is the area under the cumulative error distribution (CED) of NME from 0 to 0.1, divided
by 0.1 so it lies in [0, 1] (higher is better). Per image it is ``max(0, 1 - nme / 0.1)``: the mean
of this over images equals the normalized area under the CED exactly.

Temporal: ``jitter``, the frame-to-frame change of the error on video frames (see :func:`jitter`);
NaN on photos and on each clip's first frame.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np

import kpbench
from kpbench import formulas
from kpbench.data import to_crop
from kpbench.keypoints import KAGGLE15, convert



_nanmean = formulas.nanmean  # an image with no visible point gives NaN, excluded later


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den per image, NaN where the normalizer is undefined or not positive."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / den, np.nan)


# ---- per-coordinate errors: (pred, true) -> (N,) ----------------------------------------------


def _mse(pred, true):
    return _nanmean((pred - true) ** 2, axis=(1, 2))


def _mae(pred, true):
    return _nanmean(np.abs(pred - true), axis=(1, 2))


def _mape(floor: float):
    def mape(pred, true):
        t = np.where(np.abs(true) >= floor, true, np.nan)  # NaN compares False: missing stays out
        return 100.0 * _nanmean(np.abs(pred - t) / np.abs(t), axis=(1, 2))
    return mape


def _in_pixels(err):
    return lambda pred, true, ctx: err(pred, true)


def _in_crop(err):
    return lambda pred, true, ctx: err(to_crop(pred, ctx.boxes), to_crop(true, ctx.boxes))


squared_error = _in_pixels(_mse)
absolute_error = _in_pixels(_mae)


# ---- normalized mean error ---------------------------------------------------------------------


def _dist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.linalg.norm(a - b, axis=-1)


def inter_ocular(true, schema) -> np.ndarray:
    a, b = schema.norm_pair
    return _dist(true[:, a], true[:, b])


def inter_pupil(true, schema) -> np.ndarray:
    """The distance between the eye centres, for a layout that declares its eyes (NaN otherwise)."""
    centres = schema.eye_centres(true)
    return np.full(len(true), np.nan) if centres is None else _dist(*centres)


def box_size(true, schema) -> np.ndarray:
    """sqrt(w * h) of the bounding box of each image's visible true points."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        wh = np.nanmax(true, axis=1) - np.nanmin(true, axis=1)
    return np.sqrt(wh[:, 0] * wh[:, 1])


def _nme(normalizer):
    def nme(pred, true, ctx):
        return _ratio(_nanmean(_dist(pred, true), axis=1), normalizer(true, ctx.schema))
    return nme


nme = _nme(inter_ocular)


def on_kaggle15(metric):
    """``metric`` on the 15 Kaggle points: a richer schema's points are mapped to them first."""
    def on15(pred, true, ctx):
        if ctx.schema.name != KAGGLE15.name:
            pred, true = convert(pred, ctx.schema.name, KAGGLE15.name), convert(true, ctx.schema.name, KAGGLE15.name)
            ctx = dataclasses.replace(ctx, schema=KAGGLE15)
        return metric(pred, true, ctx)
    return on15


def previous_frame(frames: list) -> np.ndarray:
    """Per sample, the index of its clip's previous frame (same clip, frame index - 1) among
    ``frames`` (``(clip, index)`` or None per sample, in any order); -1 where there is none."""
    at = {f: i for i, f in enumerate(frames) if f is not None}
    return np.array([-1 if f is None else at.get((f[0], f[1] - 1), -1) for f in frames], dtype=int)


def jitter(pred, true, ctx):
    """Frame-to-frame jitter: per frame with a previous frame in its clip (``ctx.frames``), the mean
    over points of ``|e_t - e_{t-1}|``, the change of the error ``e = pred - true`` since that frame,
    divided by the two frames' mean inter-ocular distance; NaN on a clip's first frame, on photos
    and where the eyes are missing. Averaged over frames, it is the mean over all consecutive pairs.

    Why the error and not the predictions' own motion: on annotated video the face moves, and a
    perfect model follows it, so the raw displacement ``|pred_t - pred_{t-1}|`` counts true motion
    as jitter. The error's change is zero for a perfect model and for a steady bias (an offset that
    does not flicker is an accuracy problem, which ``nme`` measures), and counts only what wobbles
    from frame to frame; with annotation noise it has the annotations' own flicker as a floor.
    Points missing in either frame's annotation are left out of that pair."""
    prev = previous_frame(ctx.frames or [None] * len(pred))
    err = pred - true
    step = _nanmean(_dist(err, err[prev]), axis=1)
    iod = inter_ocular(true, ctx.schema)
    return np.where(prev >= 0, _ratio(step, (iod + iod[prev]) / 2), np.nan)


def _failure(threshold: float):
    def failure(pred, true, ctx):
        return formulas.failure(nme(pred, true, ctx), threshold)
    return failure


def _auc(threshold: float):
    def auc(pred, true, ctx):
        return formulas.auc(nme(pred, true, ctx), threshold)
    return auc


@kpbench.hookimpl
def kpbench_metrics():
    M = kpbench.MetricSpec
    return [
        M("mse", squared_error, "Mean squared error per coordinate, pixels²", unit="px²"),
        M("mae", absolute_error, "Mean absolute error per coordinate, pixels", unit="px"),
        M("rmse", squared_error, "Root mean squared error per coordinate, pixels", aggregate="sqrt_mean",
          unit="px"),
        M("mape", _in_pixels(_mape(1.0)),
          "Mean absolute percentage error per coordinate, pixels; coordinates with |true| < 1 px excluded",
          unit="%"),
        M("mse_norm", _in_crop(_mse), "Mean squared error per coordinate in [0, 1] crop coordinates"
          " (mse / side²)"),
        M("mae_norm", _in_crop(_mae), "Mean absolute error per coordinate in [0, 1] crop coordinates"
          " (mae / side)"),
        M("rmse_norm", _in_crop(_mse), "Root mean squared error per coordinate in [0, 1] crop coordinates",
          aggregate="sqrt_mean"),
        M("mape_norm", _in_crop(_mape(0.01)),
          "Mean absolute percentage error per coordinate in [0, 1] crop coordinates; |true| < 0.01 excluded",
          unit="%"),
        M("nme", nme, "Mean point-to-point error / inter-ocular (outer eye corners) distance"),
        M("nme15", on_kaggle15(nme), "Inter-ocular NME on the 15 Kaggle points (a 68-point run's points"
          " mapped to them)"),
        M("nme_ip", _nme(inter_pupil), "Mean point-to-point error / inter-pupil (eye centers) distance"),
        M("nme_box", _nme(box_size),
          "Mean point-to-point error / sqrt(w*h) of the visible true points' bounding box"),
        M("fr10", _failure(0.1), "Failure rate: fraction of images with inter-ocular NME > 0.1"),
        M("auc10", _auc(0.1), "Area under the inter-ocular NME CED from 0 to 0.1, normalized to [0, 1]",
          higher_is_better=True),
        M("jitter", jitter, "Frame-to-frame change of the error on video frames / inter-ocular distance"
          " (mean over consecutive frames of a clip)"),
    ]
