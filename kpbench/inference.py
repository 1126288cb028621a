"""``kpbench evaluate``: a trained model scored on any dataset, through any face-box path, with the
reports of ``kpbench run``; and the note when a detector cannot cut a model's training crops."""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console

from kpbench import report
from kpbench.components import load_dataset, load_splits, make_detector, resolve_device
from kpbench.data import prepare
from kpbench.errors import KpbenchError
from kpbench.evaluate import test_and_save
from kpbench.plugins import Plugins
from kpbench.rundir import RunDir, manifest, metrics_meta, read_mapping, save_result
from kpbench.trained import Trained


def evaluate(trained: Trained, plugins: Plugins, dataset: str | None, out: Path, detector: str | None = None,
             detector_options: dict | None = None, dataset_options: dict | None = None,
             console: Console | None = None):
    """Score a trained model on every sample of ``dataset`` ("kind:path"), or with ``dataset``
    None on its run's own test split (the faces its run held out), and write a run directory with
    the same reports as ``kpbench run`` (no training curves)."""
    rd = RunDir(out)
    if rd.path.exists() and (not rd.path.is_dir() or any(rd.path.iterdir())):
        raise KpbenchError(f"--out {rd}: exists and is not an empty directory; choose a new one")
    if trained.settings is None:
        raise KpbenchError(f"{trained.model_dir}: evaluate needs a run folder's model, not an exported graph")
    data_changes: dict = {}
    if dataset is not None:
        data_changes.update(dataset=dataset, options=dataset_options or {}, eval_dataset=None, eval_options={},
                            limit=None)
    elif dataset_options:
        raise KpbenchError("--dataset-options needs --dataset (the run's test split keeps the run's options)")
    if detector:  # another detector, set to the model's crop convention unless told otherwise
        data_changes.update(detector=detector,
                            detector_options=trained.convention.options_for(plugins, detector, detector_options))
    elif detector_options:
        raise KpbenchError("--detector-options needs --detector (the run's detector keeps the run's options)")
    # evaluate scores one face-box path: --detector, or the run's
    settings = trained.settings.replace(data=data_changes, models=[trained.label], eval={"detectors": []},
                                        run={"seeds": None, "out": str(out), "name": f"evaluate-{trained.label}"})
    dc = settings.data
    # the split is the run's (run.seed); the model is the one trained with its own seed (--seeds)
    seed = read_mapping(trained.model_dir / "result.json").get("seed", settings.run.seed)  # finished: it has one
    metrics = [plugins.metrics.get(m, where="eval.metrics") for m in settings.eval.metrics]
    detect = make_detector(plugins, dc.detector, dc.detector_options)
    if dataset is None:
        sources, splits = load_splits(plugins, settings)
        data, indices = sources[2], splits[2]
    else:
        data = load_dataset(plugins, dataset, dc.options)
        indices = range(len(data))
    test = prepare(data, indices, detect, trained.input_size, trained.schema.name)
    device = resolve_device("auto")  # where this machine can run it, whatever the training used
    trained.model.to(device)
    mdir = rd.model_dir(trained.label, seed, [seed])
    values = test_and_save(trained.model, test, trained.schema, metrics, dc.miss_policy, dc.detector, mdir, device)
    rd.write_config(settings)
    meta = manifest(settings, device, test.fingerprint()[:8])
    meta.update(splits={"test": len(test)}, detector=dc.detector, evaluated_model=str(trained.model_dir),
                metrics=metrics_meta(metrics), finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    rd.write_manifest(meta)
    rd.save_test_faces(test)
    save_result(mdir, {"model": trained.label, "seed": seed, **values, "input_size": trained.input_size})
    report.render(out, console, plugins)
    return out
