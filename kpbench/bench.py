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
from kpbench.config import Settings
from kpbench.html import fmt
from kpbench.keypoints import get_schema
from kpbench.plugins import Plugins
from kpbench.profile import ORT_LATENCY, branch_report, profile
from kpbench.report import onnx_latency_note


def bench(settings: Settings, plugins: Plugins, console: Console, batch: int = 32) -> list[dict]:
    from kpbench.components import ModelPlan, resolve_device

    device = resolve_device(settings.run.device)
    if settings.run.threads:
        torch.set_num_threads(settings.run.threads)
    schema = get_schema(settings.data.schema)
    models = [ModelPlan.of(settings, m, plugins.models.get(m.split("@")[0], where="--models")) for m in settings.models]
    rows = []
    for m in models:
        torch.manual_seed(0)
        net = m.build(schema.num_points)
        row = {"model": m.label, "input_size": m.input_size,
               **profile(net, m.input_size, device, batch=batch, onnx_latency=settings.eval.onnx_latency),
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
