"""A run, in four stages: a **plan** (the config checked and every name resolved, before any
work), **jobs** (one model x seed: trained by the one loop, evaluated by the one path, profiled,
written to its own folder), an **executor** that runs them (in this process, or as Ray tasks; see
:mod:`kpbench.executors`), and the **report** from the saved files. The run folder's layout and
writes belong to :class:`kpbench.rundir.RunDir`.

With ``resume``, jobs whose results are already in the run directory are kept, not rerun.
"""

from __future__ import annotations

import dataclasses
import platform
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from rich.console import Console

import kpbench
from kpbench import report
from kpbench.config import DEFAULTS, check, config_hash
from kpbench.data import Prepared, Subset, prepare, split_dataset
from kpbench.errors import KpbenchError, first_line
from kpbench.evaluate import (OWN_DETECTOR, aggregate, confidence_values, own_detector_predictions, predict,
                              predict_with_confidence, score)
from kpbench.io import atomic_save_npz, atomic_write_text
from kpbench.keypoints import get_schema
from kpbench.log import log, progress_bar, status_console
from kpbench.plugins import Plugins
from kpbench.profile import count_params, profile
from kpbench.protocols import FindsOwnFaces
from kpbench.rundir import RunDir, save_error, save_result, seeds_of
from kpbench.features import cached_features
from kpbench.components import (call_factory, crop_convention, load_dataset, make_detector, model_settings,
                                path_detector, resolve_device, use_flip_test)
from kpbench.train import backbone_modules, box_jitter, train

JITTER_CONTEXT = 0.25  # context around training crops for train.box_jitter, a fraction of the side each way


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(kpbench.__file__).parent, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _cpu_model() -> str | None:
    """The CPU's model name (Linux: /proc/cpuinfo; elsewhere what ``platform`` knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def manifest(config: dict, device: str, fingerprint: str) -> dict:
    import timm

    return {
        "kpbench": kpbench.__version__, "torch": torch.__version__, "timm": timm.__version__,
        "numpy": np.__version__, "python": platform.python_version(), "platform": platform.platform(),
        "device": device, "cpu": platform.processor() or platform.machine(), "cpu_model": _cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),  # the instruction set torch's kernels use
        "threads": torch.get_num_threads(),
        "git_commit": _git_commit(), "seed": config["run"]["seed"], "config_hash": config_hash(config),
        "dataset": config["data"]["dataset"], "dataset_fingerprint": fingerprint,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


@dataclass(frozen=True)
class Job:
    """One model x seed of a run: train, test and save into its own folder, nothing else."""
    label: str
    seed: int
    size: int  # the model's input size (which prepared crops it reads)

    def __str__(self) -> str:
        return f"{self.label} (seed {self.seed})"


@dataclass
class Plan:
    """A run resolved before any work: every name looked up, every value checked, the jobs listed."""
    config: dict
    schema: Any
    models: dict[str, Any]  # label -> model spec
    metrics: list
    sort_metric: Any
    seeds: list[int]
    jobs: list[Job]


def plan(config: dict, plugins: Plugins) -> Plan:
    """Check ``config`` and resolve every name in it (a mistake is one line before any work)."""
    check(config)
    dc, ec = config["data"], config["eval"]
    schema = get_schema(dc["schema"])
    # "name@tag" runs model `name` under another label, with its own model_options["name@tag"]
    # (e.g. effnet-lite0 and effnet-lite0@scratch side by side).
    if len(set(config["models"])) != len(config["models"]):
        raise KpbenchError(f"models: a name appears twice in {config['models']}; use name@tag for variants")
    models = {m: plugins.models.get(m.split("@")[0], where="models") for m in config["models"]}
    metrics = [plugins.metrics.get(m, where="eval.metrics") for m in ec["metrics"]]
    if ec["sort_by"] not in ec["metrics"]:
        raise KpbenchError(f"eval.sort_by {ec['sort_by']!r} must be one of eval.metrics {ec['metrics']}")
    for name in config["model_options"]:  # options for models outside this run are fine, typos are not
        plugins.models.get(name.split("@")[0], where="model_options")
    for name in [dc["detector"], *(ec.get("detectors") or [])]:
        plugins.detectors.get(name, where="data.detector" if name == dc["detector"] else "eval.detectors")
    sizes = {}
    for label, spec in models.items():  # e.g. a reference model's missing file: say so before any work
        options, sizes[label], _ = model_settings(config, label, spec)
        if spec.check:
            spec.check(options)
    seeds = seeds_of(config)
    return Plan(config, schema, models, metrics, next(m for m in metrics if m.name == ec["sort_by"]), seeds,
                [Job(label, s, sizes[label]) for label in models for s in seeds])


@dataclass
class PhotosById:
    """The whole photos of test faces, by id, in their order (for models that find faces themselves)."""
    source: Any
    indices: np.ndarray

    def __call__(self, ids: list[str]):
        wanted = set(ids)
        return (s.image for s in (self.source[int(i)] for i in self.indices) if s.id in wanted)


@dataclass
class JobInputs:
    """What every job of a run reads; one object, sent once to Ray's object store."""
    config: dict
    out: str
    data: dict[int, tuple[Prepared, Prepared, Prepared]]  # input size -> train, val, test crops
    paths: dict[int, dict[str, Prepared]]  # input size -> the test faces through each eval.detectors path
    photos: PhotosById
    plugin_modules: tuple[str, ...] = ()


def run_job(job: Job, inputs: JobInputs, the_plan: Plan | None = None, status: Console | None = None) -> dict:
    """One job, wherever it runs: train (continuing from the job's ``last.pt`` if an interrupted
    attempt left one), test, save ``result.json``; a failure leaves its traceback in ``error.txt``.
    Without ``the_plan`` (a Ray worker) the plugins and the plan are rebuilt from their names."""
    from kpbench.plugins import get_plugins

    p = the_plan or plan(inputs.config, get_plugins(inputs.plugin_modules))
    mdir = RunDir(inputs.out).model_dir(job.label, job.seed, p.seeds)
    try:
        device = resolve_device(inputs.config["run"]["device"])
        row = run_model(job.label, p.models[job.label], inputs.config, *inputs.data[job.size], p.schema, p.metrics,
                        p.sort_metric, device, mdir, status or status_console(), job.seed, True,
                        inputs.paths[job.size], inputs.photos)
    except Exception as exc:
        save_error(mdir, exc)
        raise
    save_result(mdir, row)
    return row


def run(config: dict, plugins: Plugins, console: Console | None = None, resume: bool = False) -> Path:
    """Plan, prepare the data once, write the run-level files, run the jobs on the configured
    executor, and report. Jobs fail alone: the others finish, the report says the run is partial,
    and the run ends with an error naming the failed jobs (``--resume`` runs what is missing)."""
    from kpbench.executors import executor_for

    console = console or Console()
    status = status_console()
    p = plan(config, plugins)
    rc, dc = config["run"], config["data"]
    if rc["threads"]:
        torch.set_num_threads(rc["threads"])
    local = rc["executor"] == "local"
    if local and rc["ray"] != DEFAULTS["run"]["ray"]:
        log.warning("kpbench: warning: run.ray is set but run.executor is local: the jobs run in this process "
                    "(--executor ray uses them)")
    device = resolve_device(rc["device"]) if local else f"{rc['device']} on Ray workers"
    with executor_for(config, status) as executor:  # joins Ray now: a wrong address fails before any work
        detect = make_detector(plugins, dc["detector"], dc["detector_options"])
        extra_detectors = {name: path_detector(plugins, name, dc) for name in config["eval"]["detectors"] or []
                           if name != dc["detector"]}
        sources, splits = load_splits(plugins, config)
        # Training crops get context around them where a model jitters its face box.
        context = JITTER_CONTEXT if any(box_jitter(model_settings(config, j.label, p.models[j.label])[2])
                                        for j in p.jobs) else 0.0
        data: dict[int, tuple[Prepared, Prepared, Prepared]] = {}
        for size in dict.fromkeys([dc["input_size"], *(j.size for j in p.jobs)]):
            data[size] = prepare_splits(sources, splits, detect, size, p.schema.name, dc, context,
                                        like=next(iter(data.values()), None), status=status)
        paths: dict[int, dict[str, Prepared]] = {}
        for size in data:
            paths[size] = prepare_paths(sources[2], splits[2], extra_detectors, size, p.schema.name, dc,
                                        like=next(iter(paths.values()), {}), status=status)
        train_d, val_d, test_d = data[dc["input_size"]]
        log.debug(f"crops prepared at {', '.join(f'{s} px' for s in data)}; jobs: {', '.join(map(str, p.jobs))}")
        fingerprint = "-".join(d.fingerprint()[:8] for d in (train_d, val_d, test_d))

        rd = RunDir(rc["out"] or Path("results") / f"{time.strftime('%Y%m%d-%H%M%S')}-{rc['name']}")
        rd.check_can_start(config, fingerprint, resume)
        rd.path.mkdir(parents=True, exist_ok=True)
        rd.write_config(config)
        meta = run_manifest(plugins, config, device, fingerprint, data[dc["input_size"]], p.metrics, status)
        rd.write_manifest(meta)
        rd.save_test_faces(test_d)
        log.info(f"run {rd}  device={device}  train/val/test={len(train_d)}/{len(val_d)}/{len(test_d)}"
                 + (f"  detector misses (test)={int(test_d.missed.sum())}"
                    if dc["detector"] not in ("none", "gt-box") else ""))

        pending = []
        for job in p.jobs:
            if resume and (rd.model_dir(job.label, job.seed, p.seeds) / "result.json").is_file():
                log.info(f"{job}: kept from the previous attempt")
            else:
                pending.append(job)
        inputs = JobInputs(config, str(rd.path.resolve()), data, paths, PhotosById(sources[2], splits[2]),
                           plugins.extra_modules)
        failures: list[str] = []

        def on_failure(job: Job, exc: BaseException) -> None:
            first = first_line(exc)
            where = rd.model_dir(job.label, job.seed, p.seeds) / "error.txt"
            failures.append(f"{job}: {type(exc).__name__}: {first}")
            log.error(f"kpbench: {job} failed: {type(exc).__name__}: {first}"
                      + (f" (traceback: {where})" if where.is_file() else ""))

        executor.run(run_job, pending, inputs, p, on_failure)

    if not failures:
        meta["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        rd.write_manifest(meta)
    if rd.results(config):
        report.render(rd.path, console, plugins)
        console.print(f"results: {rd}")
    if failures:
        raise KpbenchError(f"{len(failures)} of {len(p.jobs)} jobs failed ({'; '.join(failures)}); the finished "
                           f"ones are kept in {rd}: fix the cause and rerun with --resume --out {rd}")
    return rd.path


def load_splits(plugins: Plugins, config: dict) -> tuple[tuple, tuple]:
    """The datasets of a run and its train/val/test indices: the config's dataset split, or (with
    ``data.eval_dataset``) train/val from it and all of the other one as the test split."""
    dc, seed = config["data"], config["run"]["seed"]
    dataset = load_dataset(plugins, dc["dataset"], dc["options"])
    if dc["limit"]:
        dataset = Subset(dataset, dc["limit"], seed)
    splits = split_dataset(dataset, dc["split"], seed)
    if not dc["eval_dataset"]:
        return (dataset, dataset, dataset), splits
    eval_set = load_dataset(plugins, dc["eval_dataset"], dc["eval_options"])
    return (dataset, dataset, eval_set), (splits[0], splits[1], np.arange(len(eval_set)))


def prepare_splits(sources, splits, detect, size: int, schema: str, dc: dict, context: float, like=None,
                   status: Console | None = None) -> tuple[Prepared, Prepared, Prepared]:
    """The train/val/test crops at ``size`` (training crops with ``context`` for box jitter);
    ``like``: the same splits at another size, whose face boxes and misses are reused."""
    with progress_bar(status or status_console()) as progress:
        task = progress.add_task(f"preparing {size}px crops", total=sum(len(i) for i in splits))
        return tuple(prepare(src, idx, detect, size, schema, like=other, on_item=lambda: progress.advance(task),
                             skip_bad=dc["skip_bad"], context=context if k == 0 else 0.0)
                     for k, (src, idx, other) in enumerate(zip(sources, splits, like or (None, None, None))))


def prepare_paths(source, indices, detectors: dict, size: int, schema: str, dc: dict, like: dict | None = None,
                  status: Console | None = None) -> dict[str, Prepared]:
    """The test faces through each other face-box path (``eval.detectors``) at ``size`` (``like``:
    the same at another size, whose boxes are reused)."""
    out = {}
    with progress_bar(status or status_console()) as progress:
        for name, det in detectors.items():
            task = progress.add_task(f"test split through {name} at {size}px", total=len(indices))
            out[name] = prepare(source, indices, det, size, schema, like=(like or {}).get(name),
                                on_item=lambda: progress.advance(task), skip_bad=dc["skip_bad"])
    return out


def run_manifest(plugins: Plugins, config: dict, device: str, fingerprint: str, data, metrics,
                 status: Console) -> dict:
    """The manifest of a run: versions and machine, then its splits, detector, crop convention,
    skipped samples (the first five warned) and metric definitions."""
    dc = config["data"]
    train_d, val_d, test_d = data
    meta = manifest(config, device, fingerprint)
    meta["splits"] = {"train": len(train_d), "val": len(val_d), "test": len(test_d)}
    meta["detector"] = dc["detector"]
    meta["miss_policy"] = dc["miss_policy"]
    meta["test_misses"] = int(test_d.missed.sum())
    meta["crop_convention"] = crop_convention(plugins, dc)
    meta["executor"] = config["run"]["executor"]
    skipped = [msg for d in data for msg in d.skipped]
    meta["skipped_bad_samples"] = {"count": len(skipped), "first": skipped[:20]}
    for msg in skipped[:5]:
        log.warning(f"kpbench: warning: skipped bad sample: {msg}")
    if len(skipped) > 5:
        log.warning(f"kpbench: warning: ... {len(skipped)} bad samples skipped in all (see manifest.json)")
    meta["metrics"] = metrics_meta(metrics)
    return meta


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
    net = call_factory(spec.factory, f"model {label!r}", schema.num_points, size, 1, **options)
    sign = -1.0 if sort_metric.higher_is_better else 1.0

    def evaluate(pred_crop):
        values = score(pred_crop, val_d, schema, metrics)[1]
        return {"score": sign * values[sort_metric.name], **{f"val_{k}": v for k, v in values.items()}}

    with progress_bar(status, transient=False) as progress:  # a model's bar stays, with its time
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
    if photos is not None and isinstance(model.net, FindsOwnFaces):  # a reference that finds the faces itself
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


def test_and_save(model, test_d: Prepared, schema, metrics, dc: dict, mdir: Path, device,
                  pred_crop: np.ndarray | None = None) -> dict:
    """The one test path of ``kpbench run`` and ``kpbench evaluate``: predict (unless
    ``pred_crop`` is given), score in the original image's pixels, apply the detector-miss policy,
    save ``predictions.npz`` (per-image values included); returns the rounded metric values, plus
    ``miss_rate`` for a real detector."""
    conf = None
    if pred_crop is None:
        pred_crop, conf = predict_with_confidence(model, test_d.images, schema.num_points, device=device)
    pred_px, values, per_image = score(pred_crop, test_d, schema, metrics)
    exclude = dc["miss_policy"] == "exclude"  # detector misses are counted, not scored
    if exclude:
        per_image = {k: np.where(test_d.missed, np.nan, v) for k, v in per_image.items()}
        values = {m.name: aggregate(per_image[m.name], m.aggregate) for m in metrics}
    if conf is not None:  # what the confidences are worth on these faces
        scored = np.where(test_d.missed[:, None, None], np.nan, test_d.points) if exclude else test_d.points
        values.update(confidence_values(pred_px, scored, conf, schema))
    atomic_save_npz(mdir / "predictions.npz", pred=pred_px, true=test_d.points, boxes=test_d.boxes, ids=np.array(test_d.ids),
                    missed=test_d.missed, **({} if conf is None else {"confidence": conf}),
                    **{f"metric_{k}": v for k, v in per_image.items()})
    out = {k: round(v, 6) for k, v in values.items()}
    if dc["detector"] not in ("none", "gt-box"):  # a detector under test: its miss rate on the test split
        out["miss_rate"] = round(float(test_d.missed.mean()), 4)
    return out
