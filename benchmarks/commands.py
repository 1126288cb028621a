"""Whole commands side by side, start-up included: ``kpbench predict`` on a folder of photos against
MediaPipe Face Mesh and dlib run as their users run them (a script that imports the library, reads
each photo and writes its landmarks as JSON), on the same photos, timed in one run.

    python benchmarks/commands.py --photos DIR [--limit 100] [--repeat 3] [--run-folder] [--json OUT.json]

e.g. ``--photos ../shared/data/300w-helen-train/trainset``. The first ``--limit`` photos of the
folder (sorted by name) are linked into a temporary folder; each command runs as a fresh process
(``python -m kpbench predict FOLDER --out NEW``: the default model and detector, no overlay) and
is timed by its wall clock, from start to exit: import, model loading, every photo, every file
written. Each tool is also timed on the first photo alone (its start-up and one photo). The
figures are the best of ``--repeat`` interleaved rounds (kpbench, MediaPipe, dlib, then again),
after one untimed round (the page cache and kpbench's graph cache, as on a user's second run).

The references' scripts are this file's ``MEDIAPIPE`` and ``DLIB``: Face Mesh in static-image mode
(its defaults: one face, no iris refinement) on ``cv2.imread`` photos as its documentation's
example, and dlib's HOG detector upsampling once with the 68-point shape predictor on
``dlib.load_rgb_image`` photos as dlib's example does. A tool whose package or model is missing is
reported as skipped (``pip install -e '.[mediapipe]'``, ``pip install dlib``,
``bin/fetch-dlib-model``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

from kpbench.data import IMAGE_SUFFIXES

MEDIAPIPE = """
import json, sys
from pathlib import Path
import cv2
import mediapipe as mp

out = Path(sys.argv[2])
out.mkdir()
with mp.solutions.face_mesh.FaceMesh(static_image_mode=True) as mesh:
    for path in sorted(Path(sys.argv[1]).iterdir()):
        image = cv2.imread(str(path))
        h, w = image.shape[:2]
        found = mesh.process(cv2.cvtColor(image, cv2.COLOR_BGR2RGB)).multi_face_landmarks or []
        faces = [[[p.x * w, p.y * h] for p in face.landmark] for face in found]
        (out / (path.stem + ".json")).write_text(json.dumps({"image": str(path), "faces": faces}))
"""

DLIB = """
import json, sys
from pathlib import Path
import dlib

out = Path(sys.argv[2])
out.mkdir()
detector, predictor = dlib.get_frontal_face_detector(), dlib.shape_predictor(sys.argv[3])
for path in sorted(Path(sys.argv[1]).iterdir()):
    image = dlib.load_rgb_image(str(path))
    faces = []
    for box in detector(image, 1):
        shape = predictor(image, box)
        faces.append([[shape.part(i).x, shape.part(i).y] for i in range(shape.num_parts)])
    (out / (path.stem + ".json")).write_text(json.dumps({"image": str(path), "faces": faces}))
"""


def commands(dlib_model: str | None, run_folder: bool = False) -> dict[str, list[str]]:
    """Each tool's command, with the photo folder and a new output folder appended; with
    ``run_folder`` also kpbench on the shipped model's run folder (its checkpoint, the graph
    exported once and cached: imports torch), as ``kpbench predict`` ran it before the shipped graph."""
    found = {"kpbench": [sys.executable, "-m", "kpbench", "predict"]}
    if run_folder:
        from kpbench.predictor import SHIPPED

        found["kpbench-run-folder"] = [sys.executable, "-m", "kpbench", "predict", "--model", str(SHIPPED)]
    if importlib.util.find_spec("mediapipe") and importlib.util.find_spec("cv2"):
        found["mediapipe"] = [sys.executable, "-c", MEDIAPIPE]
    if importlib.util.find_spec("dlib") and dlib_model:
        found["dlib"] = [sys.executable, "-c", DLIB]
    return found


def timed(cmd: list[str], photos: Path, out: Path, extra: list[str]) -> float:
    args = [*cmd, str(photos), "--out", str(out)] if "predict" in cmd else [*cmd, str(photos), str(out), *extra]
    t = time.perf_counter()
    subprocess.run(args, check=True, capture_output=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return time.perf_counter() - t


def faces_found(out: Path) -> int:
    """Photos of a tool's output folder with at least one face (its per-photo JSON files)."""
    n = 0
    for f in out.glob("*.json"):
        data = json.loads(f.read_text())
        n += bool(data.get("faces")) if isinstance(data, dict) and "image" in data else 0
    return n


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--photos", required=True, help="a folder of photos")
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", default=None, help="also write the figures here (a new file)")
    ap.add_argument("--run-folder", action="store_true",
                    help="also time kpbench on the shipped model's run folder (PyTorch imported, cached graph)")
    args = ap.parse_args(argv)
    if args.json and Path(args.json).exists():
        sys.exit(f"{args.json} exists; give a new file")
    files = sorted(p for p in Path(args.photos).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:args.limit]
    if not files:
        sys.exit(f"--photos {args.photos}: no photos ({', '.join(IMAGE_SUFFIXES)})")
    try:
        from kpbench_plugins.dlib68 import find_predictor

        dlib_model = str(find_predictor())
    except Exception:  # noqa: BLE001 - no dlib or no model: dlib is skipped
        dlib_model = None
    tools = commands(dlib_model, args.run_folder)
    extra = {"dlib": [dlib_model or ""]}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        every, one = tmp / "photos", tmp / "one"
        every.mkdir()
        one.mkdir()
        for f in files:
            (every / f.name).symlink_to(f.resolve())
        (one / files[0].name).symlink_to(files[0].resolve())
        times: dict[str, dict[str, list[float]]] = {t: {"all": [], "one": []} for t in tools}
        found: dict[str, int] = {}
        for r in range(args.repeat + 1):  # round 0 untimed
            for tool, cmd in tools.items():
                for key, folder in (("one", one), ("all", every)):
                    out = tmp / f"{tool}-{key}-{r}"
                    seconds = timed(cmd, folder, out, extra.get(tool, []))
                    if r:
                        times[tool][key].append(seconds)
                    elif key == "all":
                        found[tool] = faces_found(out)
            print(f"round {r}{' (untimed)' if not r else ''} done", file=sys.stderr)
    n = len(files)
    rows = {t: {"command_s": min(v["all"]), "one_photo_s": min(v["one"]), "ms_per_photo": 1000 * min(v["all"]) / n,
                "photos_with_a_face": found[t]} for t, v in times.items()}
    base = rows.get("mediapipe")
    print(f"{n} photos of {args.photos}; best of {args.repeat} interleaved rounds; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs")
    print(f"{'tool':18} {'whole command s':>16} {'ms a photo':>11} {'one photo s':>12} {'found':>6} {'vs MediaPipe':>13}")
    for t, row in rows.items():
        ratio = f"{row['command_s'] / base['command_s']:.2f}x" if base else "-"
        print(f"{t:18} {row['command_s']:16.2f} {row['ms_per_photo']:11.2f} {row['one_photo_s']:12.2f} "
              f"{row['photos_with_a_face']:6d} {ratio:>13}")
    skipped = sorted({"mediapipe", "dlib"} - set(tools))
    if skipped:
        print(f"skipped (not installed, or no dlib model): {', '.join(skipped)}")
    if args.json:
        from kpbench.io import atomic_write_json

        versions = {}
        for pkg in ("kpbench", "torch", "onnxruntime", "mediapipe", "dlib"):
            try:
                versions[pkg] = metadata.version(pkg)
            except metadata.PackageNotFoundError:
                versions[pkg] = None
        atomic_write_json(Path(args.json), {"photos": args.photos, "n": n, "repeat": args.repeat, "rows": rows,
                                            "skipped": skipped, "versions": versions,
                                            "cpu": platform.processor() or platform.machine()})


if __name__ == "__main__":
    main()
