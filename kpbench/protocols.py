"""The plugin contract as types: what a model, dataset and detector factory and a metric take and
return, and the optional abilities kpbench checks for at run time (``isinstance`` works on the
``runtime_checkable`` ones). The specs in :mod:`kpbench.registry` are annotated with these; a
type checker holds a plugin to them (kpbench ships ``py.typed``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator, Protocol, runtime_checkable

if TYPE_CHECKING:
    import numpy as np
    import torch

    from kpbench.data import Dataset
    from kpbench.keypoints import Schema

Box = tuple  # (x0, y0, side) or (x0, y0, side, angle), in the image's pixels


@dataclass
class MetricContext:
    """What a metric gets besides the points: the schema, the face boxes and (video) the frames."""
    schema: Schema
    boxes: np.ndarray  # (N, 3) face boxes the predictions were made in
    frames: list[tuple[str, int] | None] | None = None  # (clip, index) of each video frame, None for a photo


class ModelFactory(Protocol):
    """Builds the network: a batch of gray crops (B, in_chans, S, S) in [0, 1] -> (B, 2K), x and y
    per point as fractions of the crop side (offsets from the mean shape unless the module says
    ``absolute_output = True``); see :class:`kpbench.ModelSpec` for the optional attributes."""

    def __call__(self, num_keypoints: int, input_size: int, in_chans: int = 1, **options: Any) -> torch.nn.Module: ...


class DatasetFactory(Protocol):
    def __call__(self, path: str | None = None, **options: Any) -> Dataset: ...


class Detector(Protocol):
    """A face box for a sample (``points``: its annotation, to pick the annotated face among
    several), or None for a miss."""

    def __call__(self, image: np.ndarray, points: np.ndarray | None = None) -> Box | None: ...


@runtime_checkable
class FindsFaces(Protocol):
    """A detector that finds every face of a photo (what ``kpbench predict`` needs): a list of
    ``{"box": Box, "score": float, "landmarks": ...}``."""

    def detect_all(self, image: np.ndarray) -> list[dict]: ...


class DetectorFactory(Protocol):
    def __call__(self, **options: Any) -> Detector: ...


class Metric(Protocol):
    """Per-image values (N,) from predictions and annotations (N, K, 2) in the image's pixels
    (NaN: a missing point); NaN where the metric is undefined for an image."""

    def __call__(self, pred: np.ndarray, true: np.ndarray, ctx: MetricContext) -> np.ndarray: ...


@runtime_checkable
class FindsOwnFaces(Protocol):
    """A model that finds faces itself (a reference such as dlib or MediaPipe): for an (H, W, 3)
    uint8 photo, one (K, 2) array of points per face, in the photo's pixels and the run's schema."""

    def photo_keypoints(self, image: np.ndarray) -> list[np.ndarray]: ...


@runtime_checkable
class GivesConfidence(Protocol):
    """A network that can say how sure it is of each point (heatmap heads: ``integral``,
    ``effnet-heatmap``): for crops (B, C, S, S), its usual output (B, 2K) and a confidence per
    point (B, K) in [0, 1], higher meaning surer. ``kpbench predict`` and the Predictor write it;
    models without it give ``null``."""

    def with_confidence(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...


@runtime_checkable
class SplitsInTwo(Protocol):
    """A network whose ``forward`` is ``head_forward(frozen_features(x))``: while its backbones are
    frozen (and the augmentation deterministic) the head trains on features computed once per
    image (:mod:`kpbench.features`)."""

    def frozen_features(self, x: torch.Tensor) -> torch.Tensor: ...

    def head_forward(self, z: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class AuxiliaryLoss(Protocol):
    """A network that adds a term to its training loss (the two-stage model's first-stage error,
    effnet-heatmap's heatmap term), given its prediction and the targets, both (B, K, 2) in the
    targets' unit."""

    def auxiliary_loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor: ...


class SchemaFactory(Protocol):
    def __call__(self) -> Schema: ...


PhotoSource = Iterator  # whole photos, in the order of the faces asked for
