"""``kpbench bench``: the cost columns of the leaderboard (parameters, per-branch parameters,
GMACs, batch-1 latency in PyTorch and under ONNX Runtime, throughput) for models as configured,
without training."""

from __future__ import annotations

import platform

import pandas as pd
import torch
from rich.console import Console
from rich.table import Table

import kpbench
from kpbench.html import fmt
from kpbench.keypoints import get_schema
from kpbench.plugins import Plugins
from kpbench.profile import ORT_LATENCY, profile
from kpbench.report import onnx_latency_note


def bench(config: dict, plugins: Plugins, console: Console, batch: int = 32) -> list[dict]:
    from kpbench.components import call_factory, model_settings, resolve_device
    from kpbench.runner import branch_report

    device = resolve_device(config["run"]["device"])
    if config["run"]["threads"]:
        torch.set_num_threads(config["run"]["threads"])
    schema = get_schema(config["data"]["schema"])
    specs = [(m, plugins.models.get(m.split("@")[0], where="--models")) for m in config["models"]]
    rows = []
    for label, spec in specs:
        options, size, _ = model_settings(config, label, spec)
        torch.manual_seed(0)
        net = call_factory(spec.factory, f"model {label!r}", schema.num_points, size, 1, **options)
        row = {"model": label, "input_size": size,
               **profile(net, size, device, batch=batch, onnx_latency=config["eval"]["onnx_latency"]),
               **branch_report(net)}
        rows.append(row)
    cols = ["model", "input_size", "params", "trainable_params", "gmacs", "latency_ms", ORT_LATENCY, "throughput_ips"]
    cols = [c for c in cols if any(c in r for r in rows)]
    cols += sorted({k for r in rows for k in r if k.startswith("params_")})
    table = Table(title=f"kpbench bench — {device}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
                        f"kpbench {kpbench.__version__}, {platform.processor() or platform.machine()}",
                  header_style="bold")
    for c in cols:
        table.add_column(c.replace("throughput_ips", f"img/s (batch {batch})"), justify="left" if c == "model" else "right")
    for r in rows:
        table.add_row(*(fmt(r.get(c)) for c in cols))
    console.print(table)
    console.print("latency: median of 10 timed batch-1 forward passes after 3 warm-up passes, under inference mode")
    note = onnx_latency_note(pd.DataFrame(rows))
    if note:
        console.print(note)
    return rows
