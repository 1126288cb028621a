"""Component specs and the name -> spec registries, with wildcard listing and "did you mean" errors."""

from __future__ import annotations

import difflib
import fnmatch
import inspect
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

from kpbench.errors import KpbenchError
from kpbench.protocols import DatasetFactory, DetectorFactory, Metric, ModelFactory, SchemaFactory


@dataclass
class _Named:
    name: str
    plugin: str = field(default="?", compare=False, kw_only=True)  # filled in by the registry


@dataclass
class _Spec(_Named):
    factory: Callable[..., Any]
    description: str = ""


@dataclass
class ModelSpec(_Spec):
    """:class:`kpbench.protocols.ModelFactory`: ``factory(num_keypoints, input_size, in_chans=1, **options) -> torch.nn.Module``.

    The module maps a batch of grayscale crops (B, in_chans, S, S), pixels in [0, 1], to (B, 2K):
    x, y per point in crop coordinates scaled to [0, 1]. kpbench adds the training set's mean
    shape to the output, so a module that outputs zeros predicts the mean face.
    ``defaults`` are training settings this model prefers (e.g. ``{"lr": 3e-4}``); the config
    can still override them. ``check(options)``, if given, is called with the model's options
    before a run does any work and raises ``KpbenchError`` when the model cannot run there (a
    reference model's missing file), so that the mistake costs no training time.

    What else kpbench looks for on the module (all optional):

    - ``absolute_output = True``: the output is already crop coordinates (heatmap models), the mean
      shape is not added.
    - ``backbone`` (a module) or ``backbones`` (an ``nn.ModuleDict``, one per branch): the pretrained
      part that ``train.freeze_epochs`` freezes and ``unfreeze: last_stage`` partly thaws (its
      ``last_stage_parameters()`` if it has one, else timm's ``feature_info``); ``alpha`` (one
      weight per branch) is reported per branch.
    - ``frozen_features(x)`` and ``head_forward(z)`` (``forward`` = their composition,
      :class:`kpbench.protocols.SplitsInTwo`): the frozen phase trains the head on cached features.
    - ``auxiliary_loss(pred, target)`` (:class:`kpbench.protocols.AuxiliaryLoss`): a term added to
      the training loss.
    - ``flip_test = False``: no test-time flip averaging for this model.
    - ``learns_points = False``: its points are not learnt from the annotations (a reference tool's
      own), so they are reported as it gives them, not numbered as the training annotations
      (``Regressor.origin`` 0; see ``Sample.origin``).
    - ``photo_keypoints(image)``: a model that finds faces itself returns, for an (H, W, 3) uint8
      photo, one (K, 2) array per face in the photo's pixels; it is then also scored on the whole
      photos (the ``own-detector`` path).
    - a ``weights`` factory option (``none``, ``imagenet``, or a file) by convention, and
      ``defaults["input_size"]`` for a model that wants its own input size.
    """

    factory: ModelFactory
    defaults: dict = field(default_factory=dict)
    check: Callable[[dict], Any] | None = None


@dataclass
class DatasetSpec(_Spec):
    """``factory(path=None, **options) -> kpbench.data.Dataset``."""

    factory: DatasetFactory


@dataclass
class DetectorSpec(_Spec):
    """``factory(**options) -> detector``; ``detector(image, points)`` gives the face box of a
    training/test sample, ``(x0, y0, side)`` or ``(x0, y0, side, angle)`` in the image's pixels
    (``points``: its annotated points, for detectors that pick the annotated face among several),
    or ``None`` for a miss (kpbench then uses the annotated box and marks the face missed).
    Optional: ``detect_all(image) -> [{"box", "score", "landmarks"}]`` to find every face in a
    photo (what ``kpbench predict`` needs), a ``margin`` attribute/option (the crop convention),
    ``cache_boxes = True`` (slow detectors: boxes kept on disk per image and options). See
    :class:`kpbench.protocols.Detector` and :class:`~kpbench.protocols.FindsFaces`."""

    factory: DetectorFactory


@dataclass
class MetricSpec(_Named):
    """A metric: ``fn(pred, true, ctx) -> per-image values (N,)``, NaN where undefined
    (:class:`kpbench.protocols.Metric`).

    pred/true are (N, K, 2) in the original image's pixels, NaN marks missing true points;
    ctx is a :class:`kpbench.MetricContext`. ``aggregate`` reduces the per-image values
    ("mean", or "sqrt_mean" for root-mean metrics); ``higher_is_better`` orders leaderboards.
    A spec is itself callable: ``spec(pred, true, ctx)``.
    (kpbench 0.1's ``factory() -> fn`` still works, with a DeprecationWarning.)
    """

    fn: Metric
    description: str = ""
    higher_is_better: bool = False
    aggregate: str = "mean"
    unit: str = ""

    def __post_init__(self):
        if _takes_no_arguments(self.fn):  # the 0.1 contract: a factory returning the function
            warnings.warn(f"metric {self.name!r}: MetricSpec now takes the metric function itself, not a "
                          f"factory returning it", DeprecationWarning, stacklevel=3)
            self.fn = self.fn()

    def __call__(self, pred, true, ctx):
        return self.fn(pred, true, ctx)


def _takes_no_arguments(fn) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return not any(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL) for p in params)


@dataclass
class SchemaSpec(_Spec):
    """``factory() -> kpbench.Schema`` named ``name`` (a keypoint layout: point names, left/right
    flip pairs, the inter-ocular pair); ``mappings``: ``{other schema: fn}`` with ``fn((..., K, 2))
    -> (..., K', 2)`` mapping points of this schema to the other (NaN stays NaN), so that a dataset
    in this layout can train a model of the other."""

    factory: SchemaFactory
    mappings: dict[str, Callable[[Any], Any]] = field(default_factory=dict)


@dataclass
class ReportWriterSpec(_Named):
    """A report format: ``write(report)`` writes its files into ``report.run_dir`` from a
    :class:`kpbench.writers.Report` (the leaderboard and its tables as DataFrames, the run's
    manifest, figures, notes), through :class:`kpbench.rundir.RunDir`'s atomic writers. It must be
    deterministic (``kpbench report`` re-renders a run byte for byte). kpbench's own: csv, md,
    json, html."""

    write: Callable[[Any], None]
    description: str = ""


KINDS = {"model": ModelSpec, "dataset": DatasetSpec, "detector": DetectorSpec, "metric": MetricSpec,
         "schema": SchemaSpec, "report_writer": ReportWriterSpec}


class Registry:
    """All registered components of one kind, by name."""

    def __init__(self, kind: str):
        self.kind = kind
        self._specs: dict[str, _Named] = {}

    def add(self, spec: _Named, plugin: str) -> None:
        if not isinstance(spec, KINDS[self.kind]):
            raise KpbenchError(
                f"plugin {plugin!r} returned {type(spec).__name__} {getattr(spec, 'name', spec)!r}"
                f" from its {self.kind} hook; expected a {KINDS[self.kind].__name__}"
            )
        if spec.name in self._specs:
            other = self._specs[spec.name].plugin
            raise KpbenchError(
                f"{self.kind} {spec.name!r} is registered twice: by plugin {other!r} and by plugin {plugin!r}"
            )
        spec.plugin = plugin
        self._specs[spec.name] = spec

    def names(self) -> list[str]:
        return sorted(self._specs)

    def __contains__(self, name: str) -> bool:
        return name in self._specs

    def get(self, name: str, where: str = "") -> Any:
        if name in self._specs:
            return self._specs[name]
        close = difflib.get_close_matches(name, self.names(), n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        at = f"{where}: " if where else ""
        raise KpbenchError(
            f"{at}unknown {self.kind} {name!r}{hint} (known: {', '.join(self.names()) or 'none'})"
        )

    def list(self, pattern: str = "*") -> list[Any]:
        return [self._specs[n] for n in self.names() if fnmatch.fnmatchcase(n, pattern)]
