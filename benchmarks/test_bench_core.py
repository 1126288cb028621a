"""Speed figures (not pass/fail timings): `.venv/bin/python -m pytest benchmarks` prints them."""

import pytest
import torch

from kpbench.plugins import get_plugins
from kpbench_plugins.synthetic import render


def test_render_synthetic_face_64px(benchmark):
    image, points = benchmark(render, 0, 7, 64)
    assert image.shape == (64, 64) and points.shape == (15, 2)


@pytest.mark.parametrize("name", ["cnn", "integral", "resnet10t"])
def test_batch1_forward_64px(benchmark, name):
    torch.manual_seed(0)
    net = get_plugins().models.get(name).factory(15, 64, 1).eval()
    x = torch.rand(1, 1, 64, 64)
    with torch.inference_mode():
        out = benchmark(net, x)
    assert out.shape == (1, 30)
