"""``kpbench run | list | report``: the command line. Errors print one line and exit with status 2."""

from __future__ import annotations

import argparse
import difflib
import errno
import glob
import os
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from kpbench import __version__
from kpbench.errors import KpbenchError
from kpbench.log import log
from kpbench.log import setup as setup_logging

DEFAULT_CONFIG = "configs/default.yaml"
CALLER_DIR = "KPBENCH_CALLER_DIR"  # where bin/kpbench was started: it runs kpbench from the repository root

# The command-line arguments that name files: read (an input) or written (an output).
INPUTS = ("config", "model", "run_dirs", "paths")
SPECS = ("dataset", "eval_dataset")  # kind:path (a kind alone names no file)
OUTPUTS = ("out",)


def from_caller(args: argparse.Namespace, caller: str | Path) -> None:
    """Take the paths given on the command line from ``caller``'s directory (bin/kpbench runs kpbench
    from the repository root, so that the configs' ``../shared`` paths hold): an output always, an
    input where it exists there (a glob where it matches); an input found only from the repository
    root (``configs/wild.yaml``, ``results/<run>``) is kept as given."""

    def mend(value, name: str):
        if isinstance(value, list):
            return [mend(v, name) for v in value]
        if value is None:
            return None
        kind, sep, path = str(value).partition(":") if name in SPECS else ("", "", str(value))
        if not path or os.path.isabs(os.path.expanduser(path)):
            return value
        theirs = os.path.join(caller, path)
        if name in OUTPUTS or os.path.exists(theirs) or glob.glob(theirs):
            return type(value)(f"{kind}{sep}{theirs}")
        return value

    for name in INPUTS + SPECS + OUTPUTS:
        if hasattr(args, name):
            setattr(args, name, mend(getattr(args, name), name))


def _plugins(args):
    from kpbench.plugins import get_plugins

    return get_plugins(tuple(args.plugin or ()))


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _configured(path: str | None):
    """The defaults with the config file over them (the default one where there is one)."""
    from kpbench import config as cfgmod

    if path is None and Path(DEFAULT_CONFIG).is_file():
        path = DEFAULT_CONFIG
    return cfgmod.Settings.from_dict(cfgmod.load(path), path or "the defaults")


def _settings(configured, changes: dict, assignments=()):
    """The run's settings: the configured ones, the command's options (``changes``: section ->
    key -> value), then each ``--set`` (the YAML dict stops here)."""
    from kpbench import config as cfgmod

    settings = configured.replace(**changes)
    if not assignments:
        return settings
    config = settings.to_dict()
    for assignment in assignments:
        config = cfgmod.override(config, assignment)
    return cfgmod.Settings.from_dict(config, "--set")


def cmd_run(args, console: Console) -> None:
    from kpbench.runner import run

    configured = _configured(args.config)
    changes: dict = {"run": {}, "data": {}, "train": {}}
    if args.models is not None:
        changes["models"] = _csv(args.models)
        if not changes["models"]:
            raise KpbenchError(f"--models {args.models!r}: no model names (e.g. --models cnn,integral)")
    if args.dataset:
        if args.dataset != [configured.data.dataset]:
            changes["data"]["options"] = {}  # options belong to the config's dataset
        changes["data"]["dataset"] = args.dataset[0] if len(args.dataset) == 1 else args.dataset
    if args.detector:
        changes["data"].update(detector=args.detector, detector_options={})
    if args.eval_dataset:
        changes["data"]["eval_dataset"] = args.eval_dataset
    if args.epochs is not None:
        changes["train"]["epochs"] = args.epochs
    if args.skip_bad:
        changes["data"]["skip_bad"] = True
    if args.seed is not None:
        changes["run"]["seed"] = args.seed
    if args.seeds:
        try:
            changes["run"]["seeds"] = [int(s) for s in _csv(args.seeds)]
        except ValueError:
            raise KpbenchError(f"--seeds {args.seeds!r}: expected comma-separated integers, e.g. 0,1,2") from None
    for key in ("out", "device", "executor"):
        if getattr(args, key):
            changes["run"][key] = getattr(args, key)
    ray = {key: getattr(args, key) for key in ("address", "cpus_per_job", "gpus_per_job") if getattr(args, key) is not None}
    if ray:
        changes["run"]["ray"] = ray
    settings = _settings(configured, changes, args.set or ())
    if ray and settings.run.executor != "ray":
        given = ", ".join(f"--{k.replace('_', '-')}" for k in ray)
        raise KpbenchError(f"{given}: for the Ray executor only; add --executor ray")
    run(settings, _plugins(args), console, resume=args.resume)


KIND_ALIASES = {"models": "model", "datasets": "dataset", "detectors": "detector", "metrics": "metric",
                "schemas": "schema", "report-writers": "report_writer"}


def _print_json(records) -> None:
    """Scriptable output (``--json``): strict JSON on stdout, one document."""
    from kpbench.io import strict_json

    print(strict_json(records, indent=1, default=str))


def _quiet(args, console: Console) -> Console:
    """With ``--json`` the rich tables go nowhere; stdout holds the JSON alone."""
    import io

    return Console(file=io.StringIO()) if getattr(args, "json", False) else console


def cmd_list(args, console: Console) -> None:
    plugins = _plugins(args)
    records = []
    kinds = list(KIND_ALIASES.values())
    if args.kind:
        kind = KIND_ALIASES.get(args.kind, args.kind)
        if kind not in kinds:
            close = difflib.get_close_matches(args.kind, list(KIND_ALIASES), n=1, cutoff=0.6)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise KpbenchError(f"unknown kind {args.kind!r}; {hint}choose from: {', '.join(KIND_ALIASES)}")
        kinds = [kind]
    found = 0
    for kind in kinds:
        specs = plugins.registries[kind].list(args.pattern)
        found += len(specs)
        if not specs:
            continue
        table = Table(title=f"{kind.replace('_', ' ')}s", title_justify="left", header_style="bold")
        cols = ["name", "description", "plugin"] + (["params", "trainable", "shipped"] if kind == "model" else [])
        for col in cols:
            table.add_column(col, justify="right" if col in ("params", "trainable") else "left")
        shipped = _shipped_models() if kind == "model" else {}
        for s in specs:
            counts = _param_counts(s) if kind == "model" else ()
            extra = (shipped.get(s.name, ""),) if kind == "model" else ()
            table.add_row(s.name, s.description, s.plugin, *("?" if n is None else f"{n:,}" for n in counts), *extra)
            records.append({"kind": kind, "name": s.name, "description": s.description, "plugin": s.plugin,
                            **dict(zip(("params", "trainable_params"), counts)),
                            **({"shipped": shipped.get(s.name)} if kind == "model" else {})})
        _quiet(args, console).print(table)
    for failure in plugins.failures:
        _quiet(args, console).print(f"[red]failed:[/] {failure}")  # part of the listing (stderr had the warning)
    if not found:
        raise KpbenchError(f"nothing matches {args.pattern!r} in {', '.join(k + 's' for k in kinds)}")
    if args.json:
        _print_json(records)


def _shipped_models() -> dict[str, str]:
    """Model name -> the folder of the weights kpbench ships for it (``kpbench/shipped/<name>``)."""
    import json

    from kpbench.card import SHIPPED_ROOT

    out = {}
    for card in sorted(SHIPPED_ROOT.glob("*/card.json")):
        try:
            out.setdefault(json.loads(card.read_text())["model"], f"kpbench/shipped/{card.parent.name}")
        except (OSError, ValueError, KeyError):
            continue
    return out


def _param_counts(spec) -> tuple[int | None, int | None]:
    """Total and trainable parameters at the model's default options, built on the meta device
    (no memory, no weight loading), at 96 px and 15 points."""
    import warnings

    import torch

    try:
        with warnings.catch_warnings(), torch.device("meta"):
            warnings.simplefilter("ignore")
            net = spec.factory(15, 96, 1)
    except Exception:  # noqa: BLE001 - a model that cannot be built this way is still listed
        return None, None
    from kpbench.profile import count_params

    return count_params(net)


def cmd_report(args, console: Console) -> None:
    from kpbench import report

    if len(args.run_dirs) == 1:
        df = report.render(args.run_dirs[0], _quiet(args, console), _plugins(args))
    elif len(args.run_dirs) == 2:
        df = report.compare(*args.run_dirs, console=_quiet(args, console))
    else:
        raise KpbenchError("report takes one run directory, or two to compare")
    if args.json:
        _print_json(df.to_dict("records"))


def _count(low: int):
    """An argparse type: a whole number >= ``low``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value
    return parse


def _options(text: str | None, what: str) -> dict:
    if not text:
        return {}
    import yaml

    from kpbench.config import _yaml

    try:
        value = _yaml(text)  # as --set reads values: 1e-3 is a number
    except yaml.YAMLError as exc:
        raise KpbenchError(f"{what} {text!r}: invalid YAML: {getattr(exc, 'problem', None) or exc}") from None
    if not isinstance(value, dict):
        raise KpbenchError(f"{what} {text!r}: expected a YAML mapping, e.g. '{{margin: 0.2}}'")
    return value


def cmd_evaluate(args, console: Console) -> None:
    import time

    from kpbench.inference import evaluate
    from kpbench.trained import load_trained

    plugins = _plugins(args)
    trained = load_trained(args.model or shipped_model(), plugins)
    if args.detector:
        note = trained.convention.note(trained.label, args.detector)
        if note:
            log.warning(f"kpbench: {note}")
    out = args.out or Path("results") / f"{time.strftime('%Y%m%d-%H%M%S')}-evaluate-{trained.label}"
    evaluate(trained, plugins, args.dataset, out, args.detector, _options(args.detector_options, "--detector-options"),
             _options(args.dataset_options, "--dataset-options"), console)
    console.print(f"results: {out}")


def shipped_model() -> Path:
    from kpbench.predictor import SHIPPED

    return SHIPPED


def cmd_export(args, console: Console) -> None:
    from kpbench.export import export_onnx
    from kpbench.trained import load_trained

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    sidecar = export_onnx(load_trained(args.model or shipped_model(), _plugins(args)), Path(args.out))
    check = sidecar["check"]
    console.print(f"{args.out}: {sidecar['model']} ({sidecar['schema']}, {sidecar['input']['shape'][-1]} px crops); "
                  f"ONNX Runtime vs PyTorch on {check['crops']} crops: max abs difference {check['max_abs_diff_vs_torch']:.2e}; "
                  f"batch-1 CPU latency {check['onnxruntime_latency_ms']:.2f} ms vs {check['torch_latency_ms']:.2f} ms "
                  f"({check['threads']} threads); how crops are made: {args.out}.json")


def cmd_predict(args, console: Console) -> None:
    from kpbench.photos import check_output_dir, expand_paths, predict_photos
    from kpbench.predictor import Predictor
    from kpbench.video import smoothing

    options = _options(args.detector_options, "--detector-options")
    if args.smooth_options and not args.smooth:
        raise KpbenchError("--smooth-options and --no-smooth contradict each other (smoothing is off with --no-smooth)")
    smooth = smoothing(_options(args.smooth_options, "--smooth-options")) if args.smooth else None
    paths = expand_paths(args.paths)
    if not paths:
        raise KpbenchError(f"no photos or videos in {', '.join(args.paths)}")
    check_output_dir(Path(args.out), paths)
    plugins = _plugins(args)
    predictor = Predictor(args.model, detector=args.detector, detector_options=options, runtime=args.runtime,
                          plugins=plugins)
    note = predictor.trained.convention.note(predictor.label, predictor.detector_name)
    if note:
        log.warning(f"kpbench: {note}")
    elif predictor.margin is not None:
        log.info(f"{predictor.label}: faces found by {predictor.detector_name}, cropped at margin {predictor.margin} "
                 f"around the face box{' and turned upright' if getattr(predictor.detector, 'align', False) else ''} "
                 f"(the model's crops); model under {predictor.runtime}")
    results, errors = predict_photos(predictor, paths, Path(args.out), overlays=args.overlay, smooth=smooth,
                                     track=not args.detect_every_frame)
    photos = [r for r in results if "image" in r]
    said = [f"{len(results) - len(photos)} video(s)"] if len(photos) < len(results) else []
    if photos or not said:
        said.insert(0, f"{sum(len(r['faces']) for r in photos)} face(s) in {len(photos)} photo(s) "
                       f"({sum(not r['faces'] for r in photos)} without a face)")
    console.print(f"{', '.join(said)}, {len(errors)} unreadable; written to {args.out}")
    if paths and not results:
        raise KpbenchError(f"none of the {len(paths)} file(s) could be read")


def cmd_calibrate(args, console: Console) -> None:
    import json

    from kpbench.calibrate import calibrate
    from kpbench.io import atomic_write_json

    if args.out and Path(args.out).exists():
        raise KpbenchError(f"--out {args.out}: file exists; kpbench does not overwrite it")
    result = calibrate(_plugins(args), args.detector, args.dataset, _options(args.dataset_options, "--dataset-options"),
                       _options(args.detector_options, "--detector-options"), args.limit, args.seed, console)
    table = Table(title=f"{args.detector} against the annotated face box on {args.dataset}", header_style="bold")
    for col in ("", "median", "IQR", "robust std"):
        table.add_column(col, justify="left" if not col else "right")
    spread = result["spread"]
    for key, label, std in (("side_ratio", "face side / detector side", spread["log_side"]),
                            ("dx", "centre offset x (sides)", spread["shift_x"]),
                            ("dy", "centre offset y (sides)", spread["shift_y"])):
        lo, hi = result["iqr"][key]
        table.add_row(label, f"{result['median'][key]:.4f}", f"{lo:.4f} - {hi:.4f}", f"{std:.4f}")
    console.print(table)
    console.print(f"{result['faces']} faces matched, {result['misses']} missed, of {result['samples']} samples")
    if "options" in result:
        console.print(f"detector options: {json.dumps(result['options'])}")
    console.print(f"train.box_jitter to match its spread: {json.dumps(result['box_jitter'])}")
    if args.out:
        atomic_write_json(Path(args.out), result)
        console.print(f"written: {args.out}")


def cmd_bench(args, console: Console) -> None:
    from kpbench.bench import bench

    changes: dict = {"run": {}, "data": {}}
    if args.models:
        changes["models"] = _csv(args.models)
    if args.input_size is not None:
        if args.input_size < 16:
            raise KpbenchError(f"--input-size must be at least 16, got {args.input_size}")
        changes["data"]["input_size"] = args.input_size
    if args.device:
        changes["run"]["device"] = args.device
    rows = bench(_settings(_configured(args.config), changes), _plugins(args), _quiet(args, console), batch=args.batch)
    if args.json:
        _print_json(rows)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kpbench", description="Train, evaluate and compare facial keypoint models.")
    p.add_argument("--version", action="version", version=f"kpbench {__version__}")
    p.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only, no progress bars")
    p.add_argument("-v", "--verbose", action="store_true", help="debug notes too")
    p.add_argument("-p", "--plugin", action="append", metavar="MODULE",
                   help="load this plugin module explicitly (repeatable); see also KPBENCH_PLUGINS")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help=f"train, evaluate and rank models (default config: {DEFAULT_CONFIG})")
    r.add_argument("--config", "-c", help="YAML config file")
    r.add_argument("--models", help="comma-separated model names, e.g. cnn,mobilenetv2")
    r.add_argument("--dataset", action="append",
                   help="kind:path, e.g. folder68:../shared/data/youtube-faces-68; repeat to train on several")
    r.add_argument("--detector", help="face boxes: gt-box, mtcnn, none")
    r.add_argument("--eval-dataset", help="evaluate on this dataset (kind:path, all of it) instead of the test split")
    r.add_argument("--epochs", type=int)
    r.add_argument("--skip-bad", action="store_true",
                   help="leave out unreadable or corrupt samples (warned, counted in manifest.json) instead of failing")
    r.add_argument("--seed", type=int, help="seed of the split and (without --seeds) of training")
    r.add_argument("--seeds", help="train every model once per seed, e.g. 0,1,2 (the split stays that of --seed)")
    r.add_argument("--out", help="run directory (default results/<timestamp>-<name>)")
    r.add_argument("--device", help="auto, cpu, cuda, cuda:1 ...")
    r.add_argument("--executor", choices=("local", "ray"),
                   help="where the jobs (model x seed) run: local (this process, default) or ray")
    r.add_argument("--address", help="with --executor ray: the cluster to join (auto, HOST:PORT); "
                                     "default: a temporary local Ray on 127.0.0.1")
    r.add_argument("--cpus-per-job", type=float, help="with --executor ray: CPUs per job (default 1)")
    r.add_argument("--gpus-per-job", type=float, help="with --executor ray: GPUs per job (default 0)")
    r.add_argument("--set", action="append", metavar="KEY=VALUE", help="override any config key, e.g. train.lr=3e-4")
    r.add_argument("--resume", action="store_true", help="continue the run in --out, keeping finished models")
    r.set_defaults(func=cmd_run)

    ls = sub.add_parser("list", help="list registered models, datasets, detectors, metrics and schemas")
    ls.add_argument("kind", nargs="?", help="models | datasets | detectors | metrics | schemas")
    ls.add_argument("pattern", nargs="?", default="*", help="wildcard filter, e.g. 'mobile*'")
    ls.add_argument("--json", action="store_true", help="print the result as strict JSON on stdout")
    ls.set_defaults(func=cmd_list)

    rep = sub.add_parser("report", help="re-render a run's reports from its saved predictions, or compare two runs")
    rep.add_argument("run_dirs", type=Path, nargs="+", metavar="RUN_DIR", help="one run, or two to compare")
    rep.add_argument("--json", action="store_true", help="print the result as strict JSON on stdout")
    rep.set_defaults(func=cmd_report)

    ev = sub.add_parser("evaluate", help="evaluate a trained model on any dataset, with the same reports")
    ev.add_argument("--model", help="run directory (its best model), model directory or best.pt "
                    "(default: the model kpbench ships)")
    ev.add_argument("--dataset", help="kind:path, e.g. ibug:../shared/data/300w-helen-train (default: the "
                    "model's own test split, the faces its run held out)")
    ev.add_argument("--dataset-options", help="YAML mapping for the dataset plugin")
    ev.add_argument("--detector", help="face boxes: gt-box, mtcnn, none (default: the run's)")
    ev.add_argument("--detector-options", help="YAML mapping, e.g. '{margin: 0.15}'")
    ev.add_argument("--out", type=Path, help="output directory (default results/<timestamp>-evaluate-<model>)")
    ev.set_defaults(func=cmd_evaluate)

    pr = sub.add_parser("predict", help="find every face in photos and videos and predict its keypoints")
    pr.add_argument("paths", nargs="+", metavar="PATH", help="image or video files, directories or globs")
    pr.add_argument("--model", help="run directory (its best model), model directory, best.pt, or FILE.onnx from "
                    "kpbench export (default: the model kpbench ships)")
    pr.add_argument("--detector", help="face detector (default blazeface where LiteRT is installed, else mtcnn)")
    pr.add_argument("--runtime", default="auto", choices=["auto", "onnxruntime", "torch"],
                    help="where the model runs (default auto: ONNX Runtime when installed, else PyTorch)")
    pr.add_argument("--detector-options", help="YAML mapping, e.g. '{margin: 0.2}'")
    pr.add_argument("--out", default="predictions", help="a new or empty output directory (default ./predictions)")
    pr.add_argument("--overlay", action=argparse.BooleanOptionalAction, default=False,
                    help="also write each photo (<name>.jpg) and video (<name>.mp4) with the boxes and points drawn "
                         "(default: off, the keypoints' files only: drawing and encoding cost more than finding "
                         "the keypoints: 23 ms a frame more on a 720p video)")
    pr.add_argument("--detect-every-frame", action="store_true",
                    help="videos: run the face detector on every frame (default: track each face from its points "
                         "and detect on the first frame, every 30 frames and when a track is lost)")
    pr.add_argument("--smooth", action=argparse.BooleanOptionalAction, default=True,
                    help="videos: One-Euro filter each face's shape over time, its motion and zoom passing "
                         "unfiltered (default: on; --no-smooth: the points as predicted)")
    pr.add_argument("--smooth-options", help="YAML mapping over the filter's defaults "
                    "'{min_cutoff: 1.0, beta: 10.0, d_cutoff: 1.0}' (Hz; beta in Hz per unit of shape "
                    "change per second, the unit the points' spread)")
    pr.set_defaults(func=cmd_predict)

    ex = sub.add_parser("export", help="a trained model as ONNX for ONNX Runtime, checked against PyTorch")
    ex.add_argument("--model", help="run directory (its best model) or models/<name> (default: the model kpbench ships)")
    ex.add_argument("--out", required=True, help="new FILE.onnx (FILE.onnx.json is written beside it)")
    ex.add_argument("--threads", type=_count(1), help="CPU threads for the check's latencies")
    ex.set_defaults(func=cmd_export)

    ca = sub.add_parser("calibrate", help="measure a face detector's boxes against the annotated face box")
    ca.add_argument("--detector", required=True, help="detector to calibrate, e.g. mtcnn")
    ca.add_argument("--dataset", required=True, help="annotated faces, kind:path")
    ca.add_argument("--dataset-options", help="YAML mapping for the dataset plugin")
    ca.add_argument("--detector-options", help="YAML mapping of other detector options (e.g. min_score)")
    ca.add_argument("--limit", type=_count(0), default=400, help="a seeded random subset of this many samples (0: all)")
    ca.add_argument("--seed", type=int, default=0)
    ca.add_argument("--out", help="also write the result as JSON here (never overwritten)")
    ca.set_defaults(func=cmd_calibrate)

    be = sub.add_parser("bench", help="parameters, GMACs, latency and throughput of models, without training")
    be.add_argument("--models", help="comma-separated model names (default: the config's)")
    be.add_argument("--config", "-c", help="YAML config (model options, input size)")
    be.add_argument("--input-size", type=int)
    be.add_argument("--batch", type=_count(1), default=32, help="batch size for throughput (default 32)")
    be.add_argument("--device", help="auto, cpu, cuda ...")
    be.add_argument("--json", action="store_true", help="print the result as strict JSON on stdout")
    be.set_defaults(func=cmd_bench)
    for command in sub.choices.values():  # -q/-v also after the command: kpbench run -q ...
        command.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                             help="warnings and errors only, no progress bars")
        command.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="debug notes too")
    return p


class Terminated(KeyboardInterrupt):
    """SIGTERM (a job scheduler, ``kill``): stops a run the way Ctrl-C does."""


_SIGTERM_SEEN: list[int] = []  # a library may turn the exception into a plain KeyboardInterrupt (Ray does)


INTERRUPTED = {  # what an interrupted command kept, and how to go on
    "run": "finished models are kept; rerun with --resume",
    "predict": "the photos done are written, and predictions.json lists them with partial: true; "
               "predict the rest into a new --out",
    "evaluate": "nothing is kept; run it again into a new --out",
    "calibrate": "nothing is kept; run it again (--limit for fewer faces)",
    "export": "nothing is written; run it again",
}


def _on_sigterm(signum, frame):
    _SIGTERM_SEEN.append(signum)
    raise Terminated()


DISK_ERRORS = (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EDQUOT)


def main(argv: list[str] | None = None) -> int:
    import signal

    args = build_parser().parse_args(argv)
    caller = os.environ.get(CALLER_DIR)
    if caller and Path(caller).resolve() != Path.cwd().resolve():
        from_caller(args, caller)
    if args.quiet and args.verbose:
        print("kpbench: error: -q and -v contradict each other; choose one", file=sys.stderr)
        return 2
    setup_logging(-1 if args.quiet else 1 if args.verbose else 0)
    console = Console() if sys.stdout.isatty() else Console(width=220)  # files and CI logs get full tables
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        args.func(args, console)
    except KpbenchError as exc:
        log.error(f"kpbench: error: {exc}")
        return 2
    except OSError as exc:  # a full, read-only or forbidden disk: one line naming the path
        if exc.errno not in DISK_ERRORS:
            raise
        log.error(f"kpbench: error: {exc.filename or 'writing'}: {exc.strerror} (every file kpbench writes appears "
                  f"whole or not at all; free space or give another --out)")
        return 2
    except KeyboardInterrupt as exc:
        terminated = isinstance(exc, Terminated) or bool(_SIGTERM_SEEN)
        log.error(f"kpbench: {'terminated' if terminated else 'interrupted'} ({INTERRUPTED.get(args.command, 'nothing kept')})")
        return 143 if terminated else 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0


if __name__ == "__main__":
    sys.exit(main())
