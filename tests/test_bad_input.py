"""Hostile input, command by command: each case is refused before any work with exit status 2 and
one clear line naming the value (argparse's own errors come after its usage lines), never a
traceback. Cheap: nothing trains, no model is loaded past its checks. A new command gets its
cases here."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from conftest import run_cli

CASES = {
    "run": [
        (["--config", "missing.yaml"], "config file not found: missing.yaml"),
        (["--set", "train.lr=.inf"], "train.lr must be a finite positive number, got inf"),
        (["--set", "train.patience=-1"], "train.patience must be non-negative"),
        (["--seeds", "0,0"], "run.seeds must not repeat a seed"),
        (["--set", "train.lr=[1,"], "the value is not YAML"),
        (["--set", "run.name=\tx: !!python/object:os.system ls"], "the value is not YAML"),
        (["--set", "run.threads=-1"], "run.threads must be at least 1"),
        (["--models", "nosuch"], "unknown model 'nosuch'"),
        (["--set", "train.augment.prob=5"], "train.augment.prob must be in [0, 1], got 5"),
        (["--set", "train.ema=1.5"], "train.ema must be a decay in (0, 1)"),
        (["--set", "run.name=a/../../../escaped"], "run.name must be a plain folder name"),
    ],
    "predict": [
        (["nosuch.jpg"], "nosuch.jpg: no such file, directory or matching glob"),
        (["empty"], "no photos or videos in empty"),
        (["face.jpg", "--runtime", "gpu"], "invalid choice: 'gpu'"),
        (["face.jpg", "--detector", "mtcnn", "--detector-options", "{factor: 1.0}"], "factor"),
        (["face.jpg", "--detector-options", "{margin: .nan}"], "detector option margin: must be a finite number"),
        (["face.jpg", "--out", "afile"], "--out afile: is a file, not a directory"),
        (["face.jpg", "--smooth-options", "{beta: -1}"], "--smooth-options: beta: -1 is not a positive number"),
        (["face.jpg", "--no-smooth", "--smooth-options", "{beta: 1}"], "--smooth-options and --no-smooth contradict"),
    ],
    "evaluate": [
        (["--dataset", "nosuch:path"], "unknown dataset 'nosuch'"),
        (["--dataset-options", "{a: 1}"], "--dataset-options needs --dataset"),
        (["--detector-options", "{margin: 0.1}"], "--detector-options needs --detector"),
    ],
    "export": [
        (["--out", "x.txt"], "give a file name ending in .onnx"),
        (["--out", "x.onnx", "--threads", "-1"], "--threads: must be at least 1, got -1"),
    ],
    "calibrate": [(["--limit", "-5"], "--limit: must be at least 0, got -5")],
    "bench": [(["--batch", "0"], "--batch: must be at least 1, got 0")],
    "report": [(["nosuch_run"], "nosuch_run: not a kpbench run directory")],
    "list": [(["nosuch"], "unknown kind 'nosuch'")],
}


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    """A folder with a photo, an empty folder and a plain file, the commands' working folder."""
    root = tmp_path_factory.mktemp("hostile")
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(root / "face.jpg")
    (root / "empty").mkdir()
    (root / "afile").write_text("x")
    return root


@pytest.mark.parametrize("command, args, says", [(c, a, s) for c, cases in CASES.items() for a, s in cases],
                         ids=lambda v: v if isinstance(v, str) and " " not in v else None)
def test_hostile_input_is_one_clear_line(scratch, command, args, says):
    r = run_cli(command, *args, cwd=scratch, timeout=120)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and lines and says in lines[-1], r.stderr
    assert lines[-1].startswith("kpbench"), lines[-1]
    assert not any(p.name not in ("face.jpg", "empty", "afile") for p in scratch.iterdir())  # nothing written


def test_predict_into_a_folder_a_killed_predict_left_only_temporary_files_in(tmp_path):
    """kill -9 during a video leaves a hidden ``.NAME.XXXX.tmp``: that folder is not the user's
    files, so the next ``predict`` into it cleans it and runs; a folder with anything else is refused."""
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "face.jpg")
    out = tmp_path / "out"
    out.mkdir()
    (out / ".clip.mp4.k2j4x9.tmp").write_bytes(b"half a video")
    r = run_cli("predict", tmp_path / "face.jpg", "--out", out, "--detector", "none", "--no-overlay", timeout=300)
    assert r.returncode == 0, r.stderr
    assert not (out / ".clip.mp4.k2j4x9.tmp").exists() and (out / "predictions.json").is_file()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / ".notes.tmp").write_text("a user's file")  # not the pattern of kpbench's temporary files
    r = run_cli("predict", tmp_path / "face.jpg", "--out", mine, "--detector", "none", timeout=120)
    assert r.returncode == 2 and "it is not empty" in r.stderr and (mine / ".notes.tmp").read_text() == "a user's file"


def test_folder68_says_which_rows_hold_nan_and_refuses_infinite_coordinates(tmp_path, capfd):
    from kpbench.plugins import get_plugins

    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "a_01.jpg")
    row = ["a_01.jpg"] + ["10.0"] * 136
    (tmp_path / "k.csv").write_text(",".join(row) + "\n" + ",".join(row[:1] + ["nan"] + row[2:]) + "\n")
    factory = get_plugins().datasets.get("folder68").factory
    data = factory(str(tmp_path))
    assert len(data) == 2 and np.isnan(data[1].points[0, 0])
    assert "1 row(s) have nan coordinates, read as missing points (first at line 2)" in capfd.readouterr().err
    (tmp_path / "k.csv").write_text(",".join(row[:1] + ["inf"] + row[2:]) + "\n")
    with pytest.raises(Exception, match=r"k.csv:1: coordinates must be finite numbers"):
        factory(str(tmp_path))
