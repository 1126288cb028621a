"""What effnet-heatmap's head costs, measured side by side: the full 3x3 conv at stride 4 (width 64,
the default), the same conv depthwise then pointwise (``separable: true``), a narrower head
(``width: 32``) and the separable head reading the trunk's stride-32 stage too (``stages: 6``).

    python benchmarks/head_cost.py [--size 128] [--points 15] [--backbone efficientnet_lite0]
                                   [--threads 2] [--rounds 7]

(300w.yaml's model: ``--size 192 --points 68 --backbone efficientnet_lite2``.)

For each variant (untrained weights: the cost does not depend on them): the batch-1 forward under
ONNX Runtime (as the photo path runs it; median over rounds of 100 calls, the variants
interleaved), one batch-32 training step in PyTorch (Adam, L1 loss; median over rounds of two
steps) and the number of weights; ratios to the default. Needs ``kpbench[onnx]``. Run it on a quiet
machine: a busy one inflates every figure.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from kpbench.plugins import get_plugins
from kpbench.runtime import OnnxModel, to_onnx

VARIANTS = {"default (width 64)": {}, "separable": {"separable": True}, "width 32": {"width": 32},
            "separable, stages 6": {"separable": True, "stages": 6}}


def _ms_per_call(fn, calls: int) -> float:
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) * 1000 / calls


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--points", type=int, default=15)
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    make = get_plugins().models.get("effnet-heatmap").factory
    nets = {name: make(args.points, args.size, 1, weights="none", backbone=args.backbone, **options)
            for name, options in VARIANTS.items()}
    one = torch.rand(1, 1, args.size, args.size)
    batch, target = torch.rand(32, 1, args.size, args.size), torch.rand(32, 2 * args.points)
    graphs = {n: OnnxModel(to_onnx(net.eval(), torch.rand(2, 1, args.size, args.size), n), args.threads)
              for n, net in nets.items()}
    optimizers = {n: torch.optim.Adam(net.parameters()) for n, net in nets.items()}

    def step(name):
        net = nets[name].train()
        optimizers[name].zero_grad()
        (net(batch).reshape(32, -1) - target).abs().mean().backward()
        optimizers[name].step()

    forward = {n: [] for n in nets}
    training = {n: [] for n in nets}
    for n in nets:  # warm-up
        for _ in range(20):
            graphs[n](one)
        step(n)
    for _ in range(args.rounds):  # interleaved, so a change in the machine's load hits every variant
        for n in nets:
            forward[n].append(_ms_per_call(lambda: graphs[n](one), 100))
            training[n].append(_ms_per_call(lambda: step(n), 2) / 1000)
    default = next(iter(VARIANTS))
    base_f, base_t = (statistics.median(d[default]) for d in (forward, training))
    print(f"effnet-heatmap ({args.backbone}, {args.points} points) at {args.size} px, {args.threads} threads, "
          "untrained weights")
    print(f"{'head':<20} {'ORT batch-1 ms':>15} {'ratio':>6} {'train step s':>13} {'ratio':>6} {'weights':>9}")
    for n, net in nets.items():
        f, t = statistics.median(forward[n]), statistics.median(training[n])
        print(f"{n:<20} {f:>15.3f} {f / base_f:>6.2f} {t:>13.3f} {t / base_t:>6.2f} "
              f"{sum(p.numel() for p in net.parameters()):>9}")


if __name__ == "__main__":
    main()
