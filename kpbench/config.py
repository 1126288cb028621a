"""YAML configs: built-in defaults, a config file merged over them, then CLI overrides; every
key and type is checked, and an error names the file, line, key and what was expected."""

from __future__ import annotations

import copy
import dataclasses
import difflib
import hashlib
import json
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from kpbench.errors import KpbenchError

class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads ``3e-4`` as a string; learning rates are written that way, so read it as a float."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[0-9][0-9_]*[eE][-+]?[0-9]+"
               r"|\.[0-9_]+(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."),
)


def _yaml(text: str):
    return yaml.load(text, Loader=_Loader)


@dataclass(frozen=True)
class RaySettings:
    address: str | None = None
    cpus_per_job: int | float = 1
    gpus_per_job: int | float = 0


@dataclass(frozen=True)
class RunSettings:
    name: str = "run"
    seed: int = 0
    seeds: list | None = None
    out: str | None = None
    device: str = "auto"
    threads: int | None = None
    executor: Literal["local", "ray"] = "local"  # where the jobs (model x seed) run
    ray: RaySettings = field(default_factory=RaySettings)


@dataclass(frozen=True)
class DataSettings:
    dataset: str | list = "synthetic"  # "kind" or "kind:path", or a list of them (combined)
    options: dict | list = field(default_factory=dict)  # for the dataset plugin (a list: one per dataset)
    schema: str = "kaggle15"  # target keypoint schema
    split: list = field(default_factory=lambda: [0.7, 0.15, 0.15])  # train/val/test fractions
    detector: str = "none"
    detector_options: dict = field(default_factory=dict)
    input_size: int = 96
    limit: int | None = None  # use a seeded random subset of this many samples (quick runs)
    skip_bad: bool = False  # leave out bad samples (warned, counted in the manifest) instead of failing
    miss_policy: Literal["fallback", "exclude"] = "fallback"  # a test-split detector miss: gt-box crop or left out
    eval_dataset: str | None = None  # evaluate on another dataset ("kind:path"), all of it
    eval_options: dict = field(default_factory=dict)


@dataclass(frozen=True)
class AugmentSettings:
    rotate: float = 0.0
    scale: float = 0.0
    translate: float = 0.0
    brightness: float = 0.0
    contrast: float = 0.0
    prob: float = 1.0  # the fraction of training images augmented


@dataclass(frozen=True)
class BoxJitterSettings:
    scale: float = 0.0
    shift: float = 0.0
    rotate: float = 0.0


@dataclass(frozen=True)
class TrainSettings:
    epochs: int = 10
    batch_size: int = 32
    lr: float = 0.001
    weight_decay: float = 0.0
    flip: bool = True
    erase: float = 0.0
    augment: AugmentSettings = field(default_factory=AugmentSettings)
    box_jitter: BoxJitterSettings = field(default_factory=BoxJitterSettings)
    freeze_epochs: int = 0
    unfreeze: Literal["all", "last_stage"] = "all"
    frozen_stages: int = 0  # the first N stages of each pretrained backbone never train (stem included)
    backbone_lr: float = 1.0
    feature_cache: bool = True
    channels_last: bool = True
    loss: Literal["mse", "l1", "wing"] = "mse"
    schedule: Literal["none", "cosine", "plateau"] = "none"
    patience: int | None = None
    targets: Literal["unit", "pixels"] = "unit"
    checkpoint_interval: int | float = 60
    ema: float | None = None  # decay of an exponential moving average of the weights, validated and kept


@dataclass(frozen=True)
class EvalSettings:
    metrics: list = field(default_factory=lambda: ["nme", "fr10", "auc10", "rmse", "mae", "mse"])
    sort_by: str = "nme"
    latency: bool = True
    onnx_latency: Literal["auto", False] = "auto"  # auto: ONNX Runtime's CPU latency where installed
    flip_test: bool = False
    detectors: list = field(default_factory=list)  # more face-box paths the test split is scored through


@dataclass(frozen=True)
class Settings:
    """A run's settings, typed: one declaration gives each key's type, default and choices (the
    YAML's checks and :data:`DEFAULTS` are read off it). The YAML dict lives only at the edges:
    a file in (:func:`load`), ``config.yaml`` out and the config hash (:meth:`to_dict`)."""
    run: RunSettings = field(default_factory=RunSettings)
    data: DataSettings = field(default_factory=DataSettings)
    models: list = field(default_factory=lambda: ["cnn"])
    model_options: dict = field(default_factory=dict)  # model label -> options for its factory
    train: TrainSettings = field(default_factory=TrainSettings)
    eval: EvalSettings = field(default_factory=EvalSettings)

    @classmethod
    def from_dict(cls, config: dict, source: str = "the config") -> "Settings":
        """Settings from a config mapping (missing keys keep their defaults), checked as a file is."""
        validate(config, source)
        return _build(cls, config)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **changes) -> "Settings":
        """A copy with values changed: ``replace(data={"detector": "mtcnn"})`` changes one key of a
        section (a section within a section likewise), ``replace(models=[...])`` a whole value;
        a free-form mapping (``detector_options``) is replaced, not merged."""
        return _replaced(self, changes)


def _replaced(obj, changes: dict):
    fields = {f.name for f in dataclasses.fields(obj)}
    out = {}
    for key, value in changes.items():
        if key not in fields:
            raise KpbenchError(f"{type(obj).__name__} has no setting {key!r}")
        current = getattr(obj, key)
        out[key] = _replaced(current, value) if dataclasses.is_dataclass(current) and isinstance(value, dict) else value
    return dataclasses.replace(obj, **out)


def _build(cls, values: dict):
    hints = typing.get_type_hints(cls)
    return cls(**{k: _build(hints[k], v) if dataclasses.is_dataclass(hints[k]) else copy.deepcopy(v)
                  for k, v in values.items()})


def _runtime_type(hint):
    """The isinstance() check of a field's annotation: ``int | None`` -> (int, NoneType)."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) is Literal:
        kinds = tuple(dict.fromkeys(type(a) for a in args))
        return kinds if len(kinds) > 1 else kinds[0]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        members = [_runtime_type(a) for a in args]
        return tuple(t for m in members for t in (m if isinstance(m, tuple) else (m,)))
    return typing.get_origin(hint) or hint


def _declared(cls, prefix: str = "") -> tuple[dict, dict, dict]:
    """The key -> type tree, the choices by key path and the defaults of a settings class."""
    schema, choices, defaults = {}, {}, dataclasses.asdict(cls())
    for name, hint in typing.get_type_hints(cls).items():
        if dataclasses.is_dataclass(hint):
            schema[name], sub_choices, _ = _declared(hint, f"{prefix}{name}.")
            choices.update(sub_choices)
            continue
        schema[name] = _runtime_type(hint)
        if typing.get_origin(hint) is Literal:
            choices[f"{prefix}{name}"] = typing.get_args(hint)
    return schema, choices, defaults


# key -> type (or nested dict; a `dict` value is free-form, checked by whoever consumes it), the
# choices of the keys that have them, and the defaults: all read off `Settings`.
SCHEMA, CHOICES, DEFAULTS = _declared(Settings)


def _type_name(t) -> str:
    if isinstance(t, tuple):
        return " or ".join("null" if x is type(None) else x.__name__ for x in t)
    return "a mapping" if isinstance(t, dict) else t.__name__


def _compose_lines(text: str, source: str) -> tuple[Any, dict[str, int]]:
    """Parse YAML, remembering the line of every key path (``train.lr`` -> 12)."""
    try:
        node = yaml.compose(text, Loader=_Loader)
        data = _yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        raise KpbenchError(f"{where}: invalid YAML: {getattr(exc, 'problem', exc)}") from None
    lines: dict[str, int] = {}

    def walk(n, prefix):
        if isinstance(n, yaml.MappingNode):
            for k, v in n.value:
                path = f"{prefix}{k.value}"
                lines[path] = k.start_mark.line + 1
                walk(v, path + ".")

    if node is not None:
        walk(node, "")
    return data, lines


def validate(data: Any, source: str, lines: dict[str, int] | None = None, schema=SCHEMA, prefix="") -> None:
    lines = lines or {}
    if not isinstance(data, dict):
        raise KpbenchError(f"{source}: {prefix.rstrip('.') or 'the config'} must be a mapping, got {data!r}")
    for key, value in data.items():
        path = f"{prefix}{key}"
        where = f"{source}:{lines[path]}" if path in lines else source
        if key not in schema:
            close = difflib.get_close_matches(str(key), list(schema), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise KpbenchError(f"{where}: unknown key {path!r}{hint} (expected one of: {', '.join(schema)})")
        expected = schema[key]
        if isinstance(expected, dict):
            validate(value, source, lines, expected, path + ".")
            continue
        ok = isinstance(value, expected) and not (isinstance(value, bool) and bool not in
                                                   (expected if isinstance(expected, tuple) else (expected,)))
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            ok = True
        if not ok:
            raise KpbenchError(f"{where}: {path!r} must be {_type_name(expected)}, got {type(value).__name__} {value!r}")
        if path in CHOICES and value not in CHOICES[path]:
            choices = ", ".join(str(c).lower() if isinstance(c, bool) else c for c in CHOICES[path])
            raise KpbenchError(f"{where}: {path!r} must be one of {choices}, got {value!r}")


def merge(base: dict, over: dict) -> dict:
    """Deep merge: mappings merge key by key, anything else (lists included) is replaced."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def load(path: str | Path | None) -> dict:
    """Defaults merged with the YAML file at ``path`` (if any), validated."""
    config = copy.deepcopy(DEFAULTS)
    if path is None:
        return config
    p = Path(path)
    if not p.is_file():
        raise KpbenchError(f"config file not found: {p}")
    data, lines = _compose_lines(p.read_text(), str(p))
    if data is None:
        return config
    validate(data, str(p), lines)
    return merge(config, data)


def override(config: dict, assignment: str) -> dict:
    """Apply ``key.path=value`` (value parsed as YAML) with the same validation as a file."""
    if "=" not in assignment:
        raise KpbenchError(f"--set {assignment!r}: expected KEY=VALUE, e.g. train.lr=0.0003")
    key, raw = assignment.split("=", 1)
    try:
        value = _yaml(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        why = str(getattr(exc, "problem", None) or exc).splitlines()[0]
        raise KpbenchError(f"--set {assignment!r}: the value is not YAML ({why}); quote a string, e.g. "
                           f"run.name='my run'") from None
    nested: Any = value
    for part in reversed(key.strip().split(".")):
        nested = {part: nested}
    validate(nested, f"--set {assignment}")
    return merge(config, nested)


def _list_of(value, kind: type) -> bool:
    return isinstance(value, list) and all(isinstance(v, kind) and not isinstance(v, bool) for v in value)


def check(settings: Settings) -> None:
    """The values a run's settings must hold beyond their types (each a one-line error naming the
    key), checked before a run does any work: lists of names are strings, sizes and counts are
    positive, fractions are fractions, and ``run.out`` can be written."""
    import math
    import os

    rc, dc, tc, ec = settings.run, settings.data, settings.train, settings.eval
    names = {"models": settings.models, "eval.metrics": ec.metrics, "eval.detectors": ec.detectors,
             "data.dataset": dc.dataset if isinstance(dc.dataset, list) else [dc.dataset]}
    for key, value in names.items():
        if not _list_of(value, str) or any(not v.strip() for v in value):
            raise KpbenchError(f"{key} must be a list of names, got {value!r}")
    if not settings.models:
        raise KpbenchError("models: the list of models to run is empty")
    if rc.seeds is not None and (not _list_of(rc.seeds, int) or not rc.seeds):
        raise KpbenchError(f"run.seeds must be a non-empty list of integers, got {rc.seeds!r}")
    split = dc.split
    if not (_list_of(split, (int, float)) and len(split) == 3 and all(v >= 0 for v in split)
            and math.isclose(sum(split), 1.0, abs_tol=1e-6)):
        raise KpbenchError(f"data.split must be three non-negative fractions summing to 1, got {split!r}")
    for key, value, low in (("data.input_size", dc.input_size, 16), ("train.batch_size", tc.batch_size, 1),
                            ("train.epochs", tc.epochs, 1), ("train.freeze_epochs", tc.freeze_epochs, 0),
                            ("train.frozen_stages", tc.frozen_stages, 0),
                            ("data.limit", dc.limit, 3)):
        if value is not None and value < low:
            raise KpbenchError(f"{key} must be at least {low}, got {value}")
    for key, value in (("train.lr", tc.lr), ("train.backbone_lr", tc.backbone_lr)):
        if not (value > 0 and math.isfinite(value)):
            raise KpbenchError(f"{key} must be a finite positive number, got {value}")
    if rc.threads is not None and rc.threads < 1:
        raise KpbenchError(f"run.threads must be at least 1 (or null: torch's default), got {rc.threads}")
    if tc.patience is not None and tc.patience < 0:
        raise KpbenchError(f"train.patience must be non-negative (or null: no early stop), got {tc.patience}")
    if tc.ema is not None and not 0 < tc.ema < 1:
        raise KpbenchError(f"train.ema must be a decay in (0, 1), e.g. 0.998 (or null: off), got {tc.ema}")
    if not 0 <= tc.augment.prob <= 1:
        raise KpbenchError(f"train.augment.prob must be in [0, 1], got {tc.augment.prob}")
    if rc.seeds is not None and len(set(rc.seeds)) != len(rc.seeds):
        raise KpbenchError(f"run.seeds must not repeat a seed, got {rc.seeds!r}")
    name = str(rc.name)
    if not name.strip() or "/" in name or "\\" in name or name in (".", "..") or any(ord(c) < 32 for c in name):
        raise KpbenchError(f"run.name must be a plain folder name (no '/', '..' or control characters), got {name!r}")
    for key, value in (("train.weight_decay", tc.weight_decay), ("train.erase", tc.erase)):
        if not value >= 0 or (key == "train.erase" and value > 1):
            raise KpbenchError(f"{key} must be {'in [0, 1]' if key == 'train.erase' else 'non-negative'}, got {value}")
    ray = rc.ray
    if not ray.cpus_per_job > 0 or not ray.gpus_per_job >= 0:
        raise KpbenchError(f"run.ray: cpus_per_job must be positive and gpus_per_job non-negative, got "
                           f"{ray.cpus_per_job} and {ray.gpus_per_job}")
    if rc.out:
        out = Path(rc.out)
        if out.exists() and not out.is_dir():
            raise KpbenchError(f"run.out {rc.out!r} is a file, not a folder")
        parent = next((p for p in (out, *out.parents) if p.exists()), Path("."))
        if not os.access(parent, os.W_OK | os.X_OK):
            raise KpbenchError(f"run.out {rc.out!r}: {parent} is not writable")


# Where a run is written, where its jobs run and how often they checkpoint, not what it computes:
# not part of its identity (a run moved, started locally and resumed on Ray, or resumed with another
# checkpoint interval still resumes).
WHERE_KEYS = ("run.out", "run.executor", "run.ray.address", "run.ray.cpus_per_job", "run.ray.gpus_per_job",
              "train.checkpoint_interval")


def flatten(config: dict, prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 1e-3}}`` -> ``{"train.lr": 1e-3}`` (lists stay values)."""
    out: dict[str, Any] = {}
    for k, v in config.items():
        if isinstance(v, dict) and v:
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_hash(settings: Settings) -> str:
    """What a run computes, as a short hash: the settings without the keys that only say where it
    is written (so a run folder given by another path, or moved, still resumes)."""
    what = {k: v for k, v in flatten(settings.to_dict()).items() if k not in WHERE_KEYS}
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:12]


def differences(old: Settings, new: Settings) -> list[str]:
    """The keys whose values differ between two settings, as ``key: old -> new`` (where-keys left out)."""
    a, b = flatten(old.to_dict()), flatten(new.to_dict())
    return [f"{k}: {a.get(k, '(unset)')!r} -> {b.get(k, '(unset)')!r}" for k in sorted(set(a) | set(b))
            if k not in WHERE_KEYS and a.get(k, "(unset)") != b.get(k, "(unset)")]
