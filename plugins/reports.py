"""kpbench's own report formats, registered as any plugin's would be (``kpbench_report_writers``):
``csv`` (``leaderboard.csv`` and a CSV per table), ``md`` (Markdown), ``json``
(``leaderboard.json``, strict JSON with the manifest) and ``html`` (``report.html``)."""

from __future__ import annotations

import kpbench
from kpbench import report


@kpbench.hookimpl
def kpbench_report_writers():
    return [
        kpbench.ReportWriterSpec("csv", report.write_csv, "leaderboard.csv and a CSV per table"),
        kpbench.ReportWriterSpec("md", report.write_markdown, "leaderboard.md and a Markdown table per table"),
        kpbench.ReportWriterSpec("json", report.write_json, "leaderboard.json: the manifest and the rows, strict JSON"),
        kpbench.ReportWriterSpec("html", report.write_html, "report.html: tables, figures and notes on one page"),
    ]
