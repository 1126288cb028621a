"""BlazeFace's LiteRT threads on the photo path, side by side: the shipped model behind BlazeFace
with 1 thread and with 2 (or ``--threads``), everything else alike (torch and ONNX Runtime at
``--torch-threads``).

    python benchmarks/detector_threads.py [--dataset ibug:../shared/data/300w-helen-train/trainset]
                                          [--photos 60] [--rounds 5] [--threads 1 2]

The first ``--photos`` photos of the dataset, decoded once; per round and thread count, in turn,
each photo through the Predictor (detect, crop, the model): the median milliseconds of the whole
path and of the detector alone; the median over rounds and the ratio to the first thread count.
Run it on a quiet machine: a busy one favours fewer threads.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from kpbench.components import load_dataset
from kpbench.data import read_image
from kpbench.plugins import get_plugins
from kpbench.predictor import Predictor


def _pass(predictor: Predictor, images: list[np.ndarray]) -> tuple[float, float]:
    """One pass over the images: the median milliseconds of the photo path and of detecting."""
    path, detect = [], []
    for image in images:
        t0 = time.perf_counter()
        found = predictor.detect(image)
        t1 = time.perf_counter()
        predictor.predict_arrays(image, found)
        path.append(time.perf_counter() - t0)
        detect.append(t1 - t0)
    return statistics.median(path) * 1e3, statistics.median(detect) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="ibug:../shared/data/300w-helen-train/trainset", help="KIND:PATH")
    ap.add_argument("--photos", type=int, default=60)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="LiteRT thread counts compared")
    ap.add_argument("--torch-threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.torch_threads)
    plugins = get_plugins()
    data = load_dataset(plugins, args.dataset, {})
    images = [read_image(f) for f in data.files[:args.photos]]
    paths = {n: Predictor(detector="blazeface", detector_options={"threads": n}, plugins=plugins) for n in args.threads}
    for p in paths.values():  # load the models and warm up
        _pass(p, images[:5])
    figures = {n: [] for n in paths}
    for _ in range(args.rounds):
        for n, p in paths.items():
            figures[n].append(_pass(p, images))
    base = statistics.median(f[0] for f in figures[args.threads[0]])
    print(f"{len(images)} photos of {args.dataset}, {args.rounds} interleaved rounds, torch/ONNX Runtime "
          f"{args.torch_threads} threads; ms per photo, median over rounds")
    print(f"{'LiteRT threads':>14}  {'photo path':>10}  {'detect':>7}  {'ratio':>5}")
    for n, f in figures.items():
        total, detect = statistics.median(x[0] for x in f), statistics.median(x[1] for x in f)
        print(f"{n:>14}  {total:>10.2f}  {detect:>7.2f}  {total / base:>5.2f}")


if __name__ == "__main__":
    main()
