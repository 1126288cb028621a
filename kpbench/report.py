"""Leaderboards: one row per model, sorted by a metric, written as CSV, Markdown and JSON and
printed as a rich table. ``kpbench report RUN_DIR`` re-renders them from the saved rows."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.table import Table

from kpbench.errors import KpbenchError
from kpbench.io import atomic_write_json, atomic_write_text

FIRST = ["rank", "model", "plugin"]


def leaderboard(rows: list[dict], sort_by: str, higher_is_better: bool = False) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    if sort_by in df:
        df = df.sort_values(sort_by, ascending=not higher_is_better, na_position="last", kind="stable")
    df.insert(0, "rank", range(1, len(df) + 1))
    return df[[c for c in FIRST if c in df] + [c for c in df.columns if c not in FIRST]].reset_index(drop=True)


def _fmt(v) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "-"
        return f"{v:.4g}" if abs(v) < 1e5 else f"{v:,.0f}"
    if isinstance(v, int) and abs(v) >= 10_000:
        return f"{v:,}"
    return str(v)


def to_markdown(df: pd.DataFrame) -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for rec in df.to_dict("records"):
        lines.append("| " + " | ".join(_fmt(rec[c]) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def write(df: pd.DataFrame, out: Path, meta: dict) -> None:
    out = Path(out)
    atomic_write_text(out / "leaderboard.csv", df.to_csv(index=False, float_format="%.6g"))
    atomic_write_text(out / "leaderboard.md", to_markdown(df))
    atomic_write_json(out / "leaderboard.json", {"meta": meta, "rows": json.loads(df.to_json(orient="records"))})


SHOWN = ["rank", "model", "nme", "rmse", "mae", "mse", "train_loss", "val_loss", "params", "gmacs", "latency_ms",
         "train_s"]


def show(df: pd.DataFrame, title: str, console: Console | None = None) -> None:
    """Print the main columns (all of them are in the files) as a rich table."""
    console = console or Console()
    hidden = ("plugin", "best_epoch", "epochs", "trainable_params", "throughput_ips")
    cols = [c for c in SHOWN if c in df] + [c for c in df if c not in SHOWN and c not in hidden
                                             and not c.startswith("params_")]
    table = Table(title=title, header_style="bold")
    for c in cols:
        table.add_column(c, justify="left" if c == "model" else "right")
    for rec in df.to_dict("records"):
        table.add_row(*(_fmt(rec[c]) for c in cols))
    console.print(table)


def load(run_dir: Path) -> tuple[pd.DataFrame, dict]:
    path = Path(run_dir) / "leaderboard.json"
    if not path.is_file():
        raise KpbenchError(f"{run_dir}: not a kpbench run directory (no leaderboard.json)")
    data = json.loads(path.read_text())
    return pd.DataFrame(data["rows"]), data["meta"]
