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


@pytest.fixture(scope="module")
def kaggle_csv(tmp_path_factory):
    """A Kaggle-shaped training.csv with 7049 rows (the real file's length), random pixels."""
    import numpy as np

    from kpbench.keypoints import KAGGLE15

    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("kaggle") / "training.csv"
    cols = [f"{p}_{a}" for p in KAGGLE15.points for a in "xy"]
    with path.open("w") as f:
        f.write(",".join(cols + ["Image"]) + "\n")
        for _ in range(7049):
            f.write(",".join(["48.0"] * 30) + "," + " ".join(map(str, rng.integers(0, 256, 9216))) + "\n")
    return path


def test_parse_kaggle_csv_vectorised(benchmark, kaggle_csv):
    from kpbench_plugins.datasets import parse_kaggle_csv

    images, points, _ = benchmark.pedantic(parse_kaggle_csv, args=(kaggle_csv,), rounds=3, iterations=1)
    assert images.shape == (7049, 96, 96) and points.shape == (7049, 15, 2)


def test_parse_kaggle_csv_naive_per_row_split(benchmark, kaggle_csv):
    """The baseline the vectorised parser is compared with: one str.split per row."""
    import numpy as np
    import pandas as pd

    def naive(path):
        df = pd.read_csv(path)
        return np.stack([np.array(s.split(), dtype=np.uint8).reshape(96, 96) for s in df["Image"]])

    images = benchmark.pedantic(naive, args=(kaggle_csv,), rounds=1, iterations=1)
    assert images.shape == (7049, 96, 96)
