"""The model kpbench ships, and its card.

``python -m kpbench.card RUN [CONFIG [EVALUATION...]]`` copies the best model of a finished run of ``CONFIG``
(default ``configs/wild.yaml``) into ``kpbench/shipped/<run name>/``, laid out as a run folder so
that everything that reads runs reads it (``predict``, ``evaluate``, ``export``, the Predictor),
with its ONNX graph (``model.onnx`` and ``model.onnx.json``, as ``kpbench export`` writes them, one
face at a time) and ``card.json`` and ``MODEL_CARD.md``: the config and commit that produced it, the training
data and their licences, its accuracy on each face-box path and its latency, as the run measured
them, and the SHA-256 of every file (:func:`verify` checks them)."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import shutil
import sys
from pathlib import Path

from kpbench.errors import KpbenchError, first_line
from kpbench.io import atomic_write_json, atomic_write_text
from kpbench.log import log
from kpbench.rundir import RunDir, read_mapping

SHIPPED_ROOT = Path(__file__).resolve().parent / "shipped"
GRAPH = "model.onnx"  # a shipped model exported (with GRAPH.json, kpbench export's sidecar), run without PyTorch
LICENCES = {
    "youtube-faces-68": "YouTube Faces frames with 68 landmarks: research use",
    "300w-helen-train": "300-W (HELEN training part): annotations for research, non-commercial use; photos from Flickr",
    "300w-lfpw-train": "300-W (LFPW training part): annotations for research, non-commercial use",
    "300w-afw": "300-W (AFW): annotations for research, non-commercial use",
}
PATH_COLUMNS = ("path", "source", "faces", "miss_rate", "nme", "fr10", "auc10", "nme_ip")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _path_rows(run: Path, label: str) -> list[dict]:
    """The model's rows of the run's leaderboard by face-box path (annotated box, each detector)."""
    table = run / "leaderboard_by_path.csv"
    if not table.is_file():
        return []
    with table.open(newline="") as fh:
        return [{k: r[k] for k in PATH_COLUMNS if k in r} for r in csv.DictReader(fh) if r["model"] == label]


def _accuracy_rows(trained, evaluations, run_rows: bool) -> list[dict]:
    """The card's accuracy: each evaluation's rows, and the run's own for the paths no evaluation
    covers (with ``run_rows``: the run evaluated as the card's config says)."""
    rows = [row for e in evaluations for row in _evaluation_rows(Path(e), trained.label)]
    covered = {row["path"] for row in rows}
    own = [row for row in _path_rows(trained.run_dir, trained.label) if row["path"] not in covered] if run_rows else []
    return own + rows


def _evaluation_rows(evaluation: Path, label: str) -> list[dict]:
    """The model's rows of a ``kpbench evaluate`` folder (another face-box path on the same test
    split): all faces, then each source."""
    manifest = read_mapping(evaluation / "manifest.json")
    path, faces = manifest.get("detector"), (manifest.get("splits") or {}).get("test")
    result = read_mapping(evaluation / "models" / label / "result.json")
    rows = []
    for name, source in (("leaderboard.csv", "all"), ("leaderboard_by_source.csv", None)):
        table = evaluation / name
        if table.is_file():
            with table.open(newline="") as fh:
                for r in csv.DictReader(fh):
                    if r["model"] == label:
                        rows.append({"path": path, "source": source or r["source"],
                                     "faces": r.get("faces") or faces,
                                     "miss_rate": r.get("miss_rate") or (result.get("miss_rate", 0) if source else "–"),
                                     **{k: r[k] for k in PATH_COLUMNS[4:] if k in r}})
    return rows


def ship(run: str | Path, config_file: str = "configs/wild.yaml", *evaluations: str,
         root: Path = SHIPPED_ROOT) -> Path:
    """Copy ``run``'s best model and write its card (with the rows of ``evaluations``: ``kpbench
    evaluate`` folders of the model through other detectors); refuses to write over an earlier one."""
    from kpbench.config import Settings, differences, load
    from kpbench.export import export_onnx
    from kpbench.plugins import get_plugins
    from kpbench.runtime import INSTALL, available
    from kpbench.trained import load_trained

    if not available():
        raise KpbenchError(f"shipping a model exports it to ONNX: {INSTALL}")
    run, plugins = Path(run), get_plugins()
    trained = load_trained(run, plugins)
    wanted = Settings.from_dict(load(config_file), config_file)
    if trained.label not in wanted.models:
        raise KpbenchError(f"{run}: its model {trained.label} is not one of {config_file}'s models")
    # "key: the run's -> config_file's"; which other models the run compared leaves this one's weights alone
    changed = [c for c in differences(trained.settings, wanted) if not c.startswith("models:")]
    trained_otherwise = [c for c in changed if not c.startswith("eval.")]
    if trained_otherwise:
        raise KpbenchError(f"{run}: not a run of {config_file} as written ({trained_otherwise[0]})")
    for e in evaluations:  # each evaluated as config_file evaluates (its eval keys but the detectors)
        other = [c.removeprefix("eval.") for c in differences(wanted, RunDir(e).settings())
                 if c.startswith("eval.") and not c.startswith("eval.detectors")]
        if other:
            raise KpbenchError(f"{e}: not evaluated as {config_file} says (eval.{other[0]})")
    dest = root / trained.settings.run.name
    if dest.exists():
        raise KpbenchError(f"{dest} exists; remove it first to ship another model")
    manifest = read_mapping(trained.run_dir / "manifest.json")
    result = read_mapping(trained.model_dir / "result.json")
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model_dir = tmp / "models" / trained.label
    model_dir.mkdir(parents=True)
    shutil.copyfile(trained.run_dir / "manifest.json", tmp / "manifest.json")
    # The run's config with config_file's models and evaluation (eval keys changed after training:
    # ``evaluated_as``), without the folder the run was written to (a path of the machine it trained
    # on, not of the package).
    settings = trained.settings
    RunDir(tmp).write_config(dataclasses.replace(settings, models=wanted.models, eval=wanted.eval,
                                                 run=dataclasses.replace(settings.run, out=None)))
    for name in ("best.pt", "result.json"):
        shutil.copyfile(trained.model_dir / name, model_dir / name)
    # The same model exported, one face at a time, as the package's config evaluates it (so its flip
    # averaging): the Predictor runs it under ONNX Runtime without importing PyTorch.
    try:
        export_onnx(load_trained(tmp, plugins), tmp / GRAPH, batch=1)
    except KpbenchError as exc:  # e.g. an operator the exporter cannot take: the model runs in PyTorch
        log.warning(f"kpbench: {first_line(exc)}; shipped without {GRAPH}")
    else:
        sidecar = read_mapping(tmp / f"{GRAPH}.json")
        atomic_write_json(tmp / f"{GRAPH}.json", {**sidecar, "run": f"shipped/{dest.name}"})  # not this machine's
    files = sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file())
    datasets = trained.settings.data.dataset
    card = {
        "model": trained.label, "config_file": config_file, "config_hash": manifest.get("config_hash"),
        "git_commit": manifest.get("git_commit"), "trained": manifest.get("started"),
        "machine": {k: manifest.get(k) for k in ("device", "cpu", "threads", "torch", "platform")},
        "schema": trained.schema.name, "input_size": trained.input_size,
        "training_data": [{"dataset": d, "licence": next((v for k, v in LICENCES.items() if k in d), "see its source")}
                          for d in (datasets if isinstance(datasets, list) else [datasets])],
        "licence_note": "trained on data for research, non-commercial use (as dlib's own 68-point model): "
                        "use these weights under the same terms",
        "test_split": manifest.get("splits"),
        "evaluated_as": changed,  # eval keys set otherwise than in the training run (then its own rows are left out)
        "accuracy_by_path": _accuracy_rows(trained, evaluations, run_rows=not changed),
        "latency_flip_test": trained.settings.eval.flip_test,  # how the run timed it
        "result": {k: result[k] for k in sorted(result) if not isinstance(result[k], (dict, list))},
        "sha256": {f: sha256(tmp / f) for f in files},
    }
    atomic_write_json(tmp / "card.json", card)
    atomic_write_text(tmp / "MODEL_CARD.md", card_markdown(card))
    tmp.rename(dest)
    return dest


def card_markdown(card: dict) -> str:
    """The card as a page a reader takes in at a glance."""
    r = card["result"]
    lines = [f"# {card['model']}: the model kpbench ships", "",
             f"Trained by `bin/kpbench run --config {card['config_file']}` (config hash {card['config_hash']}, "
             f"commit {card['git_commit']}, started {card['trained']}) on {card['machine']['device']} "
             f"({card['machine']['cpu']}, {card['machine']['threads']} threads, torch {card['machine']['torch']}).",
             "", f"{card['schema']} points from {card['input_size']} px gray face crops.", "", "## Training data", ""]
    lines += [f"- `{d['dataset']}`: {d['licence']}" for d in card["training_data"]]
    lines += ["", f"**Licence**: {card['licence_note']}.", "", "## Accuracy on the run's test split", "",
              "Inter-ocular NME on the test faces of each source (people and photos not seen in training), "
              "through each face-box path: `gt-box` the annotated box, a detector's name its own boxes.", "",
              "| path | source | faces | missed | NME | FR@0.1 | AUC@0.1 |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {p.get('path')} | {p.get('source', 'all')} | {p.get('faces')} | {p.get('miss_rate')} | "
              f"{p.get('nme')} | {p.get('fr10')} | {p.get('auc10')} |" for p in card["accuracy_by_path"]]
    changed = card.get("evaluated_as") or []
    if changed:
        lines += ["", f"Evaluated as `{card['config_file']}` says, which differs from the training run in "
                      f"{', '.join(f'`{c}`' for c in changed)} (run -> shipped; evaluation only: the weights are the run's); "
                      f"the rows above are `kpbench evaluate` runs of the shipped model."]
    flip = "with" if card.get("latency_flip_test", True) else "without"
    lines += ["", "## Cost", "",
              f"{r.get('params')} parameters, {r.get('gmacs')} GMACs; batch-1 latency per face "
              f"{r.get('latency_ms')} ms in PyTorch, {r.get('onnxruntime_cpu_latency_ms', '–')} ms under ONNX Runtime "
              f"(measured at the end of the training run on the machine above, {flip} flip averaging).", "",
              "## Files", ""]
    lines += [f"- `{f}` sha256 `{h}`" for f, h in card["sha256"].items()]
    return "\n".join(lines) + "\n"


def verify(dest: Path) -> dict:
    """The card of a shipped model, after checking every file's SHA-256 against it."""
    card = read_mapping(dest / "card.json")
    for name, digest in card["sha256"].items():
        if sha256(dest / name) != digest:
            raise KpbenchError(f"{dest / name}: checksum differs from its card ({dest / 'card.json'})")
    return card


if __name__ == "__main__":
    print(ship(*sys.argv[1:]))
