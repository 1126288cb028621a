"""YAML configs: built-in defaults, a config file merged over them, then CLI overrides; every
key and type is checked, and an error names the file, line, key and what was expected."""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import yaml

from kpbench.errors import KpbenchError

OPT_INT, OPT_STR = (int, type(None)), (str, type(None))


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

# key -> type (or nested dict). A `dict` value is free-form (checked by whoever consumes it).
SCHEMA: dict[str, Any] = {
    "run": {"name": str, "seed": int, "seeds": (list, type(None)), "out": OPT_STR, "device": str, "threads": OPT_INT,
            "executor": str,  # where the jobs (model x seed) run: local (this process) or ray
            "ray": {"address": OPT_STR, "cpus_per_job": (int, float), "gpus_per_job": (int, float)}},
    "data": {
        "dataset": (str, list),  # "kind" or "kind:path", or a list of them (combined)
        "options": (dict, list),  # passed to the dataset plugin (a list: one per dataset)
        "schema": str,  # target keypoint schema
        "split": list,  # train/val/test fractions
        "detector": str,
        "detector_options": dict,
        "input_size": int,
        "limit": OPT_INT,  # use a seeded random subset of this many samples (quick runs)
        "skip_bad": bool,  # leave out bad samples (warned, counted in the manifest) instead of failing
        "miss_policy": str,  # what a detector miss on the test split gets: "fallback" (gt-box crop) or "exclude"
        "eval_dataset": OPT_STR,  # evaluate on another dataset ("kind:path"), all of it
        "eval_options": dict,
    },
    "models": list,
    "model_options": dict,  # model name -> options for its factory
    "train": {"epochs": int, "batch_size": int, "lr": float, "weight_decay": float, "flip": bool,
              "erase": float, "augment": {"rotate": float, "scale": float, "translate": float, "brightness": float,
                                          "contrast": float, "prob": float},
              "box_jitter": {"scale": float, "shift": float, "rotate": float},
              "freeze_epochs": int, "unfreeze": str, "backbone_lr": float, "feature_cache": bool,
              "channels_last": bool, "loss": str, "schedule": str, "patience": OPT_INT, "targets": str,
              "checkpoint_interval": (int, float)},
    "eval": {"metrics": list, "sort_by": str, "latency": bool, "flip_test": bool,
             "onnx_latency": (str, bool),  # auto: ONNX Runtime's CPU latency beside latency_ms where installed
             "detectors": list},  # more face-box paths the test split is scored through, e.g. [mtcnn]
}

CHOICES = {"run.executor": ("local", "ray"), "data.miss_policy": ("fallback", "exclude"), "train.unfreeze": ("all", "last_stage"),
           "train.schedule": ("none", "cosine", "plateau"), "train.loss": ("mse", "l1", "wing"),
           "train.targets": ("unit", "pixels"), "eval.onnx_latency": ("auto", False)}

DEFAULTS: dict[str, Any] = {
    "run": {"name": "run", "seed": 0, "seeds": None, "out": None, "device": "auto", "threads": None,
            "executor": "local", "ray": {"address": None, "cpus_per_job": 1, "gpus_per_job": 0}},
    "data": {"dataset": "synthetic", "options": {}, "schema": "kaggle15", "split": [0.7, 0.15, 0.15],
             "detector": "none", "detector_options": {}, "input_size": 96,
             "limit": None, "skip_bad": False, "miss_policy": "fallback", "eval_dataset": None, "eval_options": {}},
    "models": ["cnn"],
    "model_options": {},
    "train": {"epochs": 10, "batch_size": 32, "lr": 0.001, "weight_decay": 0.0, "flip": True, "erase": 0.0,
              "augment": {"rotate": 0.0, "scale": 0.0, "translate": 0.0, "brightness": 0.0, "contrast": 0.0,
                          "prob": 1.0},
              "box_jitter": {"scale": 0.0, "shift": 0.0, "rotate": 0.0},
              "freeze_epochs": 0, "unfreeze": "all", "backbone_lr": 1.0, "feature_cache": True,
              "channels_last": True, "loss": "mse", "schedule": "none", "patience": None,
              "targets": "unit", "checkpoint_interval": 60},
    "eval": {"metrics": ["nme", "fr10", "auc10", "rmse", "mae", "mse"], "sort_by": "nme", "latency": True,
             "onnx_latency": "auto", "flip_test": False, "detectors": []},
}


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


def check(config: dict) -> None:
    """The values a merged config must hold beyond their types (each a one-line error naming the
    key), checked before a run does any work: lists of names are strings, sizes and counts are
    positive, fractions are fractions, and ``run.out`` can be written."""
    import math
    import os

    rc, dc, tc, ec = config["run"], config["data"], config["train"], config["eval"]
    names = {"models": config["models"], "eval.metrics": ec["metrics"], "eval.detectors": ec["detectors"],
             "data.dataset": dc["dataset"] if isinstance(dc["dataset"], list) else [dc["dataset"]]}
    for key, value in names.items():
        if not _list_of(value, str) or any(not v.strip() for v in value):
            raise KpbenchError(f"{key} must be a list of names, got {value!r}")
    if not config["models"]:
        raise KpbenchError("models: the list of models to run is empty")
    if rc["seeds"] is not None and (not _list_of(rc["seeds"], int) or not rc["seeds"]):
        raise KpbenchError(f"run.seeds must be a non-empty list of integers, got {rc['seeds']!r}")
    split = dc["split"]
    if not (_list_of(split, (int, float)) and len(split) == 3 and all(v >= 0 for v in split)
            and math.isclose(sum(split), 1.0, abs_tol=1e-6)):
        raise KpbenchError(f"data.split must be three non-negative fractions summing to 1, got {split!r}")
    for key, value, low in (("data.input_size", dc["input_size"], 16), ("train.batch_size", tc["batch_size"], 1),
                            ("train.epochs", tc["epochs"], 1), ("train.freeze_epochs", tc["freeze_epochs"], 0),
                            ("data.limit", dc["limit"], 3)):
        if value is not None and value < low:
            raise KpbenchError(f"{key} must be at least {low}, got {value}")
    for key, value in (("train.lr", tc["lr"]), ("train.backbone_lr", tc["backbone_lr"])):
        if not (value > 0 and math.isfinite(value)):
            raise KpbenchError(f"{key} must be a finite positive number, got {value}")
    if rc["threads"] is not None and rc["threads"] < 1:
        raise KpbenchError(f"run.threads must be at least 1 (or null: torch's default), got {rc['threads']}")
    if tc["patience"] is not None and tc["patience"] < 0:
        raise KpbenchError(f"train.patience must be non-negative (or null: no early stop), got {tc['patience']}")
    prob = (tc.get("augment") or {}).get("prob", 1.0)
    if not 0 <= prob <= 1:
        raise KpbenchError(f"train.augment.prob must be in [0, 1], got {prob}")
    if rc["seeds"] is not None and len(set(rc["seeds"])) != len(rc["seeds"]):
        raise KpbenchError(f"run.seeds must not repeat a seed, got {rc['seeds']!r}")
    name = str(rc["name"])
    if not name.strip() or "/" in name or "\\" in name or name in (".", "..") or any(ord(c) < 32 for c in name):
        raise KpbenchError(f"run.name must be a plain folder name (no '/', '..' or control characters), got {name!r}")
    for key, value in (("train.weight_decay", tc["weight_decay"]), ("train.erase", tc["erase"])):
        if not value >= 0 or (key == "train.erase" and value > 1):
            raise KpbenchError(f"{key} must be {'in [0, 1]' if key == 'train.erase' else 'non-negative'}, got {value}")
    ray = rc["ray"]
    if not ray["cpus_per_job"] > 0 or not ray["gpus_per_job"] >= 0:
        raise KpbenchError(f"run.ray: cpus_per_job must be positive and gpus_per_job non-negative, got "
                           f"{ray['cpus_per_job']} and {ray['gpus_per_job']}")
    if rc["out"]:
        out = Path(rc["out"])
        if out.exists() and not out.is_dir():
            raise KpbenchError(f"run.out {rc['out']!r} is a file, not a folder")
        parent = next((p for p in (out, *out.parents) if p.exists()), Path("."))
        if not os.access(parent, os.W_OK | os.X_OK):
            raise KpbenchError(f"run.out {rc['out']!r}: {parent} is not writable")


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


def config_hash(config: dict) -> str:
    """What a run computes, as a short hash: the config without the keys that only say where it
    is written (so a run folder given by another path, or moved, still resumes)."""
    what = {k: v for k, v in flatten(config).items() if k not in WHERE_KEYS}
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:12]


def differences(old: dict, new: dict) -> list[str]:
    """The keys whose values differ between two configs, as ``key: old -> new`` (where-keys left out)."""
    a, b = flatten(old), flatten(new)
    return [f"{k}: {a.get(k, '(unset)')!r} -> {b.get(k, '(unset)')!r}" for k in sorted(set(a) | set(b))
            if k not in WHERE_KEYS and a.get(k, "(unset)") != b.get(k, "(unset)")]
