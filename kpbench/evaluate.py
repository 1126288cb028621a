"""The one evaluation path: a model's predictions in crop space -> the original image's pixels ->
every metric, per image and aggregated."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch

from kpbench.data import Prepared, to_image_pixels
from kpbench.keypoints import Schema
from kpbench.registry import MetricSpec


@dataclass
class MetricContext:
    schema: Schema
    boxes: np.ndarray  # (N, 3) face boxes the predictions were made in


def predict(model: torch.nn.Module, images: torch.Tensor, batch_size: int = 128, device="cpu") -> np.ndarray:
    """(N, 1, S, S) -> (N, K, 2) crop coordinates, under inference mode."""
    model.eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(images), batch_size):
            out.append(model(images[i:i + batch_size].to(device)).float().cpu())
    return torch.cat(out).numpy()


def aggregate(values: np.ndarray, how: str) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        m = float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
    if how == "mean":
        return m
    if how == "sqrt_mean":
        return float(np.sqrt(m))
    raise ValueError(f"unknown aggregation {how!r}")


def score(pred_crop: np.ndarray, data: Prepared, schema: Schema, metrics: list[MetricSpec]):
    """Returns (predictions in image pixels, {metric: aggregated value}, {metric: per-image values})."""
    pred_px = to_image_pixels(pred_crop, data.boxes)
    ctx = MetricContext(schema=schema, boxes=data.boxes)
    per_image = {m.name: np.asarray(m.factory()(pred_px, data.points, ctx), dtype=np.float64) for m in metrics}
    values = {m.name: aggregate(per_image[m.name], m.aggregate) for m in metrics}
    return pred_px, values, per_image
