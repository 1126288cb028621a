"""Building a run's components by name: datasets, detectors (set to a model's crop convention),
model settings and devices. Shared by the run, ``evaluate``, ``predict``, ``calibrate`` and
``bench``; nothing here trains or writes."""

from __future__ import annotations

import inspect

import torch

from kpbench.config import DEFAULTS
from kpbench.data import Concat, source_names
from kpbench.errors import KpbenchError
from kpbench.plugins import Plugins


def resolve_device(name: str) -> str:
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


def model_settings(config: dict, label: str, spec) -> tuple[dict, int, dict]:
    """A model's factory options, input size and training settings: ``model_options[label]`` may
    hold ``input_size`` and ``train`` (overrides of the train section for this model) besides the
    factory's own options; the model's spec defaults apply where the config kept the default."""
    from kpbench.config import validate

    options = dict(config["model_options"].get(label, {}))
    size = int(options.pop("input_size", None) or spec.defaults.get("input_size") or config["data"]["input_size"])
    overrides = options.pop("train", None) or {}
    validate({"train": overrides}, f"model_options.{label}.train")
    tc = {**config["train"]}
    for key, value in spec.defaults.items():
        if key in tc and tc.get(key) == DEFAULTS["train"].get(key):
            tc[key] = value
    tc.update(overrides)
    return options, size, tc


CONVENTION_OPTIONS = ("margin", "align")  # what another detector takes over from a run's


def run_option(plugins: Plugins, dc: dict, key: str):
    """A crop-convention option of a run's detector (``margin``, ``align``): set in its options, or
    that option's default; None for a detector without it (``none`` has no margin: whole images)."""
    if key in dc["detector_options"]:
        return dc["detector_options"][key]
    param = inspect.signature(plugins.detectors.get(dc["detector"], where="data.detector").factory).parameters.get(key)
    return None if param is None or param.default is inspect.Parameter.empty else param.default


def crop_convention(plugins: Plugins, dc: dict) -> dict:
    """What a run's crops are, for the manifest and for ``evaluate``/``predict`` to reproduce."""
    return {"face_box": "square around the annotated points (all of the source schema's)",
            "detector": dc["detector"], "detector_options": dc["detector_options"],
            **{k: run_option(plugins, dc, k) for k in CONVENTION_OPTIONS}}


def convention_options(plugins: Plugins, name: str, dc: dict, options: dict | None = None) -> dict:
    """Options for detector ``name`` that follow a run's crop convention: the run's own detector
    keeps the run's options; another one gets the run's ``margin`` and ``align`` where it takes
    them (a model trained on gt-box(0.15) crops gets mtcnn(0.15) crops); ``options`` override."""
    opts = {**(dc["detector_options"] if name == dc["detector"] else {}), **(options or {})}
    params = inspect.signature(plugins.detectors.get(name, where="detector").factory).parameters
    for key in CONVENTION_OPTIONS:
        value = run_option(plugins, dc, key)
        if key in params and key not in opts and value is not None:
            opts[key] = value
    return opts


def path_detector(plugins: Plugins, name: str, dc: dict, options: dict | None = None, cache: bool = True):
    """Detector ``name`` set to a run's crop convention (see :func:`convention_options`)."""
    return make_detector(plugins, name, convention_options(plugins, name, dc, options), cache)


def make_detector(plugins: Plugins, name: str, options: dict, cache: bool = True):
    """The detector ``name`` with ``options``; a slow one (``cache_boxes``) keeps its boxes on disk
    unless ``cache`` is off (new photos: nothing to look up)."""
    from kpbench.boxcache import CachedDetector

    det = call_factory(plugins.detectors.get(name, where="data.detector").factory, f"detector {name!r}", **options)
    return CachedDetector(det, name, options) if cache and getattr(det, "cache_boxes", False) else det


def use_flip_test(model, config: dict, schema) -> None:
    """Test-time flip averaging where the config asks for it and the model does not opt out."""
    if config["eval"]["flip_test"] and getattr(model.net, "flip_test", True):
        model.flip_test = list(schema.flip_permutation)


def convention_note(trained, plugins: Plugins, detector: str) -> str | None:
    """One line when ``detector`` cannot give the crops the model was trained on, else None."""
    dc = trained.config["data"]
    if run_option(plugins, dc, "margin") is None and detector != dc["detector"]:
        return (f"note: {trained.label} was trained on whole images (detector {dc['detector']!r}); {detector} crops "
                f"faces by its own margin, so they may differ from what the model saw in training")
    margin = run_option(plugins, dc, "margin")
    if margin is not None and detector == "none":
        return (f"note: {trained.label} was trained on face crops (margin {margin} around the face box); detector "
                f"'none' gives it whole images, which fit only photos already cropped that way")
    return None
