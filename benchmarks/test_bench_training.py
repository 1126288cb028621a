"""Training-side figures: the data pipeline per batch, one training step per model, the frozen
phase from cached features vs recomputing the backbone, and kpbench's forward against the raw
timm backbone + head. Run with `.venv/bin/python -m pytest benchmarks`; the ratios are printed and
stored in the benchmark JSON (extra_info)."""

import statistics

import pytest
import torch

from kpbench.augment import affine_batch
from kpbench.keypoints import KAGGLE15
from kpbench.plugins import get_plugins
from kpbench.profile import median_seconds
from kpbench.regressor import Regressor
from kpbench.train import erase_batch, flip_batch, masked_mse

SIZE = 96


def test_data_pipeline_per_batch_of_32(benchmark):
    """Flip + affine + photometric + erasing on one batch of 32 crops, all vectorised."""
    gen = torch.Generator().manual_seed(0)
    x, y = torch.rand(32, 1, SIZE, SIZE), torch.rand(32, 15, 2)
    perm = list(KAGGLE15.flip_permutation)

    def pipeline():
        a, b = flip_batch(x, y, torch.rand(32, generator=gen) < 0.5, perm)
        a, b = affine_batch(a, b, gen, rotate=15, scale=0.1, translate=0.05, brightness=0.2, contrast=0.2)
        return erase_batch(a, 0.5, gen), b

    out, _ = benchmark(pipeline)
    assert out.shape == x.shape


@pytest.mark.parametrize("name, batch", [("cnn", 32), ("gan", 32), ("integral", 32), ("mobilenetv2", 32),
                                         ("inception", 8), ("hybrid", 4)])
def test_training_step(benchmark, name, batch):
    """One Adam step on a batch at 96 px, channels-last as the training loop runs it."""
    torch.manual_seed(0)
    net = get_plugins().models.get(name).factory(15, SIZE, 1)
    model = Regressor(net, torch.full((15, 2), 0.5)).use_channels_last().train()
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    x, y = torch.rand(batch, 1, SIZE, SIZE), torch.rand(batch, 15, 2)

    def step():
        pred = model(x)
        loss = masked_mse(pred, y) + (net.auxiliary_loss(pred, y) if hasattr(net, "auxiliary_loss") else 0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    benchmark.pedantic(step, rounds=3, iterations=1, warmup_rounds=1)
    benchmark.extra_info["ms_per_image"] = round(benchmark.stats.stats.min / batch * 1000, 2)


def _median(fn, runs=5):
    return median_seconds(fn, warmup=1, runs=runs)


def test_frozen_phase_epoch_cached_vs_recomputed(benchmark):
    """One frozen-phase epoch of mobilenetv2's head over 256 crops: from cached features vs
    recomputing the frozen backbone for every batch. Target: >= 20x."""
    torch.manual_seed(0)
    net = get_plugins().models.get("mobilenetv2").factory(15, SIZE, 1)
    model = Regressor(net, torch.full((15, 2), 0.5))
    net.backbone.requires_grad_(False)
    model.train()
    net.backbone.eval()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], 1e-3)
    images, targets = torch.rand(256, 1, SIZE, SIZE), torch.rand(256, 15, 2)
    with torch.inference_mode():
        feats = torch.cat([net.frozen_features(images[i:i + 64]) for i in range(0, 256, 64)])

    def epoch(cached: bool):
        for i in range(0, 256, 32):
            pred = model.from_features(feats[i:i + 32].clone()) if cached else model(images[i:i + 32])
            loss = masked_mse(pred, targets[i:i + 32])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    recomputed = _median(lambda: epoch(False), runs=3)
    benchmark.pedantic(epoch, args=(True,), rounds=10, iterations=1, warmup_rounds=1)
    cached = benchmark.stats.stats.median
    ratio = recomputed / cached
    benchmark.extra_info.update(recomputed_s=round(recomputed, 4), cached_s=round(cached, 5), speedup=round(ratio, 1))
    print(f"\nfrozen-phase epoch (256 crops, 96 px, mobilenetv2): recomputed {recomputed:.3f} s, "
          f"cached {cached * 1000:.2f} ms, speedup {ratio:.0f}x (target >= 20x)")
    assert ratio > 1


def test_frozen_stages_training_step(benchmark):
    """One batch-32 Adam step of effnet-heatmap at 128 px (``wild.yaml``'s model and input) with
    ``train.frozen_stages`` 0, 1 and 2, the three timed in turn over five rounds: the seconds and
    the ratio to training every stage."""
    from kpbench.regressor import frozen_norms_to_eval, set_trainable

    x, y, times = torch.rand(32, 1, 128, 128), torch.rand(32, 15, 2), {}
    steps, trainable = {}, {}
    for stages in (0, 1, 2):
        torch.manual_seed(0)
        net = get_plugins().models.get("effnet-heatmap").factory(15, 128, 1, weights="none")
        model = Regressor(net, torch.full((15, 2), 0.5)).use_channels_last().train()
        set_trainable(net, False, "all", stages)
        frozen_norms_to_eval(net)
        trainable[stages] = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.Adam(trainable[stages], 1e-3)

        def step(model=model, opt=opt):
            loss = masked_mse(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        steps[stages], times[stages] = step, []
        step()  # warm-up
    for _ in range(5):
        for stages, step in steps.items():
            times[stages].append(_median(step, runs=1))
    median = {k: statistics.median(v) for k, v in times.items()}
    benchmark.pedantic(steps[0], rounds=1, iterations=1)
    benchmark.extra_info.update({f"frozen_stages_{k}_s": round(v, 3) for k, v in median.items()})
    print("\neffnet-heatmap batch-32 training step at 128 px: " + ", ".join(
        f"frozen_stages {k} {v:.3f} s ({v / median[0]:.2f}x)" for k, v in median.items()))
    assert len(trainable[0]) > len(trainable[1]) > len(trainable[2])  # each stage more frozen


def test_mobilenetv2_forward_overhead_vs_raw_timm(benchmark):
    """kpbench's mobilenetv2 (gray -> 3 channels, normalization, head, mean shape) at batch 1 vs
    the raw timm backbone + linear head on a prepared 3-channel input. Target: <= 1.05x."""
    import timm

    torch.manual_seed(0)
    net = get_plugins().models.get("mobilenetv2").factory(15, SIZE, 1)
    model = Regressor(net, torch.full((15, 2), 0.5)).eval()
    raw = timm.create_model("mobilenetv2_100", num_classes=0).eval()
    raw.load_state_dict(net.backbone.state_dict())
    head = torch.nn.Linear(raw.num_features, 30).eval()
    x1, x3 = torch.rand(1, 1, SIZE, SIZE), torch.rand(1, 3, SIZE, SIZE)
    with torch.inference_mode():
        def ours():
            return model(x1)

        def theirs():
            return head(raw(x3))

        # interleaved medians, so both see the same machine load
        pairs = [(_median(ours, 10), _median(theirs, 10)) for _ in range(3)]
        benchmark.pedantic(ours, rounds=20, iterations=1, warmup_rounds=2)
    ratio = statistics.median(a / b for a, b in pairs)
    benchmark.extra_info["ratio_vs_raw_timm"] = round(ratio, 3)
    print(f"\nmobilenetv2 batch-1 forward: kpbench / raw timm + head = {ratio:.3f} (target <= 1.05)")
    assert ratio > 0


@pytest.mark.parametrize("name", ["cnn", "gan", "integral", "mobilenetv2", "inception", "effnet-lite0", "hybrid"])
def test_batch1_forward_96px(benchmark, name):
    torch.manual_seed(0)
    net = get_plugins().models.get(name).factory(15, SIZE, 1).eval()
    x = torch.rand(1, 1, SIZE, SIZE)
    with torch.inference_mode():
        out = benchmark.pedantic(net, args=(x,), rounds=10, iterations=1, warmup_rounds=2)
    assert out.shape == (1, 30)
