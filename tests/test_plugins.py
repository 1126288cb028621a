"""The plugin system as a user meets it: listing, third-party plugins, failures and clashes."""

import json

from conftest import make_dist, readme_plugin_example, run_cli


def test_list_shows_builtins_with_their_plugin():
    r = run_cli("list")
    assert r.returncode == 0, r.stderr
    for name in ("cnn", "integral", "mobilenetv2", "hybrid", "inception", "effnet-lite0", "mean-shape", "synthetic", "mse", "mae", "rmse", "nme",
                 "gt-box"):
        assert f"│ {name} " in r.stdout, name
    assert "kpbench-models" in r.stdout and "kpbench-metrics" in r.stdout
    hybrid_row = next(line for line in r.stdout.splitlines() if "│ hybrid " in line)
    assert "44,930,721" in hybrid_row  # total and trainable parameters are listed per model


def test_list_filters_with_wildcards():
    r = run_cli("list", "models", "mobile*")
    assert r.returncode == 0
    assert "mobilenetv2" in r.stdout and "│ cnn " not in r.stdout and "datasets" not in r.stdout


def test_unknown_model_is_one_line_with_suggestion(tiny_config):
    r = run_cli("run", "--config", tiny_config, "--models", "cnnn")
    assert r.returncode == 2
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and "unknown model 'cnnn'" in err[0] and "did you mean 'cnn'" in err[0]
    assert "mean-shape" in err[0]  # the known names are listed


def test_bad_config_key_names_file_and_line(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("run: {seed: 1}\ntrain:\n  epochz: 3\n")
    r = run_cli("run", "--config", cfg)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1
    assert f"{cfg}:3" in r.stderr and "train.epochz" in r.stderr and "did you mean 'epochs'" in r.stderr


def test_readme_example_plugin_is_listed_and_runs(tmp_path, tiny_config):
    site = make_dist(tmp_path / "site", "kpbench-tiny", {"kpbench_tiny": readme_plugin_example()},
                     {"tiny": "kpbench_tiny"})
    r = run_cli("list", "models", "tiny", pythonpath=site)
    assert r.returncode == 0 and "A one-layer CNN" in r.stdout and "│ tiny " in r.stdout
    out = tmp_path / "run"
    r = run_cli("run", "--config", tiny_config, "--models", "tiny,mean-shape", "--out", out, pythonpath=site)
    assert r.returncode == 0, r.stderr
    rows = json.loads((out / "leaderboard.json").read_text())["rows"]
    tiny = next(row for row in rows if row["model"] == "tiny")
    assert tiny["plugin"] == "tiny" and tiny["params"] > 0 and tiny["nme"] > 0


def test_explicit_plugin_module_and_autoload_switch(tmp_path):
    site = tmp_path / "mods"
    site.mkdir()
    (site / "kpbench_tiny.py").write_text(readme_plugin_example())
    r = run_cli("-p", "kpbench_tiny", "list", "models", "tiny", pythonpath=site)
    assert r.returncode == 0 and "tiny" in r.stdout
    r = run_cli("-p", "no_such_module", "list", pythonpath=site)
    assert r.returncode == 2 and "no_such_module" in r.stderr


def test_broken_plugin_is_named_and_others_keep_working(tmp_path):
    site = make_dist(tmp_path / "site", "kpbench-broken", {"kpbench_broken": "import not_a_real_module\n"},
                     {"broken": "kpbench_broken"})
    r = run_cli("list", "models", pythonpath=site)
    assert r.returncode == 0
    warning = [line for line in r.stderr.splitlines() if "broken" in line]
    assert len(warning) == 1 and "kpbench_broken" in warning[0] and "not_a_real_module" in warning[0]
    assert "│ cnn " in r.stdout
    # The switch turns third-party autoloading off: no warning, built-ins still there.
    r = run_cli("list", "models", pythonpath=site, env={"KPBENCH_DISABLE_PLUGIN_AUTOLOAD": "1"})
    assert r.returncode == 0 and "broken" not in r.stderr and "│ cnn " in r.stdout


def test_two_plugins_with_one_name_is_a_warning_naming_both_and_the_builtin_stays(tmp_path):
    code = readme_plugin_example().replace('"tiny"', '"cnn"')
    site = make_dist(tmp_path / "site", "kpbench-clash", {"kpbench_clash": code}, {"clash": "kpbench_clash"})
    r = run_cli("list", "models", "--json", pythonpath=site)
    assert r.returncode == 0, r.stderr
    assert "model 'cnn' is registered twice" in r.stderr and "'clash'" in r.stderr and "'kpbench-models'" in r.stderr
    (cnn,) = [m for m in json.loads(r.stdout) if m["name"] == "cnn"]
    assert cnn["plugin"] == "kpbench-models"


FIVE = '''
import numpy as np
import kpbench
from kpbench.data import Sample
from kpbench_plugins.synthetic import SyntheticFaces

# the subject's left eye, right eye, nose tip, left and right mouth corners
FIVE = kpbench.Schema("five", ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right"),
                      flip_pairs=((0, 1), (3, 4)), norm_pair=(0, 1), eyes=((1,), (0,)))


class FivePoints:
    schema = "five"

    def __init__(self, path=None, n=200):
        self.faces = SyntheticFaces(n=n, size=48, seed=3)

    def __len__(self):
        return len(self.faces)

    def __getitem__(self, i):
        s = self.faces[i]
        return Sample(s.image, s.points[[0, 1, 10, 11, 12]], s.id, "five")


@kpbench.hookimpl
def kpbench_schemas():
    return [kpbench.SchemaSpec("five", lambda: FIVE, "five points")]


@kpbench.hookimpl
def kpbench_datasets():
    return [kpbench.DatasetSpec("five-faces", FivePoints, "synthetic faces, five points")]
'''


def test_a_plugin_brings_its_own_keypoint_schema_and_a_run_trains_on_it(tmp_path):
    (tmp_path / "kpbench_five.py").write_text(FIVE)
    env = {"KPBENCH_PLUGINS": "kpbench_five"}
    listed = run_cli("list", "schemas", pythonpath=tmp_path, env=env)
    assert listed.returncode == 0 and "five" in listed.stdout and "kpbench_five" in listed.stdout
    cfg = tmp_path / "c.yaml"
    cfg.write_text("run: {name: five}\ndata: {dataset: five-faces, schema: five, input_size: 32}\n"
                   "models: [integral, mean-shape]\nmodel_options: {integral: {width: 8}}\n"
                   "train: {epochs: 6, batch_size: 16, flip: true}\neval: {latency: false, metrics: [nme, fr10]}\n")
    r = run_cli("run", "--config", cfg, "--out", tmp_path / "run", pythonpath=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    import numpy as np

    z = np.load(tmp_path / "run" / "models" / "integral" / "predictions.npz")
    assert z["pred"].shape[1:] == (5, 2) and np.isfinite(z["metric_nme"]).all()
    rows = {row["model"]: row for row in (json.loads(p.read_text()) for p in (tmp_path / "run").glob("models/*/result.json"))}
    assert rows["integral"]["nme"] < rows["mean-shape"]["nme"]  # it learned something in its own layout
    bad = run_cli("run", "--config", cfg, "--out", tmp_path / "run2", "--set", "data.schema=fiv",
                  pythonpath=tmp_path, env=env)
    assert bad.returncode == 2 and "unknown keypoint schema 'fiv'" in bad.stderr and "five" in bad.stderr


def test_list_report_and_compare_as_json(tmp_path, tiny_config):
    listed = run_cli("list", "models", "cas*", "--json")
    assert listed.returncode == 0, listed.stderr
    (model,) = json.loads(listed.stdout)
    assert model["name"] == "cascade" and model["kind"] == "model" and model["params"] == 270_718
    r = run_cli("run", "--config", tiny_config, "--out", tmp_path / "run")
    assert r.returncode == 0, r.stderr
    rows = json.loads(run_cli("report", tmp_path / "run", "--json").stdout)
    assert [row["rank"] for row in rows] == list(range(1, len(rows) + 1)) and "nme" in rows[0]
    both = json.loads(run_cli("report", tmp_path / "run", tmp_path / "run", "--json").stdout)
    assert both and all(row["B - A"] == 0 for row in both)
    bench = run_cli("bench", "--config", tiny_config, "--json")
    assert bench.returncode == 0, bench.stderr
    costs = json.loads(bench.stdout)
    assert {row["model"] for row in costs} == set(yaml_models(tiny_config)) and all(row["latency_ms"] > 0 for row in costs)


def yaml_models(path):
    import yaml

    return yaml.safe_load(open(path))["models"]


WRITER = '''
import kpbench


def write_text(report):
    lines = [report.title] + [f"{r['rank']} {r['model']} {r['nme']:.6f}" for r in report.leaderboard.to_dict("records")]
    lines += [f"table {stem}: {len(df)} rows" for stem, (_, df) in report.tables.items()]
    (report.run_dir / "leaderboard.txt").write_text("\\n".join(lines) + "\\n")


@kpbench.hookimpl
def kpbench_report_writers():
    return [kpbench.ReportWriterSpec("txt", write_text, "the leaderboard as plain text")]
'''


def test_a_plugin_adds_a_report_format_beside_kpbench_own(tmp_path, tiny_config):
    (tmp_path / "kpbench_txt.py").write_text(WRITER)
    env = {"KPBENCH_PLUGINS": "kpbench_txt"}
    listed = run_cli("list", "report-writers", "--json", pythonpath=tmp_path, env=env)
    assert listed.returncode == 0, listed.stderr
    assert {w["name"] for w in json.loads(listed.stdout)} == {"csv", "md", "json", "html", "txt"}
    r = run_cli("run", "--config", tiny_config, "--out", tmp_path / "run", pythonpath=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    text = (tmp_path / "run" / "leaderboard.txt").read_text().splitlines()
    board = json.loads((tmp_path / "run" / "leaderboard.json").read_text())["rows"]
    assert text[1:1 + len(board)] == [f"{row['rank']} {row['model']} {row['nme']:.6f}" for row in board]
    (tmp_path / "run" / "leaderboard.txt").unlink()
    r = run_cli("report", tmp_path / "run", pythonpath=tmp_path, env=env)  # re-rendered from the files
    assert r.returncode == 0 and (tmp_path / "run" / "leaderboard.txt").read_text().splitlines() == text


def test_kpbench_s_model_plugins_load_when_models_are_first_asked_for():
    # Their modules import torch (1-2 s): a command without a PyTorch model must not pay for it, so
    # they give models and nothing else, and load on the first look at the models.
    import importlib
    import os
    import subprocess
    import sys
    from importlib.metadata import entry_points

    from conftest import ROOT
    from kpbench.plugins import DEFERRED

    ours = {ep.name: ep.value for ep in entry_points(group="kpbench") if ep.dist and ep.dist.name == "kpbench"}
    assert DEFERRED <= set(ours)
    for name in DEFERRED:
        module = importlib.import_module(ours[name])
        hooks = {n for n in dir(module) if n.startswith("kpbench_") and callable(getattr(module, n))}
        assert hooks == {"kpbench_models"}, (name, hooks)
    code = ("import sys; from kpbench.plugins import get_plugins; p = get_plugins(); "
            "d = p.detectors.names(); s = p.schemas.names(); before = 'torch' in sys.modules; "
            "m = p.models.names(); print(before, 'gt-box' in d, 'kaggle15' in s, 'effnet-heatmap' in m, 'dlib68' in m, "
            "p.models.get('dlib68').plugin)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["False", "True", "True", "True", "True", "kpbench-dlib"]
