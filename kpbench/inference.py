"""``kpbench evaluate``: a trained model scored on any dataset, through any face-box path, with the
reports of ``kpbench run``; and the note when a detector cannot cut a model's training crops."""

from __future__ import annotations

import json
import time
from pathlib import Path

from rich.console import Console

from kpbench import report
from kpbench.components import convention_options, load_dataset, make_detector, resolve_device
from kpbench.data import prepare
from kpbench.errors import KpbenchError
from kpbench.keypoints import get_schema
from kpbench.plugins import Plugins
from kpbench.runner import load_splits, manifest, metrics_meta, test_and_save
from kpbench.rundir import RunDir, save_result
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
    config = json.loads(json.dumps(trained.config))  # a copy
    dc = config["data"]
    if dataset is not None:
        dc.update(dataset=dataset, options=dataset_options or {}, eval_dataset=None, eval_options={}, limit=None)
    elif dataset_options:
        raise KpbenchError("--dataset-options needs --dataset (the run's test split keeps the run's options)")
    if detector:  # another detector, set to the model's crop convention unless told otherwise
        dc.update(detector=detector, detector_options=convention_options(plugins, detector, trained.config["data"],
                                                                          detector_options))
    elif detector_options:
        raise KpbenchError("--detector-options needs --detector (the run's detector keeps the run's options)")
    config["models"] = [trained.label]
    config["eval"]["detectors"] = []  # evaluate scores one face-box path: --detector, or the run's
    config["run"].update(seeds=None, out=str(out), name=f"evaluate-{trained.label}")
    metrics = [plugins.metrics.get(m, where="eval.metrics") for m in config["eval"]["metrics"]]
    schema = get_schema(dc["schema"])
    detect = make_detector(plugins, dc["detector"], dc["detector_options"])
    if dataset is None:
        sources, splits = load_splits(plugins, config)
        data, indices = sources[2], splits[2]
    else:
        data = load_dataset(plugins, dataset, dc["options"])
        indices = range(len(data))
    test = prepare(data, indices, detect, trained.input_size, schema.name)
    device = resolve_device("auto")  # where this machine can run it, whatever the training used
    trained.model.to(device)
    mdir = rd.model_dir(trained.label, config["run"]["seed"], [config["run"]["seed"]])
    values = test_and_save(trained.model, test, schema, metrics, dc, mdir, device)
    rd.write_config(config)
    meta = manifest(config, device, test.fingerprint()[:8])
    meta.update(splits={"test": len(test)}, detector=dc["detector"], evaluated_model=str(trained.model_dir),
                metrics=metrics_meta(metrics), finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    rd.write_manifest(meta)
    rd.save_test_faces(test)
    save_result(mdir, {"model": trained.label, "seed": config["run"]["seed"], **values,
                       "input_size": trained.input_size})
    report.render(out, console, plugins)
    return out
