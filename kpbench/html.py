"""A run's report as one self-contained HTML5 page: inline CSS, figures embedded as base64 PNG data
URIs, nothing fetched from anywhere. The output depends only on the arguments (no clock), so
re-rendering a report gives the same bytes."""

from __future__ import annotations

import base64
import html
import math
import numbers
from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd

from kpbench.io import atomic_write_text

CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: #222; margin: 2rem auto;
       max-width: 1100px; padding: 0 1rem; line-height: 1.4; }
h1 { font-size: 1.6rem; margin-bottom: 0.5rem; }
h2 { font-size: 1.2rem; margin-top: 2rem; border-bottom: 1px solid #ddd; padding-bottom: 0.2rem; }
table { border-collapse: collapse; font-size: 0.88rem; margin: 0.5rem 0; }
th, td { padding: 0.25rem 0.6rem; border-bottom: 1px solid #e4e4e4; text-align: left; vertical-align: top; }
th { background: #f4f4f4; font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
table.meta th { background: none; color: #555; font-weight: 600; }
table.board tbody tr:nth-child(even) { background: #fafafa; }
.scroll { overflow-x: auto; }
figure { margin: 1.5rem 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.9rem; margin-top: 0.3rem; }
ul.notes { color: #444; }
""".strip()


def _is_number(v) -> bool:
    return isinstance(v, numbers.Number) and not isinstance(v, bool)


def fmt(v) -> str:
    """A cell's text: floats to 4 significant digits (thousands separators from 1e5 up), ints
    from 10000 up with thousands separators, NaN/None as "-"."""
    if v is None:
        return "-"
    if isinstance(v, numbers.Integral) and not isinstance(v, bool):
        v = int(v)
        return f"{v:,}" if abs(v) >= 10_000 else str(v)
    if isinstance(v, numbers.Real) and not isinstance(v, bool):
        v = float(v)
        if math.isnan(v):
            return "-"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        if abs(v) >= 1e5:
            return f"{v:,.0f}"
        return f"{v:.4g}"
    try:
        if pd.isna(v):
            return "-"
    except (TypeError, ValueError):
        pass
    return str(v)


def _compact(v) -> str:
    """Nested values in one line: ``k=v, k=v`` for mappings, comma-joined sequences."""
    if isinstance(v, Mapping):
        return ", ".join(f"{k}={_compact(x)}" for k, x in v.items())
    if isinstance(v, (list, tuple)):
        return ", ".join(_compact(x) for x in v)
    return fmt(v)


def _cell(tag: str, v, numeric: bool | None = None) -> str:
    numeric = _is_number(v) if numeric is None else numeric
    cls = ' class="num"' if numeric else ""
    return f"<{tag}{cls}>{html.escape(fmt(v) if tag == 'td' else str(v))}</{tag}>"


def meta_table(meta: Mapping) -> str:
    rows = []
    for k, v in meta.items():
        text = _compact(v) if isinstance(v, (Mapping, list, tuple)) else fmt(v)
        rows.append(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(text)}</td></tr>")
    return '<table class="meta">\n' + "\n".join(rows) + "\n</table>" if rows else ""


def leaderboard_table(df: pd.DataFrame) -> str:
    if df is None or df.empty:
        return "<p>No results.</p>"
    numeric = {c: pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c]) for c in df.columns}
    head = "".join(_cell("th", c, numeric[c]) for c in df.columns)
    body = []
    for row in df.itertuples(index=False, name=None):
        body.append("<tr>" + "".join(_cell("td", v, _is_number(v) or (numeric[c] and fmt(v) == "-"))
                                     for c, v in zip(df.columns, row)) + "</tr>")
    return ('<div class="scroll"><table class="board">\n<thead><tr>' + head + "</tr></thead>\n<tbody>\n"
            + "\n".join(body) + "\n</tbody>\n</table></div>")


def _data_uri(image) -> str:
    data = bytes(image) if isinstance(image, (bytes, bytearray)) else Path(image).read_bytes()
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def page(title: str, meta: Mapping, leaderboard: pd.DataFrame, images: Mapping[str, Path],
         notes: Sequence[str] | None = None, tables: Mapping[str, pd.DataFrame] | None = None) -> str:
    """The report page: title, notes, leaderboard, further tables under their headings, each image
    (PNG path or bytes) as a ``<figure>`` captioned with its key, then the run's details (meta).
    Every value is HTML-escaped."""
    t = html.escape(str(title))
    parts = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             f"<title>{t}</title>", f"<style>\n{CSS}\n</style>", "</head>", "<body>", f"<h1>{t}</h1>"]
    if notes:
        parts.append('<ul class="notes">\n' + "\n".join(f"<li>{html.escape(str(n))}</li>" for n in notes) + "\n</ul>")
    parts += ["<h2>Leaderboard</h2>", leaderboard_table(leaderboard)]
    for heading, table in (tables or {}).items():
        parts += [f"<h2>{html.escape(str(heading))}</h2>", leaderboard_table(table)]
    if images:
        parts.append("<h2>Figures</h2>")
        for caption, image in images.items():
            cap = html.escape(str(caption))
            parts.append(f'<figure>\n<img src="{_data_uri(image)}" alt="{cap}">\n<figcaption>{cap}</figcaption>\n'
                         "</figure>")
    if meta:
        parts += ["<h2>Run details</h2>", meta_table(meta)]
    parts += ["</body>", "</html>", ""]
    return "\n".join(parts)


def write(path, text: str) -> Path:
    """Write ``text`` (UTF-8) atomically."""
    atomic_write_text(Path(path), text)
    return Path(path)
