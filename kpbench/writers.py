"""kpbench's own report formats: what a report writer gets (:class:`Report`) and the four
writers ``kpbench_plugins.reports`` registers (CSV, Markdown, JSON, HTML). Light to import: a
command that only predicts loads the plugins, and with them this module, but not the report."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from kpbench.rundir import RunDir

if TYPE_CHECKING:
    import pandas as pd


def to_markdown(df: pd.DataFrame) -> str:
    """A DataFrame as a Markdown table, every value as the report prints it."""
    from kpbench.html import fmt

    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for rec in df.to_dict("records"):
        lines.append("| " + " | ".join(fmt(rec[c]) for c in cols) + " |")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Report:
    """What a report writer (:class:`kpbench.ReportWriterSpec`) gets: the run folder, the
    leaderboard and its other tables (``tables``: file stem -> (title, DataFrame), e.g.
    ``leaderboard_by_source``), the run's manifest, the figures already drawn under ``plots/``
    (title -> file), the notes under the table and ``partial`` (the notice of an unfinished run)."""

    run_dir: Path
    title: str
    meta: dict
    leaderboard: pd.DataFrame
    tables: dict[str, tuple[str, pd.DataFrame]]
    figures: dict[str, Path]
    notes: list[str]
    partial: str | None = None


def write_csv(report: Report) -> None:
    """``leaderboard.csv`` and a CSV per table."""
    rd = RunDir(report.run_dir)
    for stem, df in (("leaderboard", report.leaderboard), *((k, t[1]) for k, t in report.tables.items())):
        rd.write_text(f"{stem}.csv", df.to_csv(index=False, float_format="%.6g"))


def write_markdown(report: Report) -> None:
    """``leaderboard.md`` (the partial-run notice first) and a Markdown table per table."""
    rd = RunDir(report.run_dir)
    rd.write_text("leaderboard.md", (f"**{report.partial}**\n\n" if report.partial else "") + to_markdown(report.leaderboard))
    for stem, (_, df) in report.tables.items():
        rd.write_text(f"{stem}.md", to_markdown(df))


def write_json(report: Report) -> None:
    """``leaderboard.json``: the manifest, the partial notice and the rows, strict JSON."""
    RunDir(report.run_dir).write_json("leaderboard.json", {
        "meta": report.meta, "partial": report.partial, "rows": json.loads(report.leaderboard.to_json(orient="records"))})


def write_html(report: Report) -> None:
    """``report.html``: one self-contained page with the tables, figures and notes."""
    from kpbench import html

    html.write(report.run_dir / "report.html", html.page(report.title, report.meta, report.leaderboard, report.figures,
                                                         report.notes, {t: df for t, df in report.tables.values()}))
