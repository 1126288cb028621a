"""A run, in four stages: a **plan** (the settings checked and every name resolved, before any
work), **jobs** (one model x seed: trained by the one loop, evaluated by the one path, profiled,
written to its own folder), an **executor** that runs them (in this process, or as Ray tasks; see
:mod:`kpbench.executors`), and the **report** from the saved files. The run folder's layout and
writes belong to :class:`kpbench.rundir.RunDir`.

With ``resume``, jobs whose results are already in the run directory are kept, not rerun.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from rich.console import Console

from kpbench import report
from kpbench.components import CropConvention, ModelPlan, load_splits, make_detector, resolve_device
from kpbench.config import RaySettings, Settings, check
from kpbench.data import Prepared, prepare
from kpbench.errors import KpbenchError, first_line
from kpbench.evaluate import NOT_DETECTORS, OWN_DETECTOR, own_detector_predictions, predict, score, test_and_save
from kpbench.features import cached_features
from kpbench.io import atomic_write_text
from kpbench.keypoints import get_schema
from kpbench.log import log, progress_bar, status_console
from kpbench.plugins import Plugins
from kpbench.profile import branch_report, profile
from kpbench.protocols import FindsOwnFaces
from kpbench.regressor import backbone_modules, use_flip_test
from kpbench.rundir import RunDir, manifest, metrics_meta, save_error, save_result, seeds_of
from kpbench.train import box_jitter, reported_origin, train

JITTER_CONTEXT = 0.25  # context around training crops for train.box_jitter, a fraction of the side each way


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
    """A run resolved before any work: every name looked up, every value checked, each model's
    settings resolved once, the jobs listed."""
    settings: Settings
    schema: Any
    models: dict[str, ModelPlan]  # label -> the model as planned
    metrics: list
    sort_metric: Any
    seeds: list[int]
    jobs: list[Job]
    convention: CropConvention  # the crops every model of the run is trained and tested on


def plan(settings: Settings, plugins: Plugins) -> Plan:
    """Check ``settings`` and resolve every name in them (a mistake is one line before any work)."""
    check(settings)
    dc, ec = settings.data, settings.eval
    schema = get_schema(dc.schema)
    # "name@tag" runs model `name` under another label, with its own model_options["name@tag"]
    # (e.g. effnet-lite0 and effnet-lite0@scratch side by side).
    if len(set(settings.models)) != len(settings.models):
        raise KpbenchError(f"models: a name appears twice in {settings.models}; use name@tag for variants")
    specs = {m: plugins.models.get(m.split("@")[0], where="models") for m in settings.models}
    metrics = [plugins.metrics.get(m, where="eval.metrics") for m in ec.metrics]
    if ec.sort_by not in ec.metrics:
        raise KpbenchError(f"eval.sort_by {ec.sort_by!r} must be one of eval.metrics {ec.metrics}")
    for name in settings.model_options:  # options for models outside this run are fine, typos are not
        plugins.models.get(name.split("@")[0], where="model_options")
    for name in [dc.detector, *ec.detectors]:
        plugins.detectors.get(name, where="data.detector" if name == dc.detector else "eval.detectors")
    models = {label: ModelPlan.of(settings, label, spec) for label, spec in specs.items()}
    for m in models.values():  # e.g. a reference model's missing file: say so before any work
        if m.spec.check:
            m.spec.check(m.options)
    seeds = seeds_of(settings)
    return Plan(settings, schema, models, metrics, next(m for m in metrics if m.name == ec.sort_by), seeds,
                [Job(label, s, models[label].input_size) for label in models for s in seeds],
                CropConvention.of_run(plugins, dc))


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
    """What every job of a run reads, the plan included; one object, sent once to Ray's object
    store (a worker imports the plugins the plan names as it unpickles it)."""
    plan: Plan
    out: str
    data: dict[int, tuple[Prepared, Prepared, Prepared]]  # input size -> train, val, test crops
    paths: dict[int, dict[str, Prepared]]  # input size -> the test faces through each eval.detectors path
    photos: PhotosById


def run_job(job: Job, inputs: JobInputs, status: Console | None = None) -> dict:
    """One job, wherever it runs: train (continuing from the job's ``last.pt`` if an interrupted
    attempt left one), test, save ``result.json``; a failure leaves its traceback in ``error.txt``."""
    p = inputs.plan
    mdir = RunDir(inputs.out).model_dir(job.label, job.seed, p.seeds)
    try:
        row = run_model(p.models[job.label], p, inputs.data[job.size], job.seed,
                        resolve_device(p.settings.run.device), mdir, status or status_console(),
                        inputs.paths[job.size], inputs.photos)
    except Exception as exc:
        save_error(mdir, exc)
        raise
    save_result(mdir, row)
    return row


def run(settings: Settings, plugins: Plugins, console: Console | None = None, resume: bool = False) -> Path:
    """Plan, prepare the data once, write the run-level files, run the jobs on the configured
    executor, and report. Jobs fail alone: the others finish, the report says the run is partial,
    and the run ends with an error naming the failed jobs (``--resume`` runs what is missing)."""
    from kpbench.executors import executor_for

    console = console or Console()
    status = status_console()
    p = plan(settings, plugins)
    rc, dc = settings.run, settings.data
    if rc.threads:
        torch.set_num_threads(rc.threads)
    local = rc.executor == "local"
    if local and rc.ray != RaySettings():
        log.warning("kpbench: warning: run.ray is set but run.executor is local: the jobs run in this process "
                    "(--executor ray uses them)")
    device = resolve_device(rc.device) if local else f"{rc.device} on Ray workers"
    with executor_for(rc, status) as executor:  # joins Ray now: a wrong address fails before any work
        detect = make_detector(plugins, dc.detector, dc.detector_options)
        extra_detectors = {name: p.convention.detector_for(plugins, name) for name in settings.eval.detectors
                           if name != dc.detector}
        sources, splits = load_splits(plugins, settings)
        # Training crops get context around them where a model jitters its face box.
        context = JITTER_CONTEXT if any(box_jitter(m.train) for m in p.models.values()) else 0.0
        data: dict[int, tuple[Prepared, Prepared, Prepared]] = {}
        for size in dict.fromkeys([dc.input_size, *(j.size for j in p.jobs)]):
            data[size] = prepare_splits(sources, splits, detect, size, p.schema.name, dc.skip_bad, context,
                                        like=next(iter(data.values()), None), status=status)
        paths: dict[int, dict[str, Prepared]] = {}
        for size in data:
            paths[size] = prepare_paths(sources[2], splits[2], extra_detectors, size, p.schema.name, dc.skip_bad,
                                        like=next(iter(paths.values()), {}), status=status)
        train_d, val_d, test_d = data[dc.input_size]
        p.convention = dataclasses.replace(p.convention, crop_from_points=train_d.crop_from_points())
        log.debug(f"crops prepared at {', '.join(f'{s} px' for s in data)}; jobs: {', '.join(map(str, p.jobs))}")
        fingerprint = "-".join(d.fingerprint()[:8] for d in (train_d, val_d, test_d))

        rd = RunDir(rc.out or Path("results") / f"{time.strftime('%Y%m%d-%H%M%S')}-{rc.name}")
        rd.check_can_start(settings, fingerprint, resume)
        rd.path.mkdir(parents=True, exist_ok=True)
        rd.write_config(settings)
        meta = run_manifest(p, device, fingerprint, data[dc.input_size])
        rd.write_manifest(meta)
        rd.save_test_faces(test_d)
        log.info(f"run {rd}  device={device}  train/val/test={len(train_d)}/{len(val_d)}/{len(test_d)}"
                 + (f"  detector misses (test)={int(test_d.missed.sum())}" if dc.detector not in NOT_DETECTORS
                    else ""))

        pending = []
        for job in p.jobs:
            if resume and (rd.model_dir(job.label, job.seed, p.seeds) / "result.json").is_file():
                log.info(f"{job}: kept from the previous attempt")
            else:
                pending.append(job)
        inputs = JobInputs(p, str(rd.path.resolve()), data, paths, PhotosById(sources[2], splits[2]))
        failures: list[str] = []

        def on_failure(job: Job, exc: BaseException) -> None:
            first = first_line(exc)
            where = rd.model_dir(job.label, job.seed, p.seeds) / "error.txt"
            failures.append(f"{job}: {type(exc).__name__}: {first}")
            log.error(f"kpbench: {job} failed: {type(exc).__name__}: {first}"
                      + (f" (traceback: {where})" if where.is_file() else ""))

        executor.run(run_job, pending, inputs, on_failure)

    if not failures:
        meta["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        rd.write_manifest(meta)
    if rd.results(settings):
        report.render(rd.path, console, plugins)
        console.print(f"results: {rd}")
    if failures:
        raise KpbenchError(f"{len(failures)} of {len(p.jobs)} jobs failed ({'; '.join(failures)}); the finished "
                           f"ones are kept in {rd}: fix the cause and rerun with --resume --out {rd}")
    return rd.path


def prepare_splits(sources, splits, detect, size: int, schema: str, skip_bad: bool, context: float, like=None,
                   status: Console | None = None) -> tuple[Prepared, Prepared, Prepared]:
    """The train/val/test crops at ``size`` (training crops with ``context`` for box jitter);
    ``like``: the same splits at another size, whose face boxes and misses are reused."""
    with progress_bar(status or status_console()) as progress:
        task = progress.add_task(f"preparing {size}px crops", total=sum(len(i) for i in splits))
        return tuple(prepare(src, idx, detect, size, schema, like=other, on_item=lambda: progress.advance(task),
                             skip_bad=skip_bad, context=context if k == 0 else 0.0)
                     for k, (src, idx, other) in enumerate(zip(sources, splits, like or (None, None, None))))


def prepare_paths(source, indices, detectors: dict, size: int, schema: str, skip_bad: bool, like: dict | None = None,
                  status: Console | None = None) -> dict[str, Prepared]:
    """The test faces through each other face-box path (``eval.detectors``) at ``size`` (``like``:
    the same at another size, whose boxes are reused)."""
    out = {}
    with progress_bar(status or status_console()) as progress:
        for name, det in detectors.items():
            task = progress.add_task(f"test split through {name} at {size}px", total=len(indices))
            out[name] = prepare(source, indices, det, size, schema, like=(like or {}).get(name),
                                on_item=lambda: progress.advance(task), skip_bad=skip_bad)
    return out


def run_manifest(p: Plan, device: str, fingerprint: str, data) -> dict:
    """The manifest of a run: versions and machine, then its splits, detector, crop convention,
    skipped samples (the first five warned) and metric definitions."""
    train_d, val_d, test_d = data
    meta = manifest(p.settings, device, fingerprint)
    meta["splits"] = {"train": len(train_d), "val": len(val_d), "test": len(test_d)}
    meta["detector"] = p.settings.data.detector
    meta["miss_policy"] = p.settings.data.miss_policy
    meta["test_misses"] = int(test_d.missed.sum())
    meta["crop_convention"] = p.convention.to_mapping()
    meta["executor"] = p.settings.run.executor
    skipped = [msg for d in data for msg in d.skipped]
    meta["skipped_bad_samples"] = {"count": len(skipped), "first": skipped[:20]}
    for msg in skipped[:5]:
        log.warning(f"kpbench: warning: skipped bad sample: {msg}")
    if len(skipped) > 5:
        log.warning(f"kpbench: warning: ... {len(skipped)} bad samples skipped in all (see manifest.json)")
    meta["metrics"] = metrics_meta(p.metrics)
    return meta


def run_model(m: ModelPlan, p: Plan, data: tuple[Prepared, Prepared, Prepared], seed: int, device, mdir: Path,
              status: Console, paths: dict[str, Prepared] | None = None, photos=None) -> dict:
    """One model x seed: train by the one loop (resuming from ``last.pt``), test on the test split
    and on each other face-box path, profile; returns its result row."""
    train_d, val_d, test_d = data
    settings, schema, metrics, sort_metric, tc = p.settings, p.schema, p.metrics, p.sort_metric, m.train
    torch.manual_seed(seed)
    net = m.build(schema.num_points)
    sign = -1.0 if sort_metric.higher_is_better else 1.0

    origin = reported_origin(net, train_d)  # how the trained model will number its points

    def evaluate(pred_crop):
        values = score(pred_crop, val_d, schema, metrics, origin)[1]
        return {"score": sign * values[sort_metric.name], **{f"val_{k}": v for k, v in values.items()}}

    with progress_bar(status, transient=False) as progress:  # a model's bar stays, with its time
        task = progress.add_task(f"{m.label:>12}", total=None)

        def on_batch(epoch, done, total):
            progress.update(task, total=total * tc.epochs, completed=(epoch - 1) * total + done)

        def on_epoch(row):
            progress.update(task, description=f"{m.label:>12} epoch {row['epoch']}/{tc.epochs} "
                                              f"loss {row['train_loss']:.5f} val {row['val_loss']:.5f} "
                                              f"{sort_metric.name} {sign * row['score']:.4f}")

        def features(model):
            return cached_features(model, train_d, val_d, tc.flip, device, backbone_modules(model.net),
                                   on_compute=lambda f: progress.update(
                                       task, description=f"{m.label:>12} caching frozen features -> {f.parent}"))

        model, hist = train(net, train_d, val_d, schema, tc, seed, evaluate, mdir, device, on_batch, on_epoch,
                            resume=True, features=features)
    train_s = sum(r["seconds"] for r in hist.rows)  # this attempt and any resumed one

    use_flip_test(model, settings.eval.flip_test, schema)
    pred_crop = predict(model, test_d.images, device=device)
    dc = settings.data
    values = test_and_save(model, test_d, schema, metrics, dc.miss_policy, dc.detector, mdir, device, pred_crop)
    history = pd.DataFrame(hist.rows).drop(columns=["score"])
    atomic_write_text(mdir / "history.csv", history.to_csv(index=False, float_format="%.6g"))
    best = hist.rows[hist.best_epoch]
    row = {"model": m.label, "plugin": m.spec.plugin, "seed": seed,
           **{k: v for k, v in values.items() if k != "miss_rate"},
           "train_loss": round(best["train_loss"], 6), "val_loss": round(best["val_loss"], 6),
           "best_epoch": hist.best_epoch, "epochs": len(hist.rows) - 1, "input_size": m.input_size}
    row.update(values)  # adds miss_rate (real detectors) after the losses
    paths = dict(paths or {})
    own = None
    if photos is not None and isinstance(model.net, FindsOwnFaces):  # a reference that finds the faces itself
        with status.status(f"{m.label}: on the whole test photos with its own face detector"):
            own, missed = own_detector_predictions(model.net, photos(test_d.ids), test_d, pred_crop)
        paths[OWN_DETECTOR] = dataclasses.replace(test_d, missed=missed)
    for name, found_d in paths.items():  # the same test faces through other face-box paths
        found = test_and_save(model, found_d, schema, metrics, dc.miss_policy, name, mdir / "paths" / name, device,
                              own if name == OWN_DETECTOR else None)
        row[f"{sort_metric.name}@{name}"] = found[sort_metric.name]
        row.update({f"{k}@{name}": found[k] for k in ("fr10", "miss_rate") if k in found})
    row.update(profile(model, m.input_size, device, timing=settings.eval.latency,
                       onnx_latency=settings.eval.onnx_latency))
    row.update(branch_report(model.net))
    row["train_s"] = round(train_s, 1)
    row["threads"] = torch.get_num_threads()  # what it trained and was timed with (figures move with it)
    return row
