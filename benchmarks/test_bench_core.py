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
    """A Kaggle-shaped training.csv: 7049 rows (the real file's length), 2/3 of them with only 4 of
    15 points, as there; pixels are 64 random rows repeated (the parse does not care), 233 MB."""
    import numpy as np

    from kpbench.keypoints import KAGGLE15

    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("kaggle") / "training.csv"
    cols = [f"{p}_{a}" for p in KAGGLE15.points for a in "xy"]
    pixels = [" ".join(map(str, rng.integers(0, 256, 9216))) for _ in range(64)]
    full, partial = ",".join(["48.0123"] * 30), ",".join(["48.0"] * 8 + [""] * 22)
    with path.open("w") as f:
        f.write(",".join(cols + ["Image"]) + "\n")
        f.writelines(f"{full if i % 3 else partial},{pixels[i % 64]}\n" for i in range(7049))
    return path


def test_parse_kaggle_csv(benchmark, kaggle_csv):
    """kpbench's parser (median of 3) against the naive one, timed once in the same process:
    pandas.read_csv, then one str.split per row."""
    import time

    import numpy as np
    import pandas as pd

    from kpbench_plugins.datasets import parse_kaggle_csv

    start = time.perf_counter()
    df = pd.read_csv(kaggle_csv)
    naive = np.stack([np.array(s.split(), dtype=np.uint8).reshape(96, 96) for s in df["Image"]])
    naive_s = time.perf_counter() - start
    images, points, _ = benchmark.pedantic(parse_kaggle_csv, args=(kaggle_csv,), rounds=3, iterations=1)
    np.testing.assert_array_equal(images, naive)
    assert points.shape == (7049, 15, 2)
    median = benchmark.stats.stats.median
    benchmark.extra_info.update(naive_s=round(naive_s, 2), parse_s=round(median, 2), speedup=round(naive_s / median, 1))
    print(f"\nKaggle CSV 7049 rows: kpbench {median:.2f} s, naive per-row split {naive_s:.2f} s, {naive_s / median:.1f}x")


def _helen_photos(n=40):
    from pathlib import Path

    root = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "300w-helen-train" / "trainset"
    return sorted(root.glob("*.jpg"))[:n] if root.is_dir() else []


@pytest.mark.skipif(not _helen_photos(), reason="shared HELEN photos (../shared/data) not present")
def test_predict_per_photo_vs_detector_plus_model(tmp_path):
    """`kpbench predict`'s per-photo cost (read, MTCNN, crops, model, JSON, overlay JPEG) against its
    floor, MTCNN's detect_all plus the model's forward on the same faces, measured side by side in
    this process on the same 40 HELEN photos (best of 3 passes each). Target: ratio <= 1.3."""
    import time

    import numpy as np
    from kpbench.data import crop_resize, read_image, to_gray
    from kpbench.photos import predict_photos
    from kpbench.predictor import Predictor
    from kpbench.regressor import Regressor
    from kpbench.components import CropConvention
    from kpbench.keypoints import KAGGLE15
    from kpbench.trained import Trained

    torch.manual_seed(0)
    net = get_plugins().models.get("integral").factory(15, 96, 1)
    model = Regressor(net, torch.full((15, 2), 0.5)).eval()
    model.flip_test = list(range(15))
    trained = Trained(model, "integral", 96, KAGGLE15, CropConvention("gt-box", {}, 0.15), None, tmp_path, tmp_path)
    predictor = Predictor.from_trained(trained, detector="mtcnn", runtime="torch")
    det = predictor.detector
    photos = _helen_photos()
    images = [read_image(p) for p in photos]
    det.detect_all(images[0])  # build MTCNN outside the timings

    def floor():
        for image in images:
            faces = det.detect_all(image)
            if faces:
                gray = to_gray(image)
                crops = np.stack([crop_resize(gray, f["box"], 96) for f in faces])[:, None]
                with torch.inference_mode():
                    model(torch.from_numpy(crops.astype(np.float32)))

    def full(k):
        predict_photos(predictor, photos, tmp_path / f"out{k}")

    floor_s, full_s = [], []
    for k in range(3):
        t = time.perf_counter()
        floor()
        floor_s.append(time.perf_counter() - t)
        t = time.perf_counter()
        full(k)
        full_s.append(time.perf_counter() - t)
    a, b = min(floor_s) / len(photos) * 1000, min(full_s) / len(photos) * 1000
    print(f"\npredict per photo {b:.1f} ms; MTCNN + model forward {a:.1f} ms; ratio {b / a:.2f} "
          f"({len(photos)} HELEN photos, {torch.get_num_threads()} threads)")
    assert len(list((tmp_path / "out0").glob("*.json"))) == len(photos) + 1
