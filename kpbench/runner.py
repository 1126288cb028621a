"""A run: the models of a config, each trained by the one loop, evaluated by the one path and
profiled, written to ``results/<run-id>/`` with the resolved config, a manifest and a leaderboard.

With ``resume``, models whose results are already in the run directory are kept, not retrained.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import platform
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

import kpbench
from kpbench import report
from kpbench.config import DEFAULTS, check, config_hash, differences
from kpbench.data import Concat, Prepared, Subset, prepare, source_names, split_dataset
from kpbench.errors import KpbenchError
from kpbench.evaluate import OWN_DETECTOR, aggregate, own_detector_predictions, predict, score
from kpbench.io import atomic_write_json, atomic_write_text
from kpbench.keypoints import get_schema
from kpbench.plugins import Plugins
from kpbench.profile import count_params, profile
from kpbench.features import cached_features
from kpbench.train import backbone_modules, box_jitter, train

JITTER_CONTEXT = 0.25  # context around training crops for train.box_jitter, a fraction of the side each way


def progress_bar(console: Console) -> Progress:
    """The transient bar of data preparation and calibration: description, bar, n/total, time."""
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, transient=True)


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise KpbenchError(f"run.device {name!r}: CUDA is not available on this machine")
    return name


def _call(factory, what: str, *args, **options):
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
    return _call(ds_spec.factory, f"dataset {kind!r}", path or None, **options)


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(kpbench.__file__).parent, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def manifest(config: dict, device: str, fingerprint: str) -> dict:
    import timm

    return {
        "kpbench": kpbench.__version__, "torch": torch.__version__, "timm": timm.__version__,
        "numpy": np.__version__, "python": platform.python_version(), "platform": platform.platform(),
        "device": device, "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
        "git_commit": _git_commit(), "seed": config["run"]["seed"], "config_hash": config_hash(config),
        "dataset": config["data"]["dataset"], "dataset_fingerprint": fingerprint,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def run(config: dict, plugins: Plugins, console: Console | None = None, resume: bool = False) -> Path:
    console = console or Console()
    status = Console(stderr=True)
    check(config)
    rc, dc, ec = config["run"], config["data"], config["eval"]
    seed = rc["seed"]
    seeds = list(rc["seeds"] or [seed])
    if rc["threads"]:
        torch.set_num_threads(rc["threads"])
    device = resolve_device(rc["device"])

    # Resolve every name before any work, so a typo fails at once.
    schema = get_schema(dc["schema"])
    # "name@tag" runs model `name` under another label, with its own model_options["name@tag"]
    # (e.g. effnet-lite0 and effnet-lite0@scratch side by side).
    if len(set(config["models"])) != len(config["models"]):
        raise KpbenchError(f"models: a name appears twice in {config['models']}; use name@tag for variants")
    model_specs = [(m, plugins.models.get(m.split("@")[0], where="models")) for m in config["models"]]
    metrics = [plugins.metrics.get(m, where="eval.metrics") for m in ec["metrics"]]
    if ec["sort_by"] not in ec["metrics"]:
        raise KpbenchError(f"eval.sort_by {ec['sort_by']!r} must be one of eval.metrics {ec['metrics']}")
    sort_metric = next(m for m in metrics if m.name == ec["sort_by"])
    detect = make_detector(plugins, dc["detector"], dc["detector_options"])
    extra_detectors = {name: path_detector(plugins, name, dc) for name in ec.get("detectors") or []
                       if name != dc["detector"]}
    for name in config["model_options"]:  # options for models outside this run are fine, typos are not
        plugins.models.get(name.split("@")[0], where="model_options")
    for label, spec in model_specs:  # e.g. a reference model's missing file: say so before any work
        if spec.check:
            spec.check(model_settings(config, label, spec)[0])

    dataset = load_dataset(plugins, dc["dataset"], dc["options"])
    if dc["limit"]:
        dataset = Subset(dataset, dc["limit"], seed)
    splits = split_dataset(dataset, dc["split"], seed)
    if dc["eval_dataset"]:  # train on one dataset, evaluate on another (all of it)
        eval_set = load_dataset(plugins, dc["eval_dataset"], dc["eval_options"])
        sources = (dataset, dataset, eval_set)
        splits = (splits[0], splits[1], np.arange(len(eval_set)))
    else:
        sources = (dataset, dataset, dataset)
    prepared: dict[int, tuple[Prepared, Prepared, Prepared]] = {}
    # Training crops get context around them where a model jitters its face box.
    context = JITTER_CONTEXT if any(box_jitter(model_settings(config, label, spec)[2]) for label, spec in model_specs) \
        else 0.0

    def data_at(size: int):
        if size not in prepared:
            first = next(iter(prepared.values()), (None, None, None))
            with progress_bar(status) as progress:
                task = progress.add_task(f"preparing {size}px crops", total=sum(len(i) for i in splits))
                prepared[size] = tuple(
                    prepare(src, idx, detect, size, schema.name, like=like, on_item=lambda: progress.advance(task),
                            skip_bad=dc["skip_bad"], context=context if k == 0 else 0.0)
                    for k, (src, idx, like) in enumerate(zip(sources, splits, first)))
        return prepared[size]

    paths: dict[int, dict[str, Prepared]] = {}

    def paths_at(size: int) -> dict[str, Prepared]:
        """The test split through each ``eval.detectors`` path, at ``size``."""
        if size not in paths:
            first = next(iter(paths.values()), {})
            with progress_bar(status) as progress:
                paths[size] = {}
                for name, det in extra_detectors.items():
                    task = progress.add_task(f"test split through {name} at {size}px", total=len(splits[2]))
                    paths[size][name] = prepare(sources[2], splits[2], det, size, schema.name, like=first.get(name),
                                                on_item=lambda: progress.advance(task), skip_bad=dc["skip_bad"])
        return paths[size]

    def test_photos(ids: list[str]):
        """The whole photos of the test faces ``ids``, in their order (for models that find faces themselves)."""
        wanted = set(ids)
        return (s.image for s in (sources[2][int(i)] for i in splits[2]) if s.id in wanted)

    train_d, val_d, test_d = data_at(dc["input_size"])
    fingerprint = "-".join(d.fingerprint()[:8] for d in (train_d, val_d, test_d))

    out = Path(rc["out"]) if rc["out"] else Path("results") / f"{time.strftime('%Y%m%d-%H%M%S')}-{rc['name']}"
    if out.exists() and any(out.iterdir()) and not resume:
        raise KpbenchError(f"{out}: run directory exists and is not empty (use --resume to continue it)")
    if resume and (out / "manifest.json").is_file():
        old = json.loads((out / "manifest.json").read_text())
        if old.get("config_hash") != config_hash(config):
            before = yaml.safe_load((out / "config.yaml").read_text()) if (out / "config.yaml").is_file() else {}
            diff = differences(before, config)
            raise KpbenchError(f"{out}: cannot resume, its config differs from this run's: "
                               + ("; ".join(diff[:3]) + (f" (and {len(diff) - 3} more)" if len(diff) > 3 else "")
                                  if diff else "it was written by another kpbench version"))
        if old.get("dataset_fingerprint") != fingerprint:
            raise KpbenchError(f"{out}: cannot resume, its data differ from this run's (fingerprint "
                               f"{old.get('dataset_fingerprint')} vs {fingerprint})")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.yaml", yaml.safe_dump(config, sort_keys=False))
    meta = manifest(config, device, fingerprint)
    meta["splits"] = {"train": len(train_d), "val": len(val_d), "test": len(test_d)}
    meta["detector"] = dc["detector"]
    meta["miss_policy"] = dc["miss_policy"]
    meta["test_misses"] = int(test_d.missed.sum())
    meta["crop_convention"] = crop_convention(plugins, dc)
    skipped = [msg for d in (train_d, val_d, test_d) for msg in d.skipped]
    meta["skipped_bad_samples"] = {"count": len(skipped), "first": skipped[:20]}
    for msg in skipped[:5]:
        status.print(f"[yellow]kpbench: warning: skipped bad sample: {msg}[/]")
    if len(skipped) > 5:
        status.print(f"[yellow]kpbench: warning: ... {len(skipped)} bad samples skipped in all (see manifest.json)[/]")
    meta["metrics"] = metrics_meta(metrics)
    atomic_write_json(out / "manifest.json", meta)
    save_test_faces(out / "test_faces.npz", test_d)
    status.print(f"run [bold]{out}[/]  device={device}  train/val/test={len(train_d)}/{len(val_d)}/{len(test_d)}"
                 + (f"  detector misses (test)={int(test_d.missed.sum())}" if dc["detector"] not in ("none", "gt-box")
                    else ""))

    for label, spec in model_specs:
        size = model_settings(config, label, spec)[1]
        for s in seeds:
            mdir = report.model_dir(out, label, s, seeds)
            if resume and (mdir / "result.json").is_file():
                status.print(f"{label} (seed {s}): kept from the previous attempt")
                continue
            row = run_model(label, spec, config, *data_at(size), schema, metrics, sort_metric, device, mdir,
                            status, s, resume, paths_at(size), test_photos)
            atomic_write_json(mdir / "result.json", row)
            (mdir / "last.pt").unlink(missing_ok=True)  # the epoch checkpoint is only for resuming

    meta["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    atomic_write_json(out / "manifest.json", meta)
    report.render(out, console)
    console.print(f"results: {out}")
    return out


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


def path_detector(plugins: Plugins, name: str, dc: dict, options: dict | None = None):
    """Detector ``name`` set to a run's crop convention (see :func:`convention_options`)."""
    return make_detector(plugins, name, convention_options(plugins, name, dc, options))


def make_detector(plugins: Plugins, name: str, options: dict):
    """The detector ``name`` with ``options``; a slow one (``cache_boxes``) keeps its boxes on disk."""
    from kpbench.boxcache import CachedDetector

    det = _call(plugins.detectors.get(name, where="data.detector").factory, f"detector {name!r}", **options)
    return CachedDetector(det, name, options) if getattr(det, "cache_boxes", False) else det


def save_test_faces(path: Path, data: Prepared, limit: int = 64) -> None:
    """The first test crops (uint8) and their boxes, for keypoint overlays in reports."""
    n = min(limit, len(data))
    images = (data.images[:n, 0].numpy() * 255).round().clip(0, 255).astype(np.uint8)
    tmp = path.with_name(f".{path.name}.tmp.npz")
    np.savez_compressed(tmp, images=images, boxes=data.boxes[:n], ids=np.array(data.ids[:n]))
    tmp.replace(path)


def branch_report(net: torch.nn.Module) -> dict:
    """Per-branch parameter counts and learned fusion weights of multi-backbone models (``backbones``
    ModuleDict, optional ``alpha``), e.g. the hybrid's ``params_vgg16`` and ``alpha_vgg16``."""
    branches = getattr(net, "backbones", None)
    if not isinstance(branches, torch.nn.ModuleDict):
        return {}
    out = {f"params_{name}": count_params(b)[0] for name, b in branches.items()}
    alpha = getattr(net, "alpha", None)
    if alpha is not None:
        out.update({f"alpha_{name}": round(float(a), 4) for name, a in zip(branches, alpha.detach().cpu())})
    return out


def run_model(label: str, spec, config, train_d: Prepared, val_d: Prepared, test_d: Prepared, schema, metrics,
              sort_metric, device, mdir: Path, status: Console, seed: int, resume: bool = False,
              paths: dict[str, Prepared] | None = None, photos=None) -> dict:
    dc = config["data"]
    options, size, tc = model_settings(config, label, spec)
    torch.manual_seed(seed)
    net = _call(spec.factory, f"model {label!r}", schema.num_points, size, 1, **options)
    sign = -1.0 if sort_metric.higher_is_better else 1.0

    def evaluate(pred_crop):
        values = score(pred_crop, val_d, schema, metrics)[1]
        return {"score": sign * values[sort_metric.name], **{f"val_{k}": v for k, v in values.items()}}

    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    with Progress(*columns, console=status, transient=False) as progress:
        task = progress.add_task(f"{label:>12}", total=None)

        def on_batch(epoch, done, total):
            progress.update(task, total=total * tc["epochs"], completed=(epoch - 1) * total + done)

        def on_epoch(row):
            progress.update(task, description=f"{label:>12} epoch {row['epoch']}/{tc['epochs']} "
                                              f"loss {row['train_loss']:.5f} val {row['val_loss']:.5f} "
                                              f"{sort_metric.name} {sign * row['score']:.4f}")

        def features(model, _phase):
            return cached_features(model, train_d, val_d, tc["flip"], device, backbone_modules(model.net),
                                   on_compute=lambda p: progress.update(
                                       task, description=f"{label:>12} caching frozen features -> {p.parent}"))

        model, hist = train(net, train_d, val_d, schema, tc, seed, evaluate, mdir, device, on_batch, on_epoch,
                            resume=resume, features=features)
    train_s = sum(r["seconds"] for r in hist.rows)  # this attempt and any resumed one

    use_flip_test(model, config, schema)
    pred_crop = predict(model, test_d.images, device=device)
    values = test_and_save(model, test_d, schema, metrics, dc, mdir, device, pred_crop)
    history = pd.DataFrame(hist.rows).drop(columns=["score"])
    atomic_write_text(mdir / "history.csv", history.to_csv(index=False, float_format="%.6g"))
    best = hist.rows[hist.best_epoch]
    row = {"model": label, "plugin": spec.plugin, "seed": seed, **{k: v for k, v in values.items() if k != "miss_rate"},
           "train_loss": round(best["train_loss"], 6), "val_loss": round(best["val_loss"], 6),
           "best_epoch": hist.best_epoch, "epochs": len(hist.rows) - 1, "input_size": size}
    row.update(values)  # adds miss_rate (real detectors) after the losses
    paths = dict(paths or {})
    own = None
    if photos is not None and hasattr(model.net, "photo_keypoints"):  # a reference that finds the faces itself
        with status.status(f"{label}: on the whole test photos with its own face detector"):
            own, missed = own_detector_predictions(model.net, photos(test_d.ids), test_d, pred_crop)
        paths[OWN_DETECTOR] = dataclasses.replace(test_d, missed=missed)
    for name, data in paths.items():  # the same test faces through other face-box paths
        found = test_and_save(model, data, schema, metrics, {**dc, "detector": name}, mdir / "paths" / name, device,
                              own if name == OWN_DETECTOR else None)
        row[f"{sort_metric.name}@{name}"] = found[sort_metric.name]
        row.update({f"{k}@{name}": found[k] for k in ("fr10", "miss_rate") if k in found})
    row.update(profile(model, size, device, timing=config["eval"]["latency"],
                       onnx_latency=config["eval"]["onnx_latency"]))
    row.update(branch_report(model.net))
    row["train_s"] = round(train_s, 1)
    return row


def metrics_meta(metrics) -> dict:
    """What the report path needs to know of each metric, kept in the manifest."""
    return {m.name: {"aggregate": m.aggregate, "higher_is_better": m.higher_is_better, "unit": m.unit}
            for m in metrics}


def use_flip_test(model, config: dict, schema) -> None:
    """Test-time flip averaging where the config asks for it and the model does not opt out."""
    if config["eval"]["flip_test"] and getattr(model.net, "flip_test", True):
        model.flip_test = list(schema.flip_permutation)


def test_and_save(model, test_d: Prepared, schema, metrics, dc: dict, mdir: Path, device,
                  pred_crop: np.ndarray | None = None) -> dict:
    """The one test path of ``kpbench run`` and ``kpbench evaluate``: predict (unless
    ``pred_crop`` is given), score in the original image's pixels, apply the detector-miss policy,
    save ``predictions.npz`` (per-image values included); returns the rounded metric values, plus
    ``miss_rate`` for a real detector."""
    if pred_crop is None:
        pred_crop = predict(model, test_d.images, device=device)
    pred_px, values, per_image = score(pred_crop, test_d, schema, metrics)
    if dc["miss_policy"] == "exclude":  # detector misses are counted, not scored
        per_image = {k: np.where(test_d.missed, np.nan, v) for k, v in per_image.items()}
        values = {m.name: aggregate(per_image[m.name], m.aggregate) for m in metrics}
    mdir.mkdir(parents=True, exist_ok=True)
    tmp = mdir / ".predictions.tmp.npz"
    np.savez_compressed(tmp, pred=pred_px, true=test_d.points, boxes=test_d.boxes, ids=np.array(test_d.ids),
                        missed=test_d.missed, **{f"metric_{k}": v for k, v in per_image.items()})
    tmp.replace(mdir / "predictions.npz")
    out = {k: round(v, 6) for k, v in values.items()}
    if dc["detector"] not in ("none", "gt-box"):  # a detector under test: its miss rate on the test split
        out["miss_rate"] = round(float(test_d.missed.mean()), 4)
    return out
