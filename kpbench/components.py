"""Building a run's components by name: datasets, detectors (set to a model's crop convention),
models as planned and devices. Shared by the run, ``evaluate``, ``predict``, ``calibrate`` and
``bench``; nothing here trains or writes."""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass
from typing import Any

import numpy as np

from kpbench.config import DEFAULTS, DataSettings, Settings, TrainSettings, validate
from kpbench.data import Concat, Subset, source_names, split_dataset
from kpbench.errors import KpbenchError
from kpbench.plugins import Plugins


def resolve_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise KpbenchError(f"run.device {name!r}: CUDA is not available on this machine")
    return name


def call_factory(factory, what: str, *args, **options):
    """Call a plugin factory; a wrong option becomes a one-line error naming the component."""
    try:
        return factory(*args, **options)
    except TypeError as exc:
        raise KpbenchError(f"{what}: bad options {options}: {exc}") from None


def load_dataset(plugins: Plugins, spec, options):
    """``kind:path`` with its options, or a list of them (a list of options, or one for all) as one."""
    if isinstance(spec, list):
        opts = options if isinstance(options, list) else [options] * len(spec)
        if len(opts) != len(spec):
            raise KpbenchError(f"data.options: {len(opts)} option mappings for {len(spec)} datasets")
        return Concat([load_dataset(plugins, s, o) for s, o in zip(spec, opts)], source_names(spec))
    kind, _, path = spec.partition(":")
    ds_spec = plugins.datasets.get(kind, where="data.dataset")
    return call_factory(ds_spec.factory, f"dataset {kind!r}", path or None, **options)


@dataclass(frozen=True)
class ModelPlan:
    """One model of a run, resolved: its spec, factory options, input size and training settings
    (``model_options[label]`` may hold ``input_size`` and ``train``, overrides of the train section
    for this model, besides the factory's own options; the spec's defaults apply where the
    settings kept the default)."""
    label: str
    spec: Any
    options: dict
    input_size: int
    train: TrainSettings

    @classmethod
    def of(cls, settings: Settings, label: str, spec) -> "ModelPlan":
        options = dict(settings.model_options.get(label, {}))
        size = int(options.pop("input_size", None) or spec.defaults.get("input_size") or settings.data.input_size)
        overrides = options.pop("train", None) or {}
        validate({"train": overrides}, f"model_options.{label}.train")
        tc = dataclasses.asdict(settings.train)
        for key, value in spec.defaults.items():
            if key in tc and tc[key] == DEFAULTS["train"].get(key):
                tc[key] = value
        tc.update(overrides)
        return cls(label, spec, options, size, Settings().replace(train=tc).train)

    def build(self, num_points: int, **changes):
        """The model's network, untrained (``changes``: options over the configured ones)."""
        return call_factory(self.spec.factory, f"model {self.label!r}", num_points, self.input_size, 1,
                            **{**self.options, **changes})


CONVENTION_OPTIONS = ("margin", "align")  # what another detector takes over from a run's


@dataclass(frozen=True)
class CropConvention:
    """How a model's crops are cut: the run's detector with its options, and the ``margin``
    around the face box and the roll ``align`` that another detector takes over (None: the
    run's detector has no such option; ``none`` has no margin: whole images); and where the
    training crops sat around their faces' points, ``crop_from_points`` (the median over the
    training split of the crop's centre offset x, y and side, in units of the points' spread,
    :meth:`kpbench.data.Prepared.crop_from_points`; None for a run written before it), which
    a video track uses to place its crops. Written once to the manifest (and an export's
    sidecar) and read back by everything that loads a model."""
    detector: str
    detector_options: dict
    margin: float | None = None
    align: bool | None = None
    crop_from_points: tuple[float, float, float] | None = None

    @classmethod
    def of_run(cls, plugins: Plugins, data: DataSettings) -> "CropConvention":
        params = inspect.signature(plugins.detectors.get(data.detector, where="data.detector").factory).parameters

        def option(key):  # set in the run's options, or that option's default
            if key in data.detector_options:
                return data.detector_options[key]
            param = params.get(key)
            return None if param is None or param.default is inspect.Parameter.empty else param.default

        return cls(data.detector, dict(data.detector_options), *(option(k) for k in CONVENTION_OPTIONS))

    @classmethod
    def from_mapping(cls, entry: dict) -> "CropConvention":
        """The convention a manifest or sidecar holds (see :meth:`to_mapping`)."""
        prior = entry.get("crop_from_points")
        return cls(entry["detector"], dict(entry.get("detector_options") or {}),
                   *(entry.get(k) for k in CONVENTION_OPTIONS),
                   tuple(float(v) for v in prior) if prior is not None else None)

    def to_mapping(self) -> dict:
        return {"face_box": "square around the annotated points (all of the source schema's)",
                "detector": self.detector, "detector_options": self.detector_options,
                **{k: getattr(self, k) for k in CONVENTION_OPTIONS},
                **({"crop_from_points": list(self.crop_from_points)} if self.crop_from_points else {})}

    def options_for(self, plugins: Plugins, name: str, options: dict | None = None) -> dict:
        """Options for detector ``name`` that follow this convention: the run's own detector keeps
        the run's options; another one gets the ``margin`` and ``align`` where it takes them (a
        model trained on gt-box(0.15) crops gets mtcnn(0.15) crops); ``options`` override."""
        opts = {**(self.detector_options if name == self.detector else {}), **(options or {})}
        params = inspect.signature(plugins.detectors.get(name, where="detector").factory).parameters
        for key in CONVENTION_OPTIONS:
            value = getattr(self, key)
            if key in params and key not in opts and value is not None:
                opts[key] = value
        return opts

    def detector_for(self, plugins: Plugins, name: str, options: dict | None = None, cache: bool = True):
        """Detector ``name`` set to this convention (see :meth:`options_for`)."""
        return make_detector(plugins, name, self.options_for(plugins, name, options), cache)

    def note(self, label: str, detector: str) -> str | None:
        """One line when ``detector`` cannot give the crops model ``label`` was trained on, else None."""
        if self.margin is None and detector != self.detector:
            return (f"note: {label} was trained on whole images (detector {self.detector!r}); {detector} crops "
                    f"faces by its own margin, so they may differ from what the model saw in training")
        if self.margin is not None and detector == "none":
            return (f"note: {label} was trained on face crops (margin {self.margin} around the face box); detector "
                    f"'none' gives it whole images, which fit only photos already cropped that way")
        return None


def load_splits(plugins: Plugins, settings: Settings) -> tuple[tuple, tuple]:
    """The datasets of a run and its train/val/test indices: the dataset's split, or (with
    ``data.eval_dataset``) train/val from it and all of the other one as the test split."""
    dc, seed = settings.data, settings.run.seed
    dataset = load_dataset(plugins, dc.dataset, dc.options)
    if dc.limit:
        dataset = Subset(dataset, dc.limit, seed)
    splits = split_dataset(dataset, dc.split, seed)
    if not dc.eval_dataset:
        return (dataset, dataset, dataset), splits
    eval_set = load_dataset(plugins, dc.eval_dataset, dc.eval_options)
    return (dataset, dataset, eval_set), (splits[0], splits[1], np.arange(len(eval_set)))


def make_detector(plugins: Plugins, name: str, options: dict, cache: bool = True):
    """The detector ``name`` with ``options``; a slow one (``cache_boxes``) keeps its boxes on disk
    unless ``cache`` is off (new photos: nothing to look up)."""
    from kpbench.boxcache import CachedDetector

    det = call_factory(plugins.detectors.get(name, where="data.detector").factory, f"detector {name!r}", **options)
    return CachedDetector(det, name, options) if cache and getattr(det, "cache_boxes", False) else det
