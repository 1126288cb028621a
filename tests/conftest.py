import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

TINY_CONFIG = """
run: {name: tiny, seed: 0}
data:
  dataset: synthetic
  options: {n: 60, size: 32, seed: 3}
  input_size: 32
models: [cnn, mean-shape]
model_options: {cnn: {width: 4}}
train: {epochs: 1, batch_size: 16}
eval: {latency: false}
"""


def make_dist(root: Path, dist: str, modules: dict[str, str], entry_points: dict[str, str]) -> Path:
    """Install a plugin the way pip would, minus pip: modules plus a .dist-info with entry points."""
    root.mkdir(parents=True, exist_ok=True)
    for name, code in modules.items():
        (root / f"{name}.py").write_text(code)
    info = root / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    lines = "".join(f"{k} = {v}\n" for k, v in entry_points.items())
    (info / "entry_points.txt").write_text(f"[kpbench]\n{lines}")
    return root


def run_cli(*args, cwd=None, pythonpath=None, env=None, timeout=600):
    e = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    if pythonpath:
        e["PYTHONPATH"] = os.pathsep.join([str(pythonpath), e.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-m", "kpbench", *map(str, args)], cwd=cwd or ROOT, env=e,
                          capture_output=True, text=True, timeout=timeout)


def readme_plugin_example() -> str:
    text = (ROOT / "README.md").read_text()
    m = re.search(r"<!-- plugin-example -->\s*```python\n(.*?)```", text, re.S)
    assert m, "README.md lost its plugin example"
    return m.group(1)


@pytest.fixture
def tiny_config(tmp_path) -> Path:
    p = tmp_path / "tiny.yaml"
    p.write_text(TINY_CONFIG)
    return p


@pytest.fixture(autouse=True, scope="session")
def _private_box_cache(tmp_path_factory):
    """Detector boxes (kpbench.boxcache) go to a temporary cache, never the user's."""
    os.environ["KPBENCH_CACHE_DIR"] = str(tmp_path_factory.mktemp("kpbench-cache"))
