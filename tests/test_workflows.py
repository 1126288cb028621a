"""After training: seeds, kill-and-resume, reports re-rendered and compared, evaluate, predict,
bench, and detectors that miss."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
from rich.console import Console

from conftest import ROOT, run_cli
from kpbench import config as cfgmod
from kpbench.plugins import get_plugins
from kpbench.runner import run

METRICS = ["model", "nme", "rmse", "mae", "mse", "train_loss", "val_loss"]


def _quiet():
    return Console(width=160, file=open(os.devnull, "w"))


def _run(config, out, plugins=None, resume=False):
    config["run"]["out"] = str(out)
    return run(cfgmod.Settings.from_dict(config), plugins or get_plugins(), _quiet(), resume=resume)


def test_seeds_give_mean_and_std_and_keep_per_seed_rows(tmp_path, tiny_config):
    config = cfgmod.load(tiny_config)
    config["run"]["seeds"] = [0, 1]
    config["models"] = ["cnn"]
    out = _run(config, tmp_path / "s")
    board = pd.read_csv(out / "leaderboard.csv")
    assert len(board) == 1 and board.loc[0, "seeds"] == 2 and board.loc[0, "seed"] == "0,1"
    per_seed = [json.loads((out / "models" / "cnn" / f"seed{s}" / "result.json").read_text()) for s in (0, 1)]
    losses = [pd.read_csv(out / "models" / "cnn" / f"seed{s}" / "history.csv")["train_loss"].iloc[1] for s in (0, 1)]
    assert losses[0] != losses[1]  # different seeds, different training
    assert board.loc[0, "nme"] == pytest.approx(np.mean([r["nme"] for r in per_seed]), abs=1e-6)
    assert board.loc[0, "nme_std"] == pytest.approx(np.std([r["nme"] for r in per_seed], ddof=1), abs=1e-6)


def test_report_rerenders_byte_for_byte_and_compare_checks_the_data(tmp_path, tiny_config):
    a = _run(cfgmod.load(tiny_config), tmp_path / "a")
    files = ["leaderboard.csv", "leaderboard.md", "leaderboard.json", "report.html", "plots/ced.png",
             "plots/overlays.png", "plots/training_curves.png"]
    before = {f: (a / f).read_bytes() for f in files}
    for f in files:
        (a / f).unlink()
    r = run_cli("report", a)
    assert r.returncode == 0, r.stderr
    assert all((a / f).read_bytes() == before[f] for f in files)
    html = (a / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 5 and "<table" in html and "mean-shape" in html

    config = cfgmod.load(tiny_config)
    config["train"]["epochs"] = 2
    b = _run(config, tmp_path / "b")
    r = run_cli("report", a, b)
    assert r.returncode == 0, r.stderr
    assert "B - A" in r.stdout and "cnn" in r.stdout and "nme" in r.stdout
    config = cfgmod.load(tiny_config)
    config["data"]["options"]["seed"] = 9  # other faces
    c = _run(config, tmp_path / "c")
    r = run_cli("report", a, c)
    assert r.returncode == 2 and "test data differ" in r.stderr


def test_killed_run_resumes_to_the_same_leaderboard(tmp_path, tiny_config):
    config = cfgmod.load(tiny_config)
    config["models"] = ["cnn"]
    config["train"].update(epochs=6, checkpoint_interval=0)  # a checkpoint every epoch, to kill at epoch 2
    path = tmp_path / "six.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    whole = _run(cfgmod.load(path), tmp_path / "whole")

    out = tmp_path / "killed"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "kpbench", "run", "-c", str(path), "--out", str(out)], cwd=ROOT,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    history = out / "models" / "cnn" / "last.pt"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if history.is_file():
            import torch

            try:
                if torch.load(history, weights_only=True)["epoch"] >= 2:
                    break
            except Exception:  # noqa: BLE001 - being written; the rename is atomic, so retry
                pass
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "models" / "cnn" / "result.json").exists()
    r = run_cli("run", "-c", path, "--out", out, "--resume")
    assert r.returncode == 0, r.stderr
    hist = pd.read_csv(out / "models" / "cnn" / "history.csv")
    assert list(hist["epoch"]) == list(range(7))
    pd.testing.assert_frame_equal(pd.read_csv(out / "leaderboard.csv")[METRICS],
                                  pd.read_csv(whole / "leaderboard.csv")[METRICS])
    assert not (out / "models" / "cnn" / "last.pt").exists()


def test_evaluate_and_predict_with_a_trained_model(tmp_path, tiny_config):
    from PIL import Image

    out = _run(cfgmod.load(tiny_config), tmp_path / "run")
    ev = tmp_path / "eval"
    r = run_cli("evaluate", "--model", out / "models" / "cnn", "--dataset", "synthetic", "--dataset-options",
                "{n: 60, size: 32, seed: 3}", "--out", ev)
    assert r.returncode == 0, r.stderr
    board = pd.read_csv(ev / "leaderboard.csv")
    assert list(board["model"]) == ["cnn"] and board.loc[0, "nme"] > 0
    assert json.loads((ev / "manifest.json").read_text())["splits"]["test"] == 60  # the whole dataset
    assert (ev / "report.html").is_file()

    from kpbench_plugins.synthetic import render

    photos = tmp_path / "photos"
    photos.mkdir()
    image, _ = render(0, 5, 48)
    Image.fromarray(image).save(photos / "face.png")
    pred = tmp_path / "pred"
    r = run_cli("predict", photos / "face.png", "--model", out, "--detector", "none", "--out", pred, "--overlay")
    assert r.returncode == 0, r.stderr
    result = json.loads((pred / "face.json").read_text())
    (face,) = result["faces"]
    assert len(face["keypoints"]) == 15 and all(0 <= v <= 48 for xy in face["keypoints"].values() for v in xy)
    assert (pred / "face.jpg").read_bytes()[:3] == b"\xff\xd8\xff"  # the overlay, a JPEG
    r = run_cli("predict", photos / "missing*.png", "--model", out, "--detector", "none", "--out", tmp_path / "p2")
    assert r.returncode == 2 and "missing*.png" in r.stderr


def test_bench_prints_costs_without_training():
    r = run_cli("bench", "--models", "cnn,mean-shape", "--input-size", "32")
    assert r.returncode == 0, r.stderr
    assert "cnn" in r.stdout and "gmacs" in r.stdout and "latency_ms" in r.stdout



def test_onnx_runtime_latency_beside_pytorchs_and_null_where_the_model_cannot_be_exported(tmp_path, tiny_config):
    """With onnx and onnxruntime installed, bench and the leaderboard carry ONNX Runtime's CPU
    latency; the cnn baseline at 32 px (adaptive pooling the exporter refuses) gets null and the
    report says why; eval.onnx_latency: false leaves the column out."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from kpbench.profile import ORT_LATENCY

    r = run_cli("bench", "--models", "cnn,integral", "--input-size", "32", "--json")
    assert r.returncode == 0, r.stderr
    rows = {row["model"]: row for row in json.loads(r.stdout)}
    assert rows["cnn"][ORT_LATENCY] is None and rows["integral"][ORT_LATENCY] > 0

    config = cfgmod.load(tiny_config)
    config["models"] = ["cnn", "integral"]
    config["eval"]["latency"] = True
    out = _run(config, tmp_path / "on")
    cnn = json.loads((out / "models" / "cnn" / "result.json").read_text(), parse_constant=pytest.fail)  # strict
    integral = json.loads((out / "models" / "integral" / "result.json").read_text())
    assert cnn[ORT_LATENCY] is None and cnn["latency_ms"] > 0 and integral[ORT_LATENCY] > 0
    board = {row["model"]: row for row in json.loads((out / "leaderboard.json").read_text())["rows"]}
    assert board["cnn"][ORT_LATENCY] is None and board["integral"][ORT_LATENCY] == integral[ORT_LATENCY]
    assert "Empty for cnn: torch&#x27;s ONNX exporter cannot take the model" in (out / "report.html").read_text()

    config["eval"]["onnx_latency"] = False
    off = _run(config, tmp_path / "off")
    assert ORT_LATENCY not in pd.read_csv(off / "leaderboard.csv") and "latency_ms" in pd.read_csv(off / "leaderboard.csv")

MISSING_DETECTOR = '''
import kpbench

class EveryOther:
    """Misses every second image."""
    def __init__(self):
        self.calls = 0
    def __call__(self, image, points):
        self.calls += 1
        h, w = image.shape[:2]
        return None if self.calls % 2 == 0 else (0.0, 0.0, float(max(h, w)))

@kpbench.hookimpl
def kpbench_detectors():
    return [kpbench.DetectorSpec("every-other", EveryOther, "misses half")]
'''


@pytest.mark.parametrize("policy", ["fallback", "exclude"])
def test_detector_misses_are_counted_and_scored_by_the_policy(tmp_path, tiny_config, policy):
    site = tmp_path / "site"
    site.mkdir()
    (site / "every_other.py").write_text(MISSING_DETECTOR)
    sys.path.insert(0, str(site))
    try:
        config = cfgmod.load(tiny_config)
        config["data"]["detector"] = "every-other"
        config["data"]["miss_policy"] = policy
        config["models"] = ["mean-shape"]
        from kpbench.plugins import Plugins

        plugins = Plugins(extra_modules=("every_other",))
        out = _run(config, tmp_path / policy, plugins)
    finally:
        sys.path.remove(str(site))
    row = pd.read_csv(out / "leaderboard.csv").iloc[0]
    with np.load(out / "models" / "mean-shape" / "predictions.npz") as z:
        missed, nme = z["missed"], z["metric_nme"]
    assert missed.any() and not missed.all()
    assert row["miss_rate"] == pytest.approx(missed.mean(), abs=1e-4)
    if policy == "exclude":
        assert np.isnan(nme[missed]).all() and row["nme"] == pytest.approx(np.nanmean(nme), abs=1e-6)
    else:
        assert np.isfinite(nme).all()


def test_train_on_one_dataset_and_test_on_another_from_one_config(tmp_path, tiny_config):
    config = cfgmod.load(tiny_config)
    config["models"] = ["mean-shape"]
    config["data"]["eval_dataset"] = "synthetic"
    config["data"]["eval_options"] = {"n": 25, "size": 40, "seed": 11}
    out = _run(config, tmp_path / "cross")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["splits"] == {"train": 42, "val": 9, "test": 25}
    with np.load(out / "models" / "mean-shape" / "predictions.npz") as z:
        assert z["true"].shape == (25, 15, 2) and z["boxes"][0, 2] == 40  # the other dataset's 40 px faces


def test_pixel_targets_survive_saving_and_evaluate_gives_the_run_s_numbers(tmp_path, tiny_config):
    """A model trained with ``train.targets: pixels`` is rebuilt with its output unit: evaluating
    the saved model on the run's own test split reproduces the run's leaderboard."""
    config = cfgmod.load(tiny_config)
    config["models"] = ["cnn"]
    config["train"].update(targets="pixels", epochs=4, lr=0.01)
    out = _run(config, tmp_path / "px")
    assert json.loads((out / "models" / "cnn" / "result.json").read_text())["best_epoch"] > 0  # not the mean face
    ev = tmp_path / "eval"
    r = run_cli("evaluate", "--model", out / "models" / "cnn", "--dataset", "synthetic", "--dataset-options",
                "{n: 60, size: 32, seed: 3}", "--out", ev)
    assert r.returncode == 0, r.stderr
    run_pred = np.load(out / "models" / "cnn" / "predictions.npz")
    ev_pred = np.load(ev / "models" / "cnn" / "predictions.npz")
    ids = list(ev_pred["ids"])
    rows = [ids.index(i) for i in run_pred["ids"]]
    np.testing.assert_allclose(ev_pred["pred"][rows], run_pred["pred"], atol=1e-3)


def test_combined_datasets_report_each_source_on_the_faces_a_single_run_tests(tmp_path, tiny_config):
    """Training on two datasets at once: the test split is the union of the single-dataset test
    splits, and ``leaderboard_by_source`` scores each model on each source's faces alone."""
    config = cfgmod.load(tiny_config)
    config["data"].update(dataset=["synthetic", "synthetic"], options=[{"n": 40, "size": 32, "seed": 1},
                                                                    {"n": 30, "size": 32, "seed": 2}])
    out = _run(config, tmp_path / "both")
    board = pd.read_csv(out / "leaderboard.csv").set_index("model")
    sources = pd.read_csv(out / "leaderboard_by_source.csv")
    assert sorted(set(sources["source"])) == ["synthetic-0", "synthetic-1"]
    for model, rows in sources.groupby("model"):
        assert rows["faces"].sum() == len(np.load(out / "models" / model / "predictions.npz")["ids"])
        overall = (rows["nme"] * rows["faces"]).sum() / rows["faces"].sum()
        assert overall == pytest.approx(board.loc[model, "nme"], rel=1e-4)
    assert "By test source" in (out / "report.html").read_text()

    alone = cfgmod.load(tiny_config)
    alone["data"]["options"] = {"n": 40, "size": 32, "seed": 1}
    alone["models"] = ["mean-shape"]
    single = _run(alone, tmp_path / "alone")
    ids_alone = sorted(np.load(single / "models" / "mean-shape" / "predictions.npz")["ids"])
    ids_both = np.load(out / "models" / "mean-shape" / "predictions.npz")["ids"]
    assert sorted(i.split("/", 1)[1] for i in ids_both if i.startswith("synthetic-0/")) == ids_alone
    assert not (tmp_path / "alone" / "leaderboard_by_source.csv").exists()


def test_resume_by_another_path_or_moved_and_refusal_names_the_key(tmp_path, tiny_config):
    import shutil

    first = tmp_path / "runs" / "a"
    r = run_cli("run", "-c", tiny_config, "--out", first)
    assert r.returncode == 0, r.stderr
    # The same folder named relatively, and a moved copy: both resume (nothing left to train).
    r = run_cli("run", "-c", tiny_config, "--out", "runs/a", "--resume", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "kept from the previous attempt" in r.stderr
    moved = tmp_path / "elsewhere"
    shutil.copytree(first, moved)
    r = run_cli("run", "-c", tiny_config, "--out", moved, "--resume")
    assert r.returncode == 0 and "kept from the previous attempt" in r.stderr, r.stderr
    # A run written before a config key existed (here eval.onnx_latency) resumes: the key takes its
    # default; so does one started locally and resumed on another executor.
    import yaml

    old = yaml.safe_load((moved / "config.yaml").read_text())
    del old["eval"]["onnx_latency"]
    (moved / "config.yaml").write_text(yaml.safe_dump(old, sort_keys=False))
    import importlib.util

    executor = "ray" if importlib.util.find_spec("ray") else "local"
    r = run_cli("run", "-c", tiny_config, "--out", moved, "--resume", "--set", f"run.executor={executor}")
    assert r.returncode == 0 and "kept from the previous attempt" in r.stderr, r.stderr
    # A real difference is refused, naming the key and both values.
    r = run_cli("run", "-c", tiny_config, "--out", moved, "--resume", "--epochs", "3")
    assert r.returncode == 2 and "train.epochs: 1 -> 3" in r.stderr, r.stderr


def test_sigterm_stops_a_run_like_ctrl_c_and_it_resumes(tmp_path, tiny_config):
    config = cfgmod.load(tiny_config)
    config["models"] = ["mean-shape", "cnn"]
    config["train"].update(epochs=40, checkpoint_interval=0)
    path = tmp_path / "long.yaml"
    path.write_text(json.dumps(config))
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "kpbench", "run", "-c", str(path), "--out", str(out)], cwd=ROOT,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not (out / "models" / "cnn" / "last.pt").is_file():
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be stopped"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143 and "terminated" in err and "--resume" in err, err[-3000:]
    assert not (out / "models" / "cnn" / "result.json").exists()
    r = run_cli("report", out)  # what finished, marked as partial
    assert r.returncode == 0 and "Partial run: 1 of 2" in r.stderr, r.stdout + r.stderr  # a warning
    r = run_cli("run", "-c", path, "--out", out, "--resume")
    assert r.returncode == 0, r.stderr
    assert (out / "models" / "cnn" / "result.json").is_file() and "Partial run" not in r.stdout + r.stderr


def test_quiet_shows_only_warnings_and_verbose_adds_debug_notes(tmp_path, tiny_config):
    r = run_cli("-q", "run", "-c", tiny_config, "--models", "mean-shape", "--out", tmp_path / "q")
    assert r.returncode == 0, r.stderr
    assert r.stderr == "" and "mean-shape" in r.stdout  # no notes, no progress bars; the results stay
    r = run_cli("run", "-v", "-c", tiny_config, "--models", "mean-shape", "--out", tmp_path / "v")
    assert r.returncode == 0, r.stderr
    assert f"run {tmp_path / 'v'}" in r.stderr  # a note
    assert "plugin 'kpbench-models' loaded from kpbench_plugins.models" in r.stderr  # a debug note
    assert "jobs: mean-shape (seed 0)" in r.stderr
    r = run_cli("-q", "run", "-v", "-c", tiny_config, "--out", tmp_path / "qv")
    assert r.returncode == 2 and "-q and -v contradict" in r.stderr and not (tmp_path / "qv").exists()
    r = run_cli("run", "-q", "-c", tiny_config, "--models", "nope", "--out", tmp_path / "e")
    assert r.returncode == 2 and r.stderr.startswith("kpbench: error: models: unknown model 'nope'")
