"""Detector calibration as data: how a face detector's boxes sit against kpbench's face-box
convention (the square around a sample's annotated points, :func:`kpbench.data.points_box` at
margin 0), measured on annotated faces (``kpbench calibrate``).

A detector that takes ``scale``, ``shift_x`` and ``shift_y`` options (its face box: side ``scale`` x
its raw box's larger side, centre moved by ``shift`` x that side; see ``mtcnn``) is measured with
the identity calibration, and the medians become its options. Any other detector is measured as
it is: its bias and spread are reported, with no options to suggest. The spread left after the
calibration (robust standard deviations of the log side ratio and of the centre offsets, in face-box
sides) is what ``train.box_jitter`` should draw, so that models trained on annotation boxes
tolerate the detector.
"""

from __future__ import annotations

import inspect
import math

import numpy as np

from kpbench.data import Dataset, points_box
from kpbench.errors import KpbenchError

IDENTITY = {"scale": 1.0, "shift_x": 0.0, "shift_y": 0.0}


def _robust_std(x: np.ndarray) -> float:
    """1.4826 x the median absolute deviation: the std of a normal sample, not pulled by outliers."""
    return float(1.4826 * np.median(np.abs(x - np.median(x)))) if len(x) else float("nan")


def calibratable(factory) -> bool:
    """Whether a detector factory takes the calibration options (scale, shift_x, shift_y)."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False
    return all(k in params for k in IDENTITY) and "margin" in params


def measure(detector, dataset: Dataset, indices, on_item=None) -> dict:
    """Per matched face: log(face side / detector face side), centre offset (face - detector) in
    detector face sides. The detector face box is its crop box without its ``margin``."""
    margin = float(getattr(detector, "margin", 0.0))
    logs, dxs, dys, misses = [], [], [], 0
    for i in indices:
        s = dataset[int(i)]
        ref = points_box(np.asarray(s.points, dtype=np.float64), 0.0)
        box = detector(s.image, s.points)
        if on_item:
            on_item()
        if ref is None:
            continue
        if box is None:
            misses += 1
            continue
        x0, y0, crop = (float(v) for v in box[:3])
        cx, cy, side = x0 + crop / 2, y0 + crop / 2, crop / (1 + 2 * margin)  # the face box inside the crop
        logs.append(math.log(ref[2] / side))
        dxs.append((ref[0] + ref[2] / 2 - cx) / side)
        dys.append((ref[1] + ref[2] / 2 - cy) / side)
    return {"log_ratio": np.array(logs), "dx": np.array(dxs), "dy": np.array(dys), "misses": misses}


def summarize(m: dict, calibrated: bool) -> dict:
    """Options (the medians, when the detector is calibratable) and the spread left after them,
    in units of the face box (the convention's), ready for ``train.box_jitter``."""
    n = len(m["log_ratio"])
    if n == 0:
        raise KpbenchError("calibrate: the detector matched no annotated face; check the dataset and detector")
    ratio = float(np.exp(np.median(m["log_ratio"])))
    dx, dy = float(np.median(m["dx"])), float(np.median(m["dy"]))
    # Residual offsets measured in the calibrated face box's side (the detector side times ratio).
    rx, ry = (m["dx"] - dx) / ratio, (m["dy"] - dy) / ratio
    out = {
        "faces": n, "misses": int(m["misses"]),
        "median": {"side_ratio": round(ratio, 4), "dx": round(dx, 4), "dy": round(dy, 4)},
        "iqr": {k: [round(float(v), 4) for v in np.percentile(a, [25, 75])] for k, a in
                (("side_ratio", np.exp(m["log_ratio"])), ("dx", m["dx"]), ("dy", m["dy"]))},
        "spread": {"log_side": round(_robust_std(m["log_ratio"]), 4), "shift_x": round(_robust_std(rx), 4),
                   "shift_y": round(_robust_std(ry), 4)},
    }
    out["box_jitter"] = {"scale": out["spread"]["log_side"], "shift": max(out["spread"]["shift_x"],
                                                                          out["spread"]["shift_y"])}
    if calibrated:
        out["options"] = {"scale": round(ratio, 4), "shift_x": round(dx, 4), "shift_y": round(dy, 4)}
    return out


def calibrate(plugins, detector: str, dataset: str, dataset_options: dict | None = None,
              detector_options: dict | None = None, limit: int | None = 400, seed: int = 0,
              console=None) -> dict:
    """``kpbench calibrate``: measure ``detector`` on (a seeded subset of) ``dataset``."""
    from kpbench.components import load_dataset, make_detector
    from kpbench.log import progress_bar

    factory = plugins.detectors.get(detector, where="--detector").factory
    options = dict(detector_options or {})
    calibrated = calibratable(factory)
    if calibrated:
        options.update(IDENTITY, margin=0.0)
    det = make_detector(plugins, detector, options)
    data = load_dataset(plugins, dataset, dataset_options or {})
    n = len(data)
    idx = np.arange(n) if not limit or limit >= n else np.sort(
        np.random.default_rng(seed).choice(n, size=limit, replace=False))
    with progress_bar(console) as progress:
        task = progress.add_task(f"calibrating {detector}", total=len(idx))
        m = measure(det, data, idx, on_item=lambda: progress.advance(task))
    out = {"detector": detector, "dataset": dataset, "samples": len(idx), "seed": seed,
           "measured_with": options, **summarize(m, calibrated)}
    return out
