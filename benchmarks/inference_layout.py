"""What PyTorch runs of a trained model, timed side by side: the network as trained, its BatchNorms
folded, and folded with its weights channels-last (what :func:`kpbench.folding.ready_to_run` gives
and a Predictor, ``kpbench evaluate`` and the leaderboard's ``latency_ms`` run):

    python benchmarks/inference_layout.py [--model RUN] [--threads 2] [--rounds 10]

Each round times every variant (the median of 20 batch-1 forward passes after 3 warm-ups, as
:func:`kpbench.profile.latency`) one after the other, so a busy moment slows all of them; printed
per variant: the median over the rounds (and their range), its ratio to the network as trained,
the largest difference of its output from the network's on a random crop, and one batch-32 pass."""

from __future__ import annotations

import argparse
import platform
import statistics

import torch

from kpbench.folding import fold_batch_norms, ready_to_run
from kpbench.plugins import get_plugins
from kpbench.predictor import SHIPPED
from kpbench.profile import median_seconds
from kpbench.trained import locate_trained, trained_network


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(SHIPPED))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=10)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    found = locate_trained(args.model, get_plugins())
    size = found.plan.input_size
    net = trained_network(found).eval()
    example = torch.rand(1, 1, size, size, generator=torch.Generator().manual_seed(0))
    variants = {"as trained": net, "BatchNorms folded": fold_batch_norms(net, example)[0],
                "folded, weights channels-last": ready_to_run(net, example)[0]}
    x, batch = torch.rand(1, 1, size, size), torch.rand(32, 1, size, size)
    times = {name: [] for name in variants}
    with torch.inference_mode():
        for _ in range(args.rounds):
            for name, run in variants.items():
                times[name].append(median_seconds(lambda: run(x), 3, 20))
        base = statistics.median(times["as trained"])
        print(f"{found.label} at {size} px; torch {torch.__version__}, {args.threads} threads, "
              f"{platform.processor() or platform.machine()}; {args.rounds} rounds")
        print(f"{'variant':32s} {'batch-1 ms':>10s} {'(range)':>15s} {'ratio':>6s} {'max diff':>9s} {'batch-32 ms':>11s}")
        for name, run in variants.items():
            t = times[name]
            diff = float((run(x) - net(x)).abs().max())
            b32 = median_seconds(lambda: run(batch), 1, 3)
            print(f"{name:32s} {1000 * statistics.median(t):10.2f} {1000 * min(t):7.2f}-{1000 * max(t):<7.2f} "
                  f"{statistics.median(t) / base:6.2f} {diff:9.1e} {1000 * b32:11.1f}")


if __name__ == "__main__":
    main()
