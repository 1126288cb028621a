"""kpbench's own report formats, registered as any plugin's would be (``kpbench_report_writers``):
``csv`` (``leaderboard.csv`` and a CSV per table), ``md`` (Markdown), ``json``
(``leaderboard.json``, strict JSON with the manifest) and ``html`` (``report.html``)."""

from __future__ import annotations

import kpbench
from kpbench import writers


@kpbench.hookimpl
def kpbench_report_writers():
    return [
        kpbench.ReportWriterSpec("csv", writers.write_csv, "leaderboard.csv and a CSV per table"),
        kpbench.ReportWriterSpec("md", writers.write_markdown, "leaderboard.md and a Markdown table per table"),
        kpbench.ReportWriterSpec("json", writers.write_json, "leaderboard.json: the manifest and the rows, strict JSON"),
        kpbench.ReportWriterSpec("html", writers.write_html, "report.html: tables, figures and notes on one page"),
    ]
