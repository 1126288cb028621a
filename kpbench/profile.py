"""Cost of a model: parameters, GMACs (counted by torch's FLOP counter), batch-1 latency (median
of timed runs after warm-up, under inference mode, as timm's benchmark does, of the network as
kpbench runs a trained one: BatchNorms folded, weights channels-last, :mod:`kpbench.folding`), the same latency
of the model exported to ONNX under ONNX Runtime on the CPU, and throughput."""

from __future__ import annotations

import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from kpbench.folding import ready_to_run


def count_params(model: torch.nn.Module) -> tuple[int, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable


def gmacs(model: torch.nn.Module, input_size: int, in_chans: int = 1) -> float:
    """Multiply-accumulates of one forward pass at batch 1, in billions (FLOPs / 2)."""
    model.eval()
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(torch.zeros(1, in_chans, input_size, input_size))
    return counter.get_total_flops() / 2 / 1e9


def median_seconds(fn, warmup: int, runs: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def latency(model: torch.nn.Module, input_size: int, device="cpu", batch: int = 1, warmup: int = 3,
            runs: int = 10, in_chans: int = 1) -> float:
    """Median seconds of one forward pass on ``batch`` images."""
    model.eval()
    x = torch.rand(batch, in_chans, input_size, input_size, device=device)

    def step():
        model(x)
        if str(device).startswith("cuda"):
            torch.cuda.synchronize()

    with torch.inference_mode():
        return median_seconds(step, warmup, runs)


ORT_LATENCY = "onnxruntime_cpu_latency_ms"  # the column: batch-1 latency under ONNX Runtime on the CPU


def onnxruntime_latency(model: torch.nn.Module, input_size: int) -> float | None:
    """Median seconds of one batch-1 pass of ``model`` (on the CPU) exported to ONNX in memory and
    run by ONNX Runtime on the CPU, timed as :func:`latency` times PyTorch (same input shape,
    threads, warm-up and runs); None when the exporter cannot take the model."""
    from kpbench.errors import KpbenchError
    from kpbench.runtime import onnxruntime_model

    try:
        onnx_model = onnxruntime_model(model, input_size, type(model).__name__)
    except KpbenchError:
        return None
    return latency(onnx_model, input_size)


def profile(model: torch.nn.Module, input_size: int, device="cpu", timing: bool = True, batch: int = 32,
            onnx_latency: str | bool = "auto") -> dict:
    """Parameters and GMACs; with ``timing``, batch-1 latency and throughput on ``device`` (BatchNorms
    folded and channels-last, as a trained model runs) and,
    with ``onnx_latency`` "auto" where onnx and onnxruntime are installed, ONNX Runtime's CPU
    latency (null for a model that cannot be exported)."""
    from kpbench.runtime import available

    total, trainable = count_params(model)
    row = {"params": total, "trainable_params": trainable, "gmacs": round(gmacs(model.cpu(), input_size), 4)}
    with_ort = timing and onnx_latency == "auto" and available()
    ort_s = onnxruntime_latency(model, input_size) if with_ort else None  # while the model is on the CPU
    model.to(device)
    if timing:
        run, _ = ready_to_run(model, torch.rand(1, 1, input_size, input_size, device=device))
        row["latency_ms"] = round(latency(run, input_size, device) * 1000, 3)
        if with_ort:
            row[ORT_LATENCY] = None if ort_s is None else round(ort_s * 1000, 3)
        row["throughput_ips"] = round(batch / latency(run, input_size, device, batch=batch, warmup=1, runs=3), 1)
    return row


def branch_report(net: torch.nn.Module) -> dict:
    """Per-branch parameter counts and learned fusion weights of multi-backbone models (``backbones``
    ModuleDict, optional ``alpha``), e.g. the hybrid's ``params_vgg16`` and ``alpha_vgg16``."""
    branches = getattr(net, "backbones", None)
    if not isinstance(branches, torch.nn.ModuleDict):
        return {}
    out = {f"params_{name}": count_params(b)[0] for name, b in branches.items()}
    alpha = getattr(net, "alpha", None)
    if alpha is not None:
        out.update({f"alpha_{name}": round(float(a), 4) for name, a in zip(branches, alpha.detach().cpu())})
    return out
