"""What the ONNX Runtime latency column (``eval.onnx_latency``) adds to a run: ``profile()`` of the
default benchmark's three models with and without it (`.venv/bin/python -m pytest
benchmarks/test_bench_onnx.py` prints both; imports are paid in the warm-up round)."""

from pathlib import Path

import pytest

from kpbench import config as cfgmod
from kpbench.keypoints import get_schema
from kpbench.plugins import get_plugins
from kpbench.profile import ORT_LATENCY, profile
from kpbench.components import ModelPlan


@pytest.mark.parametrize("onnx_latency", ["auto", False])
def test_profile_the_default_runs_models(benchmark, onnx_latency):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    settings = cfgmod.Settings.from_dict(cfgmod.load(Path(__file__).parents[1] / "configs" / "default.yaml"))
    plugins, k = get_plugins(), get_schema(settings.data.schema).num_points
    nets = []
    for label in settings.models:
        m = ModelPlan.of(settings, label, plugins.models.get(label))
        nets.append((m.build(k), m.input_size))
    rows = benchmark.pedantic(lambda: [profile(net, size, onnx_latency=onnx_latency) for net, size in nets],
                              rounds=5, iterations=1, warmup_rounds=1)
    assert all((ORT_LATENCY in row) == (onnx_latency == "auto") for row in rows)
