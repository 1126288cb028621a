"""The photo path side by side: kpbench's model behind each face detector and runtime, against
MediaPipe Face Mesh and dlib as their users run them, on the same annotated photos in one process.

    python benchmarks/photo_path.py [--dataset KIND:PATH] [--model RUN] [--limit 50] [--repeat 3]
                                    [--threads 2] [--video] [--json OUT.json]

e.g. ``--dataset ibug:../shared/data/300w-helen-train/trainset`` or
``--dataset folder68:../shared/data/youtube-faces-68 --video``.

Per photo, timed with ``time.perf_counter``: decode (``kpbench.data.read_image``), and for each
kpbench path (detector blazeface or mtcnn x runtime onnxruntime or torch) detect
(``Predictor.detect``), crop (``Predictor.crops``), forward (``kpbench.evaluate.predict`` on the
crops, points back to the photo's pixels) and write (the photo's JSON as ``kpbench predict`` writes
it, into a temporary folder; no overlay image). In-process is detect + crop + forward (decoded
image -> keypoints), end to end is decode + all + write. The references time decoded image ->
landmarks: MediaPipe Face Mesh in static mode and dlib (HOG detector upsampling once + the
68-point predictor), each exactly as kpbench's ``own-detector`` path runs them; with ``--video``
also Face Mesh in video mode (tracking) over the photos in file order, as one sequence (the
YouTube frames come in clips of three, so this is not a real video). Each path is run once on the
first photo before timing. Each figure is the median over photos of one pass, the best of
``--repeat`` passes (so stage figures need not add up to the totals).

Accuracy: every path's 15-point NME (kpbench's ``nme`` metric, inter-ocular: outer eye corners),
the face found whose points' box overlaps the annotated one's most (``kpbench.evaluate.match_face``)
scored; a photo where none matches is a miss, left out of the NME and counted in the miss rate.
"NME common" is over the photos every path found. Where the dataset is one the model was trained
on, only the run's test-split photos are drawn (split as the run split them; the run config's
relative dataset paths are taken from the current folder, so run this from the project root;
``--all-faces``: any photo).

Threads: ``--threads`` for torch and ONNX Runtime, and so for the detectors, whose defaults follow
torch's thread count (blazeface's LiteRT, mtcnn), as in ``kpbench predict``; MediaPipe's legacy
solution and dlib choose their own. The ONNX graph is exported afresh
into a temporary cache, so the figures never depend on an earlier export.

The references need their packages: ``pip install -e '.[mediapipe]'`` (``bin/setup`` leaves it out)
and ``bin/fetch-dlib-model``; a reference whose package or model is missing is reported as skipped.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import tempfile
import time
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

from kpbench.components import load_dataset
from kpbench.data import read_image, split_dataset, stack_boxes
from kpbench.evaluate import MetricContext, match_face
from kpbench.formulas import aggregate
from kpbench.geometry import rgb_uint8
from kpbench.io import atomic_write_json
from kpbench.keypoints import convert
from kpbench.photos import output_names
from kpbench.plugins import get_plugins
from kpbench.predictor import SHIPPED, Predictor

PACKAGES = ("kpbench", "torch", "onnxruntime", "mediapipe", "dlib-bin", "ai-edge-litert", "facenet-pytorch",
            "numpy", "pillow")


def run_test_files(plugins, settings, kind: str, path: Path) -> set[Path] | None:
    """The photos of the run's test split among its datasets of ``kind`` that hold or lie in ``path``
    (split as the run split them); None when the run did not train on that data."""
    dc = settings.data
    specs = dc.dataset if isinstance(dc.dataset, list) else [dc.dataset]
    options = dc.options if isinstance(dc.options, list) else [dc.options] * len(specs)
    test = None
    for spec, opts in zip(specs, options):
        k, _, p = spec.partition(":")
        p = Path(p).resolve()
        if k != kind or not (p == path or p in path.parents or path in p.parents) or not p.exists():
            continue
        data = load_dataset(plugins, spec, opts or {})
        test = (test or set()) | {Path(data.files[int(i)]).resolve()
                                  for i in split_dataset(data, dc.split, settings.run.seed)[2]}
    return test


def pick_faces(plugins, spec: str, limit: int, seed: int, settings, all_faces: bool):
    """``limit`` photos of the dataset (seeded), sorted by file: their files, 68-point annotations,
    the annotations' schema and a line saying where they were drawn from."""
    data = load_dataset(plugins, spec, {})
    if not hasattr(data, "files"):
        raise SystemExit(f"{spec}: needs a dataset of image files with annotations (ibug, folder68)")
    kind, _, path = spec.partition(":")
    pool = np.arange(len(data))
    test = None if all_faces or settings.data.limit else run_test_files(plugins, settings, kind,
                                                                        Path(path).resolve())
    where = f"any of its {len(data)} faces"
    if test is not None:
        pool = np.array([i for i in pool if Path(data.files[i]).resolve() in test], dtype=int)
        where = f"the model run's test split ({len(pool)} of {len(data)} faces; the rest were trained on)"
    if not len(pool):
        raise SystemExit(f"{spec}: no faces to draw from ({where})")
    chosen = np.random.default_rng(seed).choice(pool, size=min(limit, len(pool)), replace=False)
    chosen = sorted(chosen, key=lambda i: str(data.files[i]))
    return [Path(data.files[i]) for i in chosen], np.stack([data.points[i] for i in chosen]), data.schema, where


def kpbench_paths(model: Path, plugins, notes: list[str]) -> dict[str, Predictor]:
    """A Predictor per detector x runtime, each detector with its defaults (as ``kpbench predict``
    builds it); one that cannot be built is left out with a note."""
    paths = {}
    for detector in ("blazeface", "mtcnn"):
        for rt in ("onnxruntime", "torch"):
            try:
                paths[f"kpbench {detector}+{rt}"] = Predictor.from_run(model, detector=detector, runtime=rt,
                                                                       plugins=plugins)
            except Exception as exc:  # noqa: BLE001 - report and go on with the other paths
                notes.append(f"{detector}+{rt}: skipped ({type(exc).__name__}: {exc})")
    return paths


def kpbench_photo(predictor: Predictor, file: Path, name: str, folder: Path):
    """One photo through a kpbench path: the stages' seconds and every face's points."""
    t0 = time.perf_counter()
    image = read_image(file)
    t1 = time.perf_counter()
    found = predictor.detect(image)
    t2 = time.perf_counter()
    points, conf, t3 = np.zeros((0, predictor.schema.num_points, 2)), None, t2
    if found:
        boxes = stack_boxes([f["box"] for f in found])
        crops = predictor.crops(image, boxes)
        t3 = time.perf_counter()
        points, conf = predictor.points_on(crops, boxes)
    t4 = time.perf_counter()
    faces = predictor.as_faces(found, points, conf)
    atomic_write_json(folder / f"{name}.json", {"image": str(file), "output": name, "width": int(image.shape[1]),
                                             "height": int(image.shape[0]), "faces": [f.to_json() for f in faces]})
    t5 = time.perf_counter()
    times = {"decode": t1 - t0, "detect": t2 - t1, "crop": t3 - t2, "forward": t4 - t3, "write": t5 - t4}
    return times, list(points)


def reference_photo(landmarks, file: Path):
    """One photo through a reference (``landmarks``: decoded image -> every face's points)."""
    t0 = time.perf_counter()
    image = read_image(file)
    t1 = time.perf_counter()
    faces = landmarks(rgb_uint8(image))
    t2 = time.perf_counter()
    return {"decode": t1 - t0, "landmarks": t2 - t1}, faces


def references(plugins, k: int, size: int, video: bool, notes: list[str]) -> dict:
    """The reference paths, each a factory of a fresh ``landmarks`` function (per pass: video mode
    starts its tracking over)."""
    refs = {}
    for label, model in (("MediaPipe static", "mediapipe"), ("dlib HOG+68", "dlib68")):
        try:
            spec = plugins.models.get(model)
            if spec.check:
                spec.check({})
            net = spec.factory(k, size)
            refs[label] = lambda net=net: net.photo_keypoints
        except Exception as exc:  # noqa: BLE001 - an optional reference: report and go on
            notes.append(f"{label}: skipped ({type(exc).__name__}: {exc})")
    if video and "MediaPipe static" in refs:
        refs["MediaPipe video*"] = lambda: mediapipe_video(k)
        notes.append("*MediaPipe video: Face Mesh tracking over the photos in file order as one sequence "
                     "(not a real video)")
    return refs


def mediapipe_video(k: int, max_faces: int = 5):
    """Face Mesh in video mode (tracking between frames), as a ``landmarks`` function."""
    import mediapipe as mp

    from kpbench_plugins.mediapipe_ref import _mesh68

    mesh = mp.solutions.face_mesh.FaceMesh(static_image_mode=False, max_num_faces=max_faces,
                                           refine_landmarks=False, min_detection_confidence=0.5)

    def landmarks(image):
        h, w = image.shape[:2]
        faces = [_mesh68(f, w, h) - 0.5 for f in mesh.process(image).multi_face_landmarks or ()]
        return [convert(f, "ibug68", "kaggle15") if k == 15 else f for f in faces]
    return landmarks


def figures(passes: list[list[dict]]) -> dict[str, float]:
    """Each stage's (and total's) median over photos in milliseconds, the best pass's."""
    return {stage: min(statistics.median(t[stage] for t in p) for p in passes) * 1e3 for stage in passes[0][0]}


def totals(t: dict) -> dict:
    """A photo's stage seconds with in-process and end-to-end added."""
    t["in_process"] = sum(t.get(s, 0.0) for s in ("detect", "crop", "forward", "landmarks"))
    t["end_to_end"] = t["decode"] + t["in_process"] + t.get("write", 0.0)
    return t


def nme_scores(faces: list[list[np.ndarray]], truth: np.ndarray, schema, nme) -> tuple[np.ndarray, np.ndarray]:
    """Per photo the NME of the face matched to the annotation (NaN for a miss), and the misses."""
    pred = np.full(truth.shape, np.nan)
    for i, found in enumerate(faces):
        j = match_face([np.asarray(f) for f in found], truth[i])
        if j is not None:
            pred[i] = found[j]
    missed = np.isnan(pred).all(axis=(1, 2))
    ctx = MetricContext(schema=schema, boxes=np.zeros((len(truth), 3), np.float32))
    return np.asarray(nme(pred, truth, ctx), dtype=np.float64), missed


def machine(threads: int) -> dict:
    """The CPU (lscpu's model name, else platform.processor()), threads and package versions."""
    cpu = platform.processor()
    try:
        lines = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout.splitlines()
        cpu = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("Model name")), cpu)
    except (OSError, subprocess.SubprocessError):
        pass
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {"cpu": cpu or "unknown", "cores": os.cpu_count(), "threads": threads, "python": platform.python_version(),
            "versions": versions}


def print_table(result: dict) -> None:
    m = result["machine"]
    print(f"{result['model']} on {result['faces']} faces of {result['dataset']}, drawn from {result['drawn_from']}; "
          f"{result['repeat']} pass(es), median per photo of the best pass")
    print(f"CPU {m['cpu']} ({m['cores']} cores), {m['threads']} threads (torch, ONNX Runtime, detectors; "
          f"MediaPipe and dlib choose their own); "
          + ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v))
    for note in result["notes"]:
        print(f"note: {note}")
    head = ["path", "in-proc", "end2end", "decode", "detect", "crop", "forward", "write", "xMP in", "xMP e2e",
            "NME", "NME cmn", "miss"]
    print(f"{head[0]:<30}" + "".join(f"{h:>9}" for h in head[1:]))
    fmt = lambda v, f: "–" if v is None or v != v else format(v, f)  # noqa: E731
    for r in result["rows"]:
        ms = r["ms"]
        cells = [ms["in_process"], ms["end_to_end"], ms["decode"], ms.get("detect", ms.get("landmarks")), ms.get("crop"), ms.get("forward"),
                 ms.get("write")]
        print(f"{r['path']:<30}" + "".join(f"{fmt(v, '.2f'):>9}" for v in cells)
              + f"{fmt(r['ratio_in_process'], '.2f'):>9}{fmt(r['ratio_end_to_end'], '.2f'):>9}"
              + f"{fmt(r['nme'], '.4f'):>9}{fmt(r['nme_common'], '.4f'):>9}{fmt(100 * r['miss_rate'], '.0f'):>8}%")
    print("ms per photo; references: under 'detect', decoded image -> landmarks (their own detector); xMP: ratio to "
          "MediaPipe static (in-process, and end to end against decode + MediaPipe)")


def warm_up(paths: dict, refs: dict, file: Path, out: Path, notes: list[str]) -> None:
    """Each path once on ``file`` before timing (model loads, graph set-up); a kpbench path that
    fails is dropped with a note, one whose staged points differ from ``predict_arrays``' noted."""
    for label, p in list(paths.items()):
        try:
            _, pts = kpbench_photo(p, file, "warm-up", out)
        except Exception as exc:  # noqa: BLE001 - e.g. a detector under construction
            notes.append(f"{label}: skipped, failed on {file.name} ({type(exc).__name__}: {exc})")
            del paths[label]
            continue
        api = p.predict_arrays(read_image(file))[2]
        if len(api) != len(pts) or not np.allclose(api, np.reshape(pts, api.shape), atol=1e-3):
            notes.append(f"{label}: the staged points differ from Predictor.predict_arrays' on {file.name}")
    for make in refs.values():
        reference_photo(make(), file)


def time_paths(paths: dict, refs: dict, files: list[Path], repeat: int, tmp: Path):
    """Every path over every photo, ``repeat`` passes: per path the passes' per-photo stage
    seconds, and the last pass's faces per photo."""
    timed, faces, names = {}, {}, output_names(files)
    for rep in range(repeat):
        for label, p in paths.items():
            out = tmp / f"{rep}-{label.replace(' ', '_')}"
            out.mkdir()
            runs = [kpbench_photo(p, f, n, out) for f, n in zip(files, names)]
            timed.setdefault(label, []).append([totals(t) for t, _ in runs])
            faces[label] = [pts for _, pts in runs]
        for label, make in refs.items():
            landmarks = make()
            runs = [reference_photo(landmarks, f) for f in files]
            timed.setdefault(label, []).append([totals(t) for t, _ in runs])
            faces[label] = [pts for _, pts in runs]
    return timed, faces


def result_rows(timed: dict, faces: dict, truth: np.ndarray, schema, nme) -> tuple[list[dict], int]:
    """One row per path: milliseconds, ratios to MediaPipe static, NME and misses; and the number
    of photos every path found."""
    scored = {label: nme_scores(faces[label], truth, schema, nme) for label in timed}
    common = ~np.any([missed for _, missed in scored.values()], axis=0)
    mp = figures(timed["MediaPipe static"]) if "MediaPipe static" in timed else None
    rows = []
    for label, passes in timed.items():
        ms = figures(passes)
        per, missed = scored[label]
        rows.append({"path": label, "ms": ms, "ratio_in_process": mp and ms["in_process"] / mp["in_process"],
                     "ratio_end_to_end": mp and ms["end_to_end"] / mp["end_to_end"], "nme": aggregate(per, "mean"),
                     "nme_common": aggregate(per[common], "mean") if common.any() else None,
                     "misses": int(missed.sum()), "miss_rate": float(missed.mean())})
    return rows, int(common.sum())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="ibug:../shared/data/300w-helen-train/trainset", help="KIND:PATH")
    ap.add_argument("--model", type=Path, default=SHIPPED if SHIPPED.exists() else None,
                    help="a kpbench run folder (default: the shipped model)")
    ap.add_argument("--limit", type=int, default=50, help="faces to draw (default 50)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=3, help="timed passes; the best is reported (default 3)")
    ap.add_argument("--threads", type=int, default=2, help="torch, ONNX Runtime and detector threads (default 2)")
    ap.add_argument("--video", action="store_true", help="also MediaPipe in video mode over the photos in order")
    ap.add_argument("--all-faces", action="store_true", help="draw from every face, also those the model trained on")
    ap.add_argument("--json", type=Path, help="also write the figures here as strict JSON")
    args = ap.parse_args(argv)
    if args.model is None:
        ap.error("no shipped model here: pass --model RUN")
    torch.set_num_threads(args.threads)
    plugins, notes = get_plugins(), []
    saved = os.environ.get("KPBENCH_CACHE_DIR")
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["KPBENCH_CACHE_DIR"] = str(Path(tmp) / "cache")  # a fresh ONNX export (see the docstring)
        try:
            paths = kpbench_paths(args.model, plugins, notes)
        finally:
            del os.environ["KPBENCH_CACHE_DIR"]
            if saved is not None:
                os.environ["KPBENCH_CACHE_DIR"] = saved
        if not paths:
            raise SystemExit("no kpbench path could be built: " + "; ".join(notes))
        first = next(iter(paths.values()))
        schema = first.schema
        files, annotated, source_schema, where = pick_faces(plugins, args.dataset, args.limit, args.seed,
                                                            first.trained.settings, args.all_faces)
        if args.dataset.startswith("ibug:"):
            notes.append("dlib's predictor was trained on 300-W's training photos (HELEN, LFPW, AFW trainsets)")
        refs = references(plugins, schema.num_points, first.trained.input_size, args.video, notes)
        warm_up(paths, refs, files[0], Path(tmp), notes)
        timed, faces = time_paths(paths, refs, files, args.repeat, Path(tmp))
    truth = convert(annotated, source_schema, schema.name).astype(np.float64)
    rows, common = result_rows(timed, faces, truth, schema, plugins.metrics.get("nme"))
    result = {"dataset": args.dataset, "drawn_from": where, "faces": len(files), "common_faces": common,
              "model": f"{first.label} ({args.model})", "schema": schema.name, "repeat": args.repeat,
              "machine": machine(args.threads), "notes": notes, "rows": rows}
    print_table(result)
    if args.json:
        atomic_write_json(args.json, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
