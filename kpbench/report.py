"""The one report path: a run directory's saved rows and per-image predictions -> the leaderboard
(one row per model, sorted by a metric; mean and std across seeds when there are several),
written as CSV, Markdown and JSON, and printed as a rich table. ``kpbench run`` ends by calling
:func:`render`, and ``kpbench report RUN_DIR`` calls it again, so both give the same files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import yaml
from rich.console import Console
from rich.table import Table

from kpbench.errors import KpbenchError
from kpbench.io import atomic_write_json, atomic_write_text

FIRST = ["rank", "model", "plugin"]


def across_seeds(rows: list[dict], spread: tuple[str, ...]) -> list[dict]:
    """One row per model: numeric columns averaged over its seeds, ``<col>_std`` (sample std)
    beside the ``spread`` columns, ``seeds`` the number of runs. Single-seed rows pass through."""
    df = pd.DataFrame(rows)
    if df.empty or "seed" not in df or df.groupby("model", sort=False).size().max() == 1:
        return rows
    out = []
    for _, g in df.groupby("model", sort=False):
        row = g.iloc[0].to_dict()
        for col in g.columns:
            if col not in ("seed", "model") and pd.api.types.is_numeric_dtype(g[col]):
                row[col] = float(g[col].mean())
                if col in spread:
                    row[f"{col}_std"] = float(g[col].std(ddof=1)) if len(g) > 1 else float("nan")
        row["seed"] = ",".join(str(v) for v in g["seed"])
        row["seeds"] = len(g)
        out.append(row)
    return out


def leaderboard(rows: list[dict], sort_by: str, higher_is_better: bool = False,
                spread: tuple[str, ...] = ()) -> pd.DataFrame:
    df = pd.DataFrame(across_seeds(rows, spread))
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


def model_dir(run_dir: Path, label: str, seed: int, seeds: list[int]) -> Path:
    """Where a model's files go: ``models/<label>``, or ``models/<label>/seed<k>`` with several seeds."""
    return Path(run_dir) / "models" / label if len(seeds) == 1 else Path(run_dir) / "models" / label / f"seed{seed}"


def collect(run_dir: Path) -> tuple[dict, dict, list[tuple[Path, dict]]]:
    """A run's config, manifest and (model directory, result row) of every finished model, in
    the config's order."""
    run_dir = Path(run_dir)
    if not (run_dir / "manifest.json").is_file() or not (run_dir / "config.yaml").is_file():
        raise KpbenchError(f"{run_dir}: not a kpbench run directory (no manifest.json and config.yaml)")
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    meta = json.loads((run_dir / "manifest.json").read_text())
    seeds = list(config["run"].get("seeds") or [config["run"]["seed"]])
    found = []
    for label in config["models"]:
        for seed in seeds:
            mdir = model_dir(run_dir, label, seed, seeds)
            if (mdir / "result.json").is_file():
                found.append((mdir, json.loads((mdir / "result.json").read_text())))
    if not found:
        raise KpbenchError(f"{run_dir}: no finished model in this run yet")
    return config, meta, found


def render(run_dir: Path, console: Console | None = None) -> pd.DataFrame:
    """Build the leaderboard of a run directory from its saved files, write every report, print
    the table. Deterministic: rendering twice writes the same bytes."""
    run_dir = Path(run_dir)
    config, meta, found = collect(run_dir)
    ec = config["eval"]
    sort = meta.get("sort", {"metric": ec["sort_by"], "higher_is_better": False})
    rows = [row for _, row in found]
    df = leaderboard(rows, sort["metric"], sort["higher_is_better"], spread=tuple(ec["metrics"]) + LOSSES)
    write(df, run_dir, meta)
    splits = meta.get("splits", {})
    show(df, f"kpbench leaderboard — {meta.get('dataset')} test split ({splits.get('test', '?')} faces), "
             f"{meta.get('device')}", console)
    return df


LOSSES = ("train_loss", "val_loss")
