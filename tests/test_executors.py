"""The executors: the same grid in this process and on Ray gives the same results; a job that
raises fails alone and ``--resume`` reruns only it; joining a loopback ``ray start`` cluster.

Every Ray these tests use listens on 127.0.0.1 only, keeps its files under the test's temporary
folder, and is stopped by the test that started it."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli

BOOM = '''
import os

import torch
import torch.nn as nn

import kpbench


class Boom(nn.Module):
    """A model that cannot be built for seed 1 while KPBENCH_TEST_BOOM is set."""

    def __init__(self, num_keypoints, input_size, in_chans=1):
        super().__init__()
        if os.environ.get("KPBENCH_TEST_BOOM") and torch.initial_seed() == 1:
            raise RuntimeError("boom on seed 1")
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(16 * in_chans, num_keypoints * 2))

    def forward(self, x):
        return self.head(x)


class Dies(nn.Module):
    """A model whose process dies once, at its 8th training batch (the third epoch's second: the
    checkpoints of epochs 1 and 2 are written), while KPBENCH_TEST_DIE names a file that does not
    exist yet; every training batch appends a line to that file + ".batches"."""

    def __init__(self, num_keypoints, input_size, in_chans=1):
        super().__init__()
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(16 * in_chans, num_keypoints * 2))

    def forward(self, x):
        marker = os.environ.get("KPBENCH_TEST_DIE")
        if marker and self.training:
            with open(marker + ".batches", "a") as f:
                f.write("batch\\n")
            with open(marker + ".batches") as f:
                seen = len(f.readlines())
            if seen == 8 and not os.path.exists(marker):
                open(marker, "w").close()
                os._exit(1)  # the worker process dies, as on a lost node
        return self.head(x)


@kpbench.hookimpl
def kpbench_models():
    return [kpbench.ModelSpec("boom", Boom, "fails on seed 1 (test plugin)"),
            kpbench.ModelSpec("dies", Dies, "its worker dies once (test plugin)")]
'''

GRID = ["--models", "cnn,integral,boom", "--seeds", "0,1", "--epochs", "2", "--set", "run.threads=1"]


@pytest.fixture
def ray_env(tmp_path):
    """The environment of a CLI run with the boom plugin and Ray's files in a short private folder
    (Ray's socket paths must stay under 107 characters), removed afterwards."""
    pytest.importorskip("ray")
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "kpbench_boom.py").write_text(BOOM)
    ray_tmp = Path(tempfile.mkdtemp(prefix="kpray", dir="/tmp"))
    env = {"KPBENCH_PLUGINS": "kpbench_boom", "RAY_TMPDIR": str(ray_tmp),
           "PYTHONPATH": os.pathsep.join([str(tmp_path / "plugins"), os.environ.get("PYTHONPATH", "")])}
    yield env
    shutil.rmtree(ray_tmp, ignore_errors=True)


def rows(run: Path) -> dict:
    return {r["model"]: {k: v for k, v in r.items() if k not in ("train_s", "train_s_std")}
            for r in json.loads((run / "leaderboard.json").read_text())["rows"]}


def test_grid_on_ray_equals_local_a_failing_job_fails_alone_and_resume_reruns_it(tmp_path, tiny_config, ray_env):
    local, on_ray = tmp_path / "local", tmp_path / "ray"
    r = run_cli("run", "--config", tiny_config, *GRID, "--out", local, env=ray_env)
    assert r.returncode == 0, r.stderr

    failing = {**ray_env, "KPBENCH_TEST_BOOM": "1"}
    r = run_cli("run", "--config", tiny_config, *GRID, "--executor", "ray", "--out", on_ray, env=failing)
    assert r.returncode == 2, r.stderr
    assert "boom (seed 1) failed: RuntimeError: boom on seed 1" in r.stderr
    assert "1 of 6 jobs failed" in r.stderr.splitlines()[-1] and "--resume" in r.stderr.splitlines()[-1]
    assert "boom on seed 1" in (on_ray / "models/boom/seed1/error.txt").read_text()
    assert not (on_ray / "models/boom/seed1/result.json").exists()
    assert "Partial run: 5 of 6" in r.stderr and "Partial run: 5 of 6" in (on_ray / "report.html").read_text()
    assert json.loads((on_ray / "leaderboard.json").read_text())["partial"].startswith("Partial run: 5 of 6")
    assert (on_ray / "leaderboard.md").read_text().startswith("**Partial run: 5 of 6")
    manifest = json.loads((on_ray / "manifest.json").read_text())
    assert "finished" not in manifest and manifest["executor"] == "ray"

    # The jobs that ran give the same leaderboard rows and the same predictions as in this process.
    ray_rows, local_rows = rows(on_ray), rows(local)
    for model in ("cnn", "integral"):
        assert ray_rows[model] == local_rows[model]
        for seed in (0, 1):
            a = np.load(local / f"models/{model}/seed{seed}/predictions.npz")
            b = np.load(on_ray / f"models/{model}/seed{seed}/predictions.npz")
            np.testing.assert_array_equal(a["pred"], b["pred"])

    # Fixed, the run resumes on Ray and reruns the one missing job; the others are kept untouched.
    kept = {p: p.stat().st_mtime_ns for p in on_ray.glob("models/*/seed*/result.json")}
    assert len(kept) == 5
    r = run_cli("run", "--config", tiny_config, *GRID, "--executor", "ray", "--out", on_ray, "--resume",
                env=ray_env)
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("kept from the previous attempt") == 5
    assert "boom (seed 1): done" in r.stderr
    assert {p: p.stat().st_mtime_ns for p in kept} == kept
    assert not (on_ray / "models/boom/seed1/error.txt").exists()
    assert "finished" in json.loads((on_ray / "manifest.json").read_text())
    assert json.loads((on_ray / "leaderboard.json").read_text())["partial"] is None
    assert set(rows(on_ray)) == {"cnn", "integral", "boom"}


def test_a_failing_job_fails_alone_in_this_process_too(tmp_path, tiny_config, ray_env):
    out = tmp_path / "run"
    env = {**ray_env, "KPBENCH_TEST_BOOM": "1"}
    r = run_cli("run", "--config", tiny_config, "--models", "boom,cnn", "--seeds", "1,2", "--epochs", "1",
                "--out", out, env=env)
    assert r.returncode == 2
    assert "boom (seed 1) failed: RuntimeError: boom on seed 1" in r.stderr
    assert "1 of 4 jobs failed" in r.stderr
    assert sorted(p.parent.relative_to(out).as_posix() for p in out.glob("models/*/*/result.json")) == [
        "models/boom/seed2", "models/cnn/seed1", "models/cnn/seed2"]


def test_a_job_whose_worker_dies_is_retried_by_ray_and_continues_from_its_checkpoint(tmp_path, tiny_config,
                                                                                   ray_env):
    marker = tmp_path / "died"
    args = ["--models", "dies", "--epochs", "4", "--set", "train.checkpoint_interval=0", "--set", "run.threads=1"]
    r = run_cli("run", "--config", tiny_config, *args, "--executor", "ray", "--out", tmp_path / "ray",
                env={**ray_env, "KPBENCH_TEST_DIE": str(marker)})
    assert r.returncode == 0, r.stderr
    assert marker.exists()  # it did die once
    # 42 training faces in batches of 16: 3 batches an epoch. Died at the 8th batch, after epoch 2's
    # checkpoint: a resume trains epochs 3 and 4 again (6 batches), a restart all four (12).
    assert len(Path(str(marker) + ".batches").read_text().splitlines()) == 8 + 6
    local = run_cli("run", "--config", tiny_config, *args, "--out", tmp_path / "local", env=ray_env)
    assert local.returncode == 0, local.stderr
    assert rows(tmp_path / "ray") == rows(tmp_path / "local")  # the same model as an uninterrupted run


def test_sigterm_stops_a_ray_run_like_a_local_one(tmp_path, tiny_config, ray_env):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "kpbench", "run", "-c", str(tiny_config), "--models", "cnn",
                             "--epochs", "200", "--set", "train.checkpoint_interval=0", "--executor", "ray",
                             "--out", str(out)], env={**os.environ, **ray_env, "HF_HUB_OFFLINE": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not (out / "models" / "cnn" / "last.pt").is_file():
        time.sleep(0.1)
    assert proc.poll() is None, "the run finished before it could be stopped"
    proc.send_signal(signal.SIGTERM)  # Ray's driver installs its own handler; kpbench's must still answer
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143 and "kpbench: terminated" in err and "--resume" in err, err[-3000:]
    assert not (out / "models" / "cnn" / "result.json").exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_joins_a_loopback_ray_cluster_and_stops_it(tmp_path, tiny_config, ray_env):
    ray_bin = Path(sys.executable).with_name("ray")
    port = _free_port()
    env = {**os.environ, **ray_env, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    head = subprocess.Popen([str(ray_bin), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
                             f"--port={port}", "--num-cpus=2", "--include-dashboard=false",
                             f"--temp-dir={ray_env['RAY_TMPDIR']}"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # the head's GCS accepts connections
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert head.poll() is None, head.stdout.read()
            time.sleep(0.5)
        driver = {**ray_env, "RAY_AUTH_MODE": "token"}  # `ray start` turns token authentication on
        out = tmp_path / "run"
        r = run_cli("run", "--config", tiny_config, "--models", "cnn,mean-shape", "--epochs", "1",
                    "--executor", "ray", "--address", f"127.0.0.1:{port}", "--out", out,
                    env=driver, timeout=300)
        assert r.returncode == 0, r.stderr
        assert f"joining the Ray cluster at 127.0.0.1:{port}" in r.stderr
        assert sorted(rows(out)) == ["cnn", "mean-shape"]

        r = run_cli("run", "--config", tiny_config, "--models", "cnn", "--epochs", "1", "--executor", "ray",
                    "--address", f"127.0.0.1:{port}", "--gpus-per-job", "1", "--out", tmp_path / "gpu",
                    env=driver, timeout=300)
        assert r.returncode == 2
        assert "gpus_per_job 1.0: the Ray cluster has 0 GPUs" in r.stderr.strip().splitlines()[-1]
        assert not (tmp_path / "gpu").exists()
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0  # stopped
