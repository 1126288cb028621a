"""The one evaluation path: a model's predictions in crop space -> the original image's pixels ->
every metric, per image and aggregated.

A model that finds faces itself (a reference such as dlib or MediaPipe, whose module has
``photo_keypoints(image) -> [(K, 2) points in the photo's pixels, one per face found]``) is also
run as its users run it, on the whole photo: :func:`own_detector_predictions`."""

from __future__ import annotations


import numpy as np
import torch

from kpbench.data import Prepared, points_origin, split_confidence, to_crop, to_image_pixels  # both re-exported
from kpbench.formulas import aggregate, confidence_check, point_errors  # aggregate re-exported: metric values aggregate here
from kpbench.geometry import best_overlap, points_rect, rgb_uint8
from kpbench.io import atomic_save_npz
from kpbench.keypoints import Schema
from kpbench.protocols import GivesConfidence, MetricContext  # MetricContext re-exported
from kpbench.registry import MetricSpec


def predict(model: torch.nn.Module, images: torch.Tensor, batch_size: int = 128, device="cpu") -> np.ndarray:
    """(N, 1, S, S) -> (N, K, 2) crop coordinates, under inference mode."""
    model.eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(images), batch_size):
            out.append(model(images[i:i + batch_size].to(device)).float().cpu())
    return torch.cat(out).numpy()


class PointsAndConfidence(torch.nn.Module):
    """A model that gives confidences (:class:`kpbench.protocols.GivesConfidence`) as one module:
    crops in, (B, 3K) out (x, y per point in crop fractions, then a confidence per point), the
    form the Predictor runs and exports."""

    def __init__(self, regressor: torch.nn.Module):
        super().__init__()
        self.regressor = regressor
        self.origin = points_origin(regressor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.regressor.with_confidence(x)


def gives_confidence(model: torch.nn.Module) -> bool:
    """Whether a trained model (a Regressor) can say how sure it is of each point."""
    return isinstance(getattr(model, "net", None), GivesConfidence) and hasattr(model, "with_confidence")


def predict_with_confidence(model: torch.nn.Module, images: torch.Tensor, k: int, device="cpu"):
    """(N, K, 2) crop coordinates and (N, K) per-point confidences, or None for a model without them."""
    if not gives_confidence(model):
        return predict(model, images, device=device), None
    return split_confidence(predict(PointsAndConfidence(model), images, device=device), k)


def confidence_values(pred_px: np.ndarray, true: np.ndarray, conf: np.ndarray, schema: Schema) -> dict:
    """:func:`kpbench.formulas.confidence_check` on the points' inter-ocular errors."""
    return confidence_check(point_errors(pred_px, true, schema.norm_pair), conf)


OWN_DETECTOR = "own-detector"  # the face-box path of a model that finds the faces on the whole photo itself
MIN_IOU = 0.3  # a face found on the photo is the annotated one when their point boxes overlap this much


def match_face(faces: list[np.ndarray], true: np.ndarray) -> int | None:
    """Which of the faces found on a photo is the annotated one: the largest overlap (IoU) of the
    rectangles around their points, if at least MIN_IOU; None when no face matches."""
    ref = points_rect(true)
    if ref is None:
        return None
    return best_overlap([points_rect(np.asarray(f, dtype=np.float64)) for f in faces], ref, MIN_IOU)


def own_detector_predictions(net, images, data: Prepared, fallback_crop: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A model's points found on the whole photos (``net.photo_keypoints``: its own face detector,
    as its users run it), matched to the annotated faces (:func:`match_face`), in ``data``'s crop
    coordinates. A face it does not find is marked missed and gets ``fallback_crop`` (its
    prediction on ``data``'s crop), as a missed face on a detector path gets the annotated box.
    ``images``: the photos of ``data``'s faces, in order. Returns (predictions, missed)."""
    pred_px = to_image_pixels(fallback_crop, data.boxes)
    missed = np.zeros(len(data), dtype=bool)
    for i, image in enumerate(images):
        faces = net.photo_keypoints(rgb_uint8(image))
        k = match_face(faces, data.points[i])
        if k is None:
            missed[i] = True
        else:
            pred_px[i] = faces[k]
    return to_crop(pred_px, data.boxes), missed


def score(pred_crop: np.ndarray, data: Prepared, schema: Schema, metrics: list[MetricSpec], origin: float = 0.0):
    """Returns (predictions in image pixels, numbered from ``origin`` (:func:`points_origin`),
    {metric: aggregated value}, {metric: per-image values})."""
    pred_px = to_image_pixels(pred_crop, data.boxes, origin)
    ctx = MetricContext(schema=schema, boxes=data.boxes, frames=data.frames)
    per_image = {m.name: np.asarray(m(pred_px, data.points, ctx), dtype=np.float64) for m in metrics}
    values = {m.name: aggregate(per_image[m.name], m.aggregate) for m in metrics}
    return pred_px, values, per_image


NOT_DETECTORS = ("none", "gt-box")  # face-box paths that find no face: whole images, annotated boxes


def test_and_save(model, test_d: Prepared, schema: Schema, metrics: list[MetricSpec], miss_policy: str,
                  detector: str, mdir, device, pred_crop: np.ndarray | None = None) -> dict:
    """The one test path of ``kpbench run`` and ``kpbench evaluate``: predict (unless
    ``pred_crop`` is given), score in the original image's pixels, apply the detector-miss policy
    (``exclude``: misses are counted, not scored), save ``predictions.npz`` (per-image values
    included) in ``mdir``; returns the rounded metric values, plus ``miss_rate`` when the faces
    came through a real ``detector``."""
    conf = None
    if pred_crop is None:
        pred_crop, conf = predict_with_confidence(model, test_d.images, schema.num_points, device=device)
    pred_px, values, per_image = score(pred_crop, test_d, schema, metrics, points_origin(model))
    exclude = miss_policy == "exclude"
    if exclude:
        per_image = {k: np.where(test_d.missed, np.nan, v) for k, v in per_image.items()}
        values = {m.name: aggregate(per_image[m.name], m.aggregate) for m in metrics}
    if conf is not None:  # what the confidences are worth on these faces
        scored = np.where(test_d.missed[:, None, None], np.nan, test_d.points) if exclude else test_d.points
        values.update(confidence_values(pred_px, scored, conf, schema))
    atomic_save_npz(mdir / "predictions.npz", pred=pred_px, true=test_d.points, boxes=test_d.boxes,
                    ids=np.array(test_d.ids), missed=test_d.missed, **({} if conf is None else {"confidence": conf}),
                    **{f"metric_{k}": v for k, v in per_image.items()})
    out = {k: round(v, 6) for k, v in values.items()}
    if detector not in NOT_DETECTORS:  # a detector under test: its miss rate on the test split
        out["miss_rate"] = round(float(test_d.missed.mean()), 4)
    return out
