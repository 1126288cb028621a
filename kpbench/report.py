"""The one report path: a run directory's saved rows and per-image predictions -> the leaderboard
(one row per model, sorted by a metric; mean and std across seeds when there are several),
written as CSV, Markdown and JSON, and printed as a rich table. ``kpbench run`` ends by calling
:func:`render`, and ``kpbench report RUN_DIR`` calls it again, so both give the same files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

from kpbench import stats
from kpbench.config import Settings
from kpbench.formulas import aggregate, point_errors
from kpbench.writers import Report
from kpbench.html import fmt as _fmt
from kpbench.errors import KpbenchError
from kpbench.keypoints import get_schema
from kpbench.log import log
from kpbench.profile import ORT_LATENCY
from kpbench.rundir import RunDir, seeds_of

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


COSTS = ["train_loss", "val_loss", "params", "trainable_params", "gmacs", "latency_ms", ORT_LATENCY, "miss_rate",
         "train_s"]


def onnx_latency_note(df: pd.DataFrame) -> str | None:
    """What the ONNX Runtime latency column is, and why a model has none."""
    if ORT_LATENCY not in df:
        return None
    note = (f"{ORT_LATENCY}: batch-1 latency of the model exported to ONNX (in memory, as kpbench export does) under "
            f"ONNX Runtime on the CPU, timed as latency_ms (same input shape and threads, median after warm-up).")
    empty = list(df.loc[df[ORT_LATENCY].isna(), "model"])
    if empty:
        note += (f" Empty for {', '.join(empty)}: torch's ONNX exporter cannot take the model (kpbench export "
                 f"prints the exporter's error).")
    return note


def show(df: pd.DataFrame, title: str, console: Console | None = None, metrics: list[str] | None = None) -> None:
    """Print the main columns as a rich table (the files have all of them): the metrics with the
    first one's spread, CI and significance, then losses and costs."""
    console = console or Console()
    metrics = metrics or [c for c in ("nme", "rmse", "mae", "mse") if c in df]
    first = metrics[0] if metrics else None
    cols = ["rank", "model"]
    for m in metrics:
        cols.append(m)
        cols += [c for c in (f"{m}_std",) if c in df]
        if m == first:
            cols += [c for c in (f"{m}_lo", f"{m}_hi", "sig") if c in df]
    cols += [c for c in df if "@" in c]  # the other face-box paths (eval.detectors)
    same = "trainable_params" in df and (df["trainable_params"] == df["params"]).all()
    cols += [c for c in COSTS if c in df and not (c == "trainable_params" and same)]
    _print_table(df, [c for c in cols if c in df], title, console)


def _print_table(df: pd.DataFrame, cols: list[str], title: str, console: Console) -> None:
    table = Table(title=title, header_style="bold")
    for c in cols:
        table.add_column(c.replace("_params", "").replace("throughput_ips", "img/s"),
                         justify="left" if c in ("model", "sig", "source", "path") else "right")
    for rec in df.to_dict("records"):
        table.add_row(*(_fmt(rec[c]) for c in cols))
    console.print(table)


def collect(run_dir: Path) -> tuple[Settings, dict, list[tuple[Path, dict]]]:
    """A run's settings, manifest and (model directory, result row) of every finished model, in
    the settings' order."""
    rd = RunDir(run_dir)
    if not rd.is_run():
        raise KpbenchError(f"{rd}: not a kpbench run directory (no manifest.json and config.yaml)")
    settings = rd.settings()
    found = rd.results(settings)
    if not found:
        raise KpbenchError(f"{rd}: no finished model in this run yet")
    return settings, rd.manifest(), found


def _per_image(found: list[tuple[Path, dict]], path: str | None = None) -> dict[str, dict]:
    """Each model's test predictions, per-image metric values averaged over its seeds (the split
    is the same for every seed, so the images line up). ``path``: those through another face-box
    path (``eval.detectors``), saved under ``paths/<detector>/``."""
    out: dict[str, dict] = {}
    for mdir, row in found:
        mdir = mdir if path is None else mdir / "paths" / path
        if not (mdir / "predictions.npz").is_file():
            continue
        with np.load(mdir / "predictions.npz") as z:
            data = {k: z[k] for k in z.files}
        entry = out.setdefault(row["model"], {"runs": 0, "dir": mdir, **data})
        if entry["runs"]:
            for k in data:
                if k.startswith("metric_") or k in ("pred", "confidence"):
                    entry[k] = entry[k] + data[k]
        entry["runs"] += 1
    for entry in out.values():
        for k in list(entry):
            if k.startswith("metric_") or k in ("pred", "confidence"):
                entry[k] = entry[k] / entry["runs"]
    return out


def add_statistics(df: pd.DataFrame, per_image: dict[str, dict], metric: str, how: str, higher: bool) -> pd.DataFrame:
    """Bootstrap 95% CI of the sort metric (``<metric>_lo``, ``<metric>_hi``) and a Wilcoxon
    signed-rank test of every model against the best one on the same test images (``p_vs_best``;
    ``sig`` is ``*`` when p < 0.05)."""
    key = f"metric_{metric}"
    if df.empty or any(key not in per_image.get(m, {}) for m in df["model"]):
        return df
    df = df.copy()
    best = df["model"].iloc[0]
    ci = [stats.bootstrap_ci(per_image[m][key], how) for m in df["model"]]
    df.insert(df.columns.get_loc(metric) + 1, f"{metric}_lo", [round(lo, 6) for lo, _ in ci])
    df.insert(df.columns.get_loc(metric) + 2, f"{metric}_hi", [round(hi, 6) for _, hi in ci])
    pvals, sig = [], []
    for m in df["model"]:
        if m == best or len(per_image[m][key]) != len(per_image[best][key]):
            pvals.append(float("nan"))
            sig.append("best" if m == best else "")
            continue
        p = stats.wilcoxon_signed_rank(per_image[m][key], per_image[best][key])["p"]
        pvals.append(round(float(p), 6))
        sig.append("*" if p < 0.05 else "")
    df["p_vs_best"], df["sig"] = pvals, sig
    return df


def by_source(df: pd.DataFrame, per_image: dict[str, dict], settings: Settings, specs: dict) -> pd.DataFrame | None:
    """When the test split combines datasets (``data.dataset``, or ``data.eval_dataset``, given as
    a list): every model's metrics on each source's test faces alone, from the per-image values.
    Since a combined split is the union of the single-dataset splits, these rows compare with
    runs on each dataset alone, image for image."""
    from kpbench.data import source_names, source_of

    spec = settings.data.eval_dataset or settings.data.dataset
    if not isinstance(spec, list) or df.empty:
        return None
    names = source_names(spec)
    rows = []
    for model in df["model"]:
        entry = per_image[model]
        source = source_of([str(i) for i in entry["ids"]], names)
        for name in names:
            keep = source == name
            rows.append({"source": name, "model": model, "faces": int(keep.sum()),
                         **metrics_on(entry, keep, settings, specs)})
    return pd.DataFrame(rows).sort_values("source", kind="stable").reset_index(drop=True)


def metrics_on(entry: dict, keep: np.ndarray, settings: Settings, specs: dict) -> dict:
    """Every metric of the run aggregated over the images in ``keep`` (NaN when there are none)."""

    out = {}
    for metric in settings.eval.metrics:
        if f"metric_{metric}" in entry:
            how = specs.get(metric, {}).get("aggregate", "mean")
            out[metric] = round(aggregate(entry[f"metric_{metric}"][keep], how), 6) if keep.any() else float("nan")
    return out


def by_path(df: pd.DataFrame, found, per_image: dict[str, dict], settings: Settings, specs: dict) -> pd.DataFrame | None:
    """With ``eval.detectors``: every model's metrics through each face-box path (the run's
    detector first, then each extra one, then ``own-detector`` for models that find the faces
    on the whole photo themselves), on all test faces and on each source's alone, with the
    detector's miss rate and the ratio of the sort metric to the run's own path."""
    from kpbench.data import source_names, source_of

    from kpbench.evaluate import OWN_DETECTOR

    extra = list(settings.eval.detectors) + [OWN_DETECTOR]
    if df.empty:
        return None
    spec = settings.data.eval_dataset or settings.data.dataset
    names = source_names(spec) if isinstance(spec, list) else []
    sort = settings.eval.sort_by
    paths = {settings.data.detector: per_image, **{d: _per_image(found, d) for d in extra}}
    paths = {name: entries for name, entries in paths.items() if entries}
    rows = []
    for model in df["model"]:
        base: dict[str, float] = {}
        for path, entries in paths.items():
            if model not in entries:
                continue
            entry = entries[model]
            source = source_of([str(i) for i in entry["ids"]], names)
            for name in ["all"] + names:
                keep = np.ones(len(source), bool) if name == "all" else source == name
                row = {"path": path, "source": name, "model": model, "faces": int(keep.sum()),
                       "miss_rate": round(float(entry["missed"][keep].mean()), 4) if keep.any() else float("nan"),
                       **metrics_on(entry, keep, settings, specs)}
                base.setdefault(name, row.get(sort, float("nan")))
                row[f"{sort}_ratio"] = round(row.get(sort, float("nan")) / base[name], 4) if base[name] else float("nan")
                rows.append(row)
    out = pd.DataFrame(rows)
    if out.empty or out["path"].nunique() < 2:
        return None
    return out if names else out.drop(columns="source")


def render_plots(run_dir: Path, df: pd.DataFrame, found, per_image: dict[str, dict], settings: Settings) -> dict[str, Path]:
    """The report's figures under ``plots/``: training curves, keypoint overlays, CED curves,
    per-keypoint errors, accuracy vs latency."""
    from kpbench import plots
    from kpbench.data import to_crop

    pdir = run_dir / "plots"
    labels = list(df["model"])
    colors = plots.model_colors(labels)
    schema = get_schema(settings.data.schema)
    metric = settings.eval.sort_by
    figs: dict[str, Path] = {}
    histories = {}
    for mdir, row in found:  # the first seed's curves
        if row["model"] not in histories and (mdir / "history.csv").is_file():
            histories[row["model"]] = pd.read_csv(mdir / "history.csv")
    metrics = [m for m in ("nme", "mae", "rmse") if f"val_{m}" in next(iter(histories.values()), {})]
    figs["Training curves (train solid, validation dashed)"] = plots.training_curves(
        histories, pdir / "training_curves.png", metrics=metrics, colors=colors)
    if (run_dir / "test_faces.npz").is_file():
        with np.load(run_dir / "test_faces.npz") as z:
            images, boxes = z["images"], z["boxes"]
        size, n = images.shape[-1], len(images)

        def crop_px(points):
            return to_crop(points[:n].astype(np.float64), boxes.astype(np.float64)) * size - 0.5

        preds = {m: crop_px(per_image[m]["pred"]) for m in labels}
        true = crop_px(per_image[labels[0]]["true"])
        figs["Test faces: annotation (green) and prediction (red)"] = plots.keypoint_overlays(
            images, preds, true, pdir / "overlays.png", n=min(8, n))
    if all("metric_nme" in per_image[m] for m in labels):
        figs["Cumulative error distribution (NME, inter-ocular)"] = plots.ced_curves(
            {m: per_image[m]["metric_nme"] for m in labels}, pdir / "ced.png", colors=colors)
    errors = {}
    for m in labels:
        true = per_image[m]["true"]
        a, b = schema.norm_pair
        norm = np.linalg.norm(true[:, a] - true[:, b], axis=-1)
        errors[m] = stats.per_keypoint_error(per_image[m]["pred"], true, norm)
    figs["Mean error per keypoint / inter-ocular distance"] = plots.per_keypoint_errors(
        errors, list(schema.points), pdir / "per_keypoint.png", ylabel="NME", colors=colors)
    confident = [m for m in labels if "confidence" in per_image[m]]
    if confident:
        figs["Error by confidence: each tenth of the points, least confident first"] = plots.error_by_confidence(
            {m: point_errors(per_image[m]["pred"], per_image[m]["true"], schema.norm_pair) for m in confident},
            {m: per_image[m]["confidence"] for m in confident}, pdir / "confidence.png", colors=colors)
    figs["Accuracy vs cost (Pareto front outlined)"] = plots.accuracy_vs_cost(
        df, pdir / "accuracy_vs_latency.png", y=metric, colors=colors)
    return figs


def render(run_dir: Path, console: Console | None = None, plugins=None) -> pd.DataFrame:
    """Build the leaderboard of a run directory from its saved files, draw the plots, write every
    report format (each registered report writer: CSV, Markdown, JSON and HTML are kpbench's
    own), print the table. Deterministic: rendering twice writes the same bytes, so ``kpbench
    report`` reproduces what ``kpbench run`` wrote."""
    from kpbench.plugins import get_plugins

    run_dir = Path(run_dir)
    settings, meta, found = collect(run_dir)
    ec = settings.eval
    specs = meta.get("metrics", {})
    sort = ec.sort_by
    higher = bool(specs.get(sort, {}).get("higher_is_better", False))
    rows = [row for _, row in found]
    df = leaderboard(rows, sort, higher, spread=tuple(ec.metrics) + LOSSES)
    per_image = _per_image(found)
    df = add_statistics(df, per_image, sort, specs.get(sort, {}).get("aggregate", "mean"), higher)
    expected = len(settings.models) * len(seeds_of(settings))
    partial = None
    if "finished" not in meta or len(found) < expected:
        partial = (f"Partial run: {len(found)} of {expected} model runs finished (kpbench run ... --resume "
                   f"continues it).")
        log.warning(f"kpbench: {partial}")
    splits = meta.get("splits", {})
    title = (f"kpbench leaderboard — {meta.get('dataset')} test split ({splits.get('test', '?')} faces), "
             f"{meta.get('device')}")
    figs = render_plots(run_dir, df, found, per_image, settings)
    notes = [f"Sorted by {sort} on the test split; {sort}_lo/{sort}_hi: bootstrap 95% confidence interval; "
             f"p_vs_best: Wilcoxon signed-rank test against the best model on the same images (* p < 0.05)."]
    if "fail_auroc" in df:
        notes.append("conf_err_low10 / conf_err_high10: mean error (over the inter-ocular distance) of the least- and "
                     "of the most-confident tenth of the test points; fail_auroc: how well 1 - face confidence (the "
                     "mean of its points') flags failed faces (NME > 0.1), as ROC AUC (0.5: no better than chance). "
                     "Empty for models without confidences.")
    ort_note = onnx_latency_note(df)
    if ort_note:
        notes.append(ort_note)
    if partial:
        notes.insert(0, partial)
    sources = by_source(df, per_image, settings, specs)
    tables = {}
    if sources is not None:
        tables["leaderboard_by_source"] = ("By test source", sources)
    paths = by_path(df, found, per_image, settings, specs)
    if paths is not None:
        tables["leaderboard_by_path"] = ("By face-box path (the run's detector, then eval.detectors, then own-detector)",
                                         paths)
        notes.append(f"By face-box path: the same test faces cropped by each detector (a miss falls back to the "
                     f"annotated box); own-detector: a reference model run on the whole photo with its own face "
                     f"detector, as its users run it (a face it does not find gets its prediction on the run's "
                     f"crop); {sort}_ratio is each path's {sort} over the run's own detector's.")
    out = Report(run_dir, title, meta, df, tables, figs, notes, partial)
    writers = (plugins or get_plugins()).report_writers.list()
    if not writers:
        log.warning("kpbench: no report writer is registered (kpbench's own come from its entry points: "
                    "reinstall it, e.g. pip install -e .); only the plots were written")
    for writer in writers:
        writer.write(out)
    metrics = [sort] + [m for m in ec.metrics if m != sort]
    show(df, title, console, metrics)
    if sources is not None:
        _print_table(sources, ["source", "model", "faces"] + [m for m in metrics if m in sources], "By test source",
                     console or Console())
    if paths is not None:
        _print_table(paths, [c for c in ("path", "source", "model", "faces", "miss_rate") if c in paths]
                     + [m for m in metrics if m in paths] + [f"{sort}_ratio"], "By face-box path", console or Console())
    return df


LOSSES = ("train_loss", "val_loss")


def compare(run_a: Path, run_b: Path, console: Console | None = None) -> pd.DataFrame:
    """Two runs on the same test data, model by model and metric by metric (one row each): both
    values, the difference and, for the sort metric, a Wilcoxon signed-rank test on the per-image
    values."""
    console = console or Console()
    (ca, ma, fa), (_, mb, fb) = collect(run_a), collect(run_b)
    if ma.get("dataset_fingerprint") != mb.get("dataset_fingerprint"):
        raise KpbenchError(
            f"cannot compare {run_a} and {run_b}: their test data differ (dataset {ma.get('dataset')} fingerprint "
            f"{ma.get('dataset_fingerprint')} vs {mb.get('dataset')} fingerprint {mb.get('dataset_fingerprint')})")
    metric = ca.eval.sort_by
    pa, pb = _per_image(fa), _per_image(fb)
    rows = []
    key = f"metric_{metric}"
    for label in [m for m in pa if m in pb]:
        a, b = pa[label], pb[label]
        for m in [m for m in ca.eval.metrics if f"metric_{m}" in a and f"metric_{m}" in b]:
            how = ma.get("metrics", {}).get(m, {}).get("aggregate", "mean")
            va, vb = (aggregate(x[f"metric_{m}"], how) for x in (a, b))
            p = (stats.wilcoxon_signed_rank(a[key], b[key])["p"] if m == metric and len(a[key]) == len(b[key])
                 else float("nan"))
            rows.append({"model": label, "metric": m, "A": round(va, 6), "B": round(vb, 6),
                         "B - A": round(vb - va, 6), "p": round(float(p), 6)})
    if not rows:
        raise KpbenchError(f"{run_a} and {run_b} have no model in common")
    df = pd.DataFrame(rows)
    table = Table(title=f"kpbench compare — A: {run_a}  B: {run_b}  (p: Wilcoxon signed-rank on the same images)",
                  header_style="bold")
    for c in df.columns:
        table.add_column(c, justify="left" if c in ("model", "metric") else "right")
    for rec in df.to_dict("records"):
        table.add_row(*(_fmt(rec[c]) for c in df.columns))
    console.print(table)
    return df
