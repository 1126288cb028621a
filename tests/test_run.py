"""End-to-end runs: files written, determinism, resume, and that the ranking means something."""

import json

import pandas as pd
import pytest
from rich.console import Console

from conftest import ROOT, run_cli
from kpbench import config as cfgmod
from kpbench.plugins import get_plugins
from kpbench.runner import run


def _run(config, out):
    config["run"]["out"] = str(out)
    return run(cfgmod.Settings.from_dict(config), get_plugins(), Console(width=160, file=open("/dev/null", "w")))


def test_run_writes_results_and_report_reprints_them(tmp_path, tiny_config):
    out = tmp_path / "run"
    r = run_cli("run", "--config", tiny_config, "--out", out, "--epochs", "2")
    assert r.returncode == 0, r.stderr
    assert "leaderboard" in r.stdout and "mean-shape" in r.stdout
    for f in ("config.yaml", "manifest.json", "leaderboard.csv", "leaderboard.md", "leaderboard.json"):
        assert (out / f).is_file(), f
    for model in ("cnn", "mean-shape"):
        for f in ("history.csv", "best.pt", "predictions.npz", "result.json"):
            assert (out / "models" / model / f).is_file(), (model, f)
    manifest = json.loads((out / "manifest.json").read_text())
    for key in ("kpbench", "torch", "timm", "device", "git_commit", "seed", "dataset_fingerprint", "config_hash"):
        assert key in manifest
    assert manifest["splits"] == {"train": 42, "val": 9, "test": 9}
    import torch

    assert manifest["cpu_capability"] == torch.backends.cpu.get_cpu_capability()  # the kernels' instruction set
    assert "cpu_model" in manifest
    hist = pd.read_csv(out / "models" / "cnn" / "history.csv")
    assert list(hist["epoch"]) == [0, 1, 2] and hist["train_loss"].iloc[1:].notna().all()
    board = pd.read_csv(out / "leaderboard.csv")
    assert list(board["rank"]) == [1, 2] and board["nme"].is_monotonic_increasing
    rep = run_cli("report", out)
    assert rep.returncode == 0 and all(m in rep.stdout for m in board["model"])
    # A second run into the same directory is refused rather than mixing results.
    again = run_cli("run", "--config", tiny_config, "--out", out)
    assert again.returncode == 2 and "--resume" in again.stderr


def test_same_seed_same_metrics_and_resume_keeps_finished_models(tmp_path, tiny_config):
    config = cfgmod.load(tiny_config)
    a = pd.read_csv(_run(cfgmod.load(tiny_config), tmp_path / "a") / "leaderboard.csv")
    b_dir = _run(config, tmp_path / "b")
    b = pd.read_csv(b_dir / "leaderboard.csv")
    cols = ["model", "nme", "rmse", "mae", "mse", "train_loss", "val_loss"]
    pd.testing.assert_frame_equal(a[cols], b[cols])
    # Interrupted after cnn: its result is kept, mean-shape is redone, the leaderboard is the same.
    (b_dir / "models" / "mean-shape" / "result.json").unlink()
    (b_dir / "leaderboard.csv").unlink()
    mtime = (b_dir / "models" / "cnn" / "best.pt").stat().st_mtime
    run(cfgmod.Settings.from_dict(config), get_plugins(), Console(file=open("/dev/null", "w")), resume=True)
    assert (b_dir / "models" / "cnn" / "best.pt").stat().st_mtime == mtime
    pd.testing.assert_frame_equal(pd.read_csv(b_dir / "leaderboard.csv")[cols], b[cols])


def test_timm_model_trains_on_tiny_data(tmp_path, tiny_config):
    config = cfgmod.load(tiny_config)
    config["models"] = ["resnet10t"]
    board = pd.read_csv(_run(config, tmp_path / "r") / "leaderboard.csv")
    row = board.iloc[0]
    assert row["model"] == "resnet10t" and row["params"] > 4_000_000 and row["gmacs"] > 0
    assert row["train_loss"] > 0


@pytest.mark.slow
def test_default_benchmark_ranks_models_meaningfully(tmp_path):
    """On the synthetic test split the better model beats the plain CNN, and both beat the mean shape."""
    config = cfgmod.load(ROOT / "configs" / "default.yaml")
    config["eval"]["latency"] = False
    board = pd.read_csv(_run(config, tmp_path / "default") / "leaderboard.csv").set_index("model")
    assert board.loc["integral", "nme"] < board.loc["cnn", "nme"] < board.loc["mean-shape", "nme"]
    # "measurably": a clear margin, not noise
    assert board.loc["integral", "nme"] < 0.8 * board.loc["cnn", "nme"]
    assert board.loc["cnn", "nme"] < 0.8 * board.loc["mean-shape", "nme"]


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_is_valid_and_names_registered_components(path):
    config = cfgmod.load(path)
    plugins = get_plugins()
    for name in config["models"]:
        base = name.split("@")[0]
        if base in ("dlib68", "mediapipe") and base not in plugins.models.names():
            continue  # optional extra
        plugins.models.get(base)
    for name in config["eval"]["metrics"]:
        plugins.metrics.get(name)
    plugins.detectors.get(config["data"]["detector"])
    for name in config["eval"]["detectors"]:
        plugins.detectors.get(name)
    specs = config["data"]["dataset"]
    for spec in specs if isinstance(specs, list) else [specs]:
        plugins.datasets.get(spec.partition(":")[0])
    assert config["eval"]["sort_by"] in config["eval"]["metrics"]
    cfgmod.check(cfgmod.Settings.from_dict(config))


@pytest.mark.parametrize("args, says", [
    (["--set", "run.seeds=[0,x]"], "run.seeds must be a non-empty list of integers, got [0, 'x']"),
    (["--set", "eval.metrics=[nme,3]"], "eval.metrics must be a list of names, got ['nme', 3]"),
    (["--set", "models=[cnn,5]"], "models must be a list of names, got ['cnn', 5]"),
    (["--set", "data.split=[a,b,c]"], "data.split must be three non-negative fractions summing to 1"),
    (["--set", "data.split=[0.5,0.6]"], "got [0.5, 0.6]"),
    (["--set", "data.input_size=0"], "data.input_size must be at least 16, got 0"),
    (["--set", "train.batch_size=0"], "train.batch_size must be at least 1, got 0"),
    (["--epochs", "-3"], "train.epochs must be at least 1, got -3"),
    (["--epochs", "0"], "train.epochs must be at least 1, got 0"),
    (["--set", "train.lr=-1"], "train.lr must be a finite positive number, got -1"),
    (["--models", ""], "--models '': no model names"),
    (["--out", "FILE"], "is a file, not a folder"),
    (["--set", "eval.onnx_latency=true"], "'eval.onnx_latency' must be one of auto, false, got True"),
    (["--set", "run.executor=slurm"], "'run.executor' must be one of local, ray, got 'slurm'"),
    (["--address", "auto"], "--address: for the Ray executor only; add --executor ray"),
    (["--executor", "ray", "--gpus-per-job", "-1"], "gpus_per_job non-negative, got 1 and -1.0"),
])
def test_config_mistakes_are_one_line_before_any_work(tmp_path, args, says):
    (tmp_path / "FILE").write_text("mine")
    args = [str(tmp_path / "FILE") if a == "FILE" else a for a in args]
    out = [] if "--out" in args else ["--out", str(tmp_path / "run")]
    r = run_cli("run", "--set", "data.limit=30", *args, *out, cwd=tmp_path)  # the built-in defaults
    assert r.returncode == 2, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and says in lines[0], r.stderr
    assert not (tmp_path / "run").exists() and (tmp_path / "FILE").read_text() == "mine"


def test_invalid_yaml_in_detector_options_is_one_line(tmp_path):
    r = run_cli("predict", str(tmp_path), "--model", str(tmp_path), "--detector-options", "{margin: [")
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0
    assert "--detector-options '{margin: [': invalid YAML" in r.stderr


def test_export_to_onnx_gives_pytorchs_keypoints(tmp_path, tiny_config):
    """A trained model exported to ONNX: ONNX Runtime's keypoints equal PyTorch's on the same crops,
    the sidecar says how crops are made, and an existing file is never overwritten."""
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    import numpy as np
    import torch

    from kpbench.trained import load_trained

    cfg = tmp_path / "c.yaml"
    cfg.write_text(tiny_config.read_text().replace("models: [cnn, mean-shape]", "models: [integral]"))
    assert run_cli("run", "--config", cfg, "--out", tmp_path / "run").returncode == 0
    r = run_cli("export", "--model", tmp_path / "run", "--out", tmp_path / "m.onnx")
    assert r.returncode == 0, r.stderr
    print(r.stdout)
    sidecar = json.loads((tmp_path / "m.onnx.json").read_text())
    assert sidecar["check"]["max_abs_diff_vs_torch"] < 1e-4
    assert sidecar["crop_convention"]["detector"] and sidecar["points"][0] == "left_eye_center"
    trained = load_trained(tmp_path / "run", get_plugins())
    size = trained.input_size
    crops = torch.rand(5, 1, size, size, generator=torch.Generator().manual_seed(7))
    with torch.inference_mode():
        want = trained.model(crops).numpy()
    got = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {"crops": crops.numpy()})[0]
    k = want.reshape(len(want), -1).shape[1] // 2
    assert got.shape == (5, 3 * k) and sidecar["output"]["shape"] == ["batch", 3 * k]  # then a confidence per point
    np.testing.assert_allclose(got[:, :2 * k], want.reshape(5, -1), atol=1e-4)
    assert ((got[:, 2 * k:] >= 0) & (got[:, 2 * k:] <= 1)).all()
    again = run_cli("export", "--model", tmp_path / "run", "--out", tmp_path / "m.onnx")
    assert again.returncode == 2 and "never overwrites" in again.stderr
    _a_full_disk_leaves_no_half_pair(tmp_path)
    assert run_cli("run", "--config", tiny_config, "--out", tmp_path / "cnn").returncode == 0
    unsupported = run_cli("export", "--model", tmp_path / "cnn" / "models" / "cnn", "--out", tmp_path / "c.onnx")
    assert unsupported.returncode == 2 and unsupported.stderr.count("\n") == 1, unsupported.stderr
    assert "cannot be exported to ONNX" in unsupported.stderr and not (tmp_path / "c.onnx").exists()


def _a_full_disk_leaves_no_half_pair(tmp_path):
    """The disk fills while the graph is written: neither the .onnx nor its sidecar is left, and
    the command says so in one line naming the file."""
    import errno
    from unittest import mock

    from kpbench import cli, export

    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    with mock.patch.object(export, "atomic_write_bytes", full):
        rc = cli.main(["-q", "export", "--model", str(tmp_path / "run"), "--out", str(tmp_path / "full.onnx")])
    assert rc == 2 and not (tmp_path / "full.onnx").exists() and not (tmp_path / "full.onnx.json").exists()


def test_bin_kpbench_takes_the_callers_relative_paths_from_the_callers_directory(tmp_path, tiny_config):
    # bin/kpbench runs kpbench from the repository root (KPBENCH_CALLER_DIR names where it was started):
    # a relative --config and --out are the caller's, not the repository's.
    r = run_cli("run", "--config", tiny_config.name, "--out", "mine", cwd=ROOT,
                env={"KPBENCH_CALLER_DIR": str(tmp_path)})
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "mine" / "leaderboard.csv").is_file() and not (ROOT / "mine").exists()


def test_from_caller_keeps_kinds_absolute_paths_and_inputs_found_only_from_the_root(tmp_path):
    from kpbench.cli import build_parser, from_caller

    (tmp_path / "faces").mkdir()
    (tmp_path / "a.jpg").write_bytes(b"")
    args = build_parser().parse_args(["run", "--config", "configs/wild.yaml", "--dataset", "ibug:faces",
                                      "--dataset", "synthetic", "--eval-dataset", "folder68:/abs/faces"])
    from_caller(args, tmp_path)
    assert args.config == "configs/wild.yaml"  # not in the caller's directory: the repository's
    assert args.dataset == [f"ibug:{tmp_path}/faces", "synthetic"] and args.eval_dataset == "folder68:/abs/faces"
    args = build_parser().parse_args(["predict", "*.jpg", "missing.png", "--out", "o"])
    from_caller(args, tmp_path)
    assert args.paths == [f"{tmp_path}/*.jpg", "missing.png"] and args.out == f"{tmp_path}/o"
