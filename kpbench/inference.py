"""Trained models after the run: load one from its run directory, evaluate it on any dataset
(``kpbench evaluate``) or find and annotate the faces in photos and videos (``kpbench predict``)."""

from __future__ import annotations

import contextlib
import csv
import glob
import inspect
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rich.console import Console

from kpbench import report
from kpbench.data import IMAGE_SUFFIXES, crop_resize, prepare, read_image, stack_boxes, to_gray, to_image_pixels
from kpbench.errors import KpbenchError
from kpbench.evaluate import predict
from kpbench.io import atomic_output, atomic_write_json, atomic_write_text, strict
from kpbench.keypoints import get_schema
from kpbench.log import log, status_console
from kpbench.plugins import Plugins
from kpbench.protocols import FindsFaces
from kpbench.runner import (convention_options, load_dataset, make_detector, manifest, metrics_meta, model_settings,
                            resolve_device, test_and_save, use_flip_test)
from kpbench.rundir import RunDir, save_result
from kpbench.train import Regressor
from kpbench.video import VIDEO_SUFFIXES, is_video, require_av
from kpbench.weights import read_checkpoint


@dataclass
class Trained:
    model: Regressor
    label: str
    input_size: int
    config: dict
    run_dir: Path
    model_dir: Path


def _run_dir_of(path: Path) -> Path:
    for p in [path, *path.parents]:
        if (p / "config.yaml").is_file() and (p / "manifest.json").is_file():
            return p
    raise KpbenchError(f"{path}: not inside a kpbench run directory (no config.yaml and manifest.json above it)")


def load_trained(path: str | Path, plugins: Plugins) -> Trained:
    """A trained model from a run directory (its best model), a model directory
    (``models/<label>[/seed<k>]``) or a ``best.pt`` inside one."""
    path = Path(path)
    if not path.exists():
        raise KpbenchError(f"--model {path}: no such file or directory")
    run_dir = _run_dir_of(path.resolve())
    config, _, found = report.collect(run_dir)
    path = path.resolve()
    if path == run_dir:
        board = json.loads((run_dir / "leaderboard.json").read_text())["rows"] if (
            run_dir / "leaderboard.json").is_file() else []
        trainable = [r["model"] for r in board if r.get("params", 0)] or [row["model"] for _, row in found]
        mdir, row = next((d, r) for d, r in found if r["model"] == trainable[0])
    else:
        mdir = path.parent if path.is_file() else path
        match = [(d, r) for d, r in found if d.resolve() == mdir or d.resolve().parent == mdir]
        if not match:
            raise KpbenchError(f"{path}: not a finished model of run {run_dir}")
        mdir, row = match[0]
    label = row["model"]
    spec = plugins.models.get(label.split("@")[0], where="--model")
    options, _, train_cfg = model_settings(config, label, spec)
    if "weights" in inspect.signature(spec.factory).parameters or "weights" in options:
        options["weights"] = "none"  # the checkpoint holds every weight; do not look for the start
    size = int(row.get("input_size") or config["data"]["input_size"])
    schema = get_schema(config["data"]["schema"])
    net = spec.factory(schema.num_points, size, 1, **options)
    model = Regressor(net, torch.zeros(schema.num_points, 2), size if train_cfg.get("targets") == "pixels" else 1)
    state = read_checkpoint(mdir / "best.pt")["state_dict"]
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise KpbenchError(f"{mdir / 'best.pt'}: does not fit model {label!r}: missing {missing[:3]}, "
                           f"unexpected {unexpected[:3]}")
    model.eval()
    use_flip_test(model, config, schema)
    return Trained(model, label, size, config, run_dir, mdir)


def convention_note(trained: Trained, plugins: Plugins, detector: str) -> str | None:
    """One line when ``detector`` cannot give the crops the model was trained on, else None."""
    from kpbench.runner import run_option

    dc = trained.config["data"]
    if run_option(plugins, dc, "margin") is None and detector != dc["detector"]:
        return (f"note: {trained.label} was trained on whole images (detector {dc['detector']!r}); {detector} crops "
                f"faces by its own margin, so they may differ from what the model saw in training")
    return None


def evaluate(trained: Trained, plugins: Plugins, dataset: str, out: Path, detector: str | None = None,
             detector_options: dict | None = None, dataset_options: dict | None = None,
             console: Console | None = None):
    """Score a trained model on every sample of ``dataset`` ("kind:path") and write a run directory
    with the same reports as ``kpbench run`` (no training curves)."""
    config = json.loads(json.dumps(trained.config))  # a copy
    dc = config["data"]
    dc.update(dataset=dataset, options=dataset_options or {}, eval_dataset=None, eval_options={})
    if detector:  # another detector, set to the model's crop convention unless told otherwise
        dc.update(detector=detector, detector_options=convention_options(plugins, detector, trained.config["data"],
                                                                          detector_options))
    elif detector_options:
        raise KpbenchError("--detector-options needs --detector (the run's detector keeps the run's options)")
    config["models"] = [trained.label]
    config["eval"]["detectors"] = []  # evaluate scores one face-box path: --detector, or the run's
    config["run"].update(seeds=None, out=str(out), name=f"evaluate-{trained.label}")
    metrics = [plugins.metrics.get(m, where="eval.metrics") for m in config["eval"]["metrics"]]
    schema = get_schema(dc["schema"])
    detect = make_detector(plugins, dc["detector"], dc["detector_options"])
    data = load_dataset(plugins, dataset, dc["options"])
    rd = RunDir(out)
    if rd.path.exists() and any(rd.path.iterdir()):
        raise KpbenchError(f"{rd}: output directory exists and is not empty")
    test = prepare(data, range(len(data)), detect, trained.input_size, schema.name)
    device = resolve_device("auto")  # where this machine can run it, whatever the training used
    trained.model.to(device)
    mdir = rd.model_dir(trained.label, config["run"]["seed"], [config["run"]["seed"]])
    values = test_and_save(trained.model, test, schema, metrics, dc, mdir, device)
    rd.write_config(config)
    meta = manifest(config, device, test.fingerprint()[:8])
    meta.update(splits={"test": len(test)}, detector=dc["detector"], evaluated_model=str(trained.model_dir),
                metrics=metrics_meta(metrics), finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    rd.write_manifest(meta)
    rd.save_test_faces(test)
    save_result(mdir, {"model": trained.label, "seed": config["run"]["seed"], **values,
                       "input_size": trained.input_size})
    report.render(out, console)
    return out


def expand_paths(patterns: list[str]) -> list[Path]:
    """Files, directories (their images and videos, sorted) and globs -> paths, each once."""
    files: list[Path] = []
    for pat in patterns:
        p = Path(pat)
        if p.is_dir():
            files += sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES + VIDEO_SUFFIXES)
        elif p.is_file():
            files.append(p)
        else:
            hits = sorted(Path(h) for h in glob.glob(pat, recursive=True))
            if not hits:
                raise KpbenchError(f"{pat}: no such file, directory or matching glob")
            files += [h for h in hits if h.is_file()]
    unique: dict[Path, Path] = {}  # a photo named twice (a file and its folder, two globs) once
    for f in files:
        unique.setdefault(f.resolve(), f)
    return list(unique.values())


def output_names(paths: list[Path]) -> list[str]:
    """A distinct output name per photo: its stem; where stems collide (``a.jpg``, ``a.png``) its
    file name; where those collide too (the same name in two folders), the parent folder's name
    before it; then a counter."""
    names = [p.stem for p in paths]
    names = [n if names.count(n) == 1 else p.name for n, p in zip(names, paths)]
    names = [n if names.count(n) == 1 else f"{p.parent.name}_{n}" for n, p in zip(names, paths)]
    used: set[str] = set()
    out = []
    for n in names:
        name, k = n, 1
        while name in used:
            k += 1
            name = f"{n}-{k}"
        used.add(name)
        out.append(name)
    return out


def check_output_dir(out: Path, inputs: list[Path]) -> None:
    """``predict`` writes only into a new or empty folder, so no photo or earlier result is ever
    written over; refused before any work."""
    if out.exists() and not out.is_dir():
        raise KpbenchError(f"--out {out}: is a file, not a directory")
    if out.is_dir() and any(out.iterdir()):
        inside = any(p.resolve().parent == out.resolve() for p in inputs)
        why = "it holds the input photos" if inside else "it is not empty"
        raise KpbenchError(f"--out {out}: {why}; kpbench predict never writes over files, choose a new folder")


def predict_faces(trained: Trained, detector, image: np.ndarray) -> tuple[list[dict], np.ndarray, np.ndarray]:
    """The one predict path of a photo or a video frame: every face ``detector`` finds in ``image``,
    cropped as the model was trained, and the model's points on it. Returns the detector's faces,
    their boxes (F, 3|4) and the points (F, K, 2), both in the image's pixels."""
    faces = detector.detect_all(image)
    if not faces:
        return [], np.zeros((0, 3), np.float32), np.zeros((0, get_schema(trained.config["data"]["schema"]).num_points, 2))
    boxes = stack_boxes([f["box"] for f in faces])
    gray = to_gray(image)
    crops = np.stack([crop_resize(gray, b, trained.input_size) for b in boxes])[:, None]
    return faces, boxes, to_image_pixels(predict(trained.model, torch.from_numpy(crops.astype(np.float32))), boxes)


def face_entry(face: dict, points: np.ndarray, schema) -> dict:
    """One face as ``predict`` writes it: box, score and the named keypoints, to 0.01 pixel."""
    return {"box": [round(float(v), 2) for v in face["box"]], "score": round(float(face.get("score", 1.0)), 4),
            "keypoints": {k: [round(float(x), 2), round(float(y), 2)] for k, (x, y) in zip(schema.points, points)}}


def predict_photos(trained: Trained, detector, paths: list[Path], out: Path, console: Console,
                   overlays: bool = True, smooth: dict | None = None,
                   detector_name: str | None = None) -> tuple[list[dict], list[dict]]:
    """Every face in every photo: box, score and named keypoints in the photo's pixels, written as
    ``<name>.json`` and, with ``overlays``, ``<name>.jpg`` (boxes and points drawn) under ``out``,
    plus ``predictions.json``. Videos among ``paths`` go through :func:`predict_video` (``smooth``:
    its One-Euro options, or None). A file that cannot be read is reported and counted; the rest go
    on. Returns the photos' and videos' entries and the unreadable files' errors."""
    from kpbench import plots

    schema = get_schema(trained.config["data"]["schema"])
    if not isinstance(detector, FindsFaces):
        raise KpbenchError("this detector needs each photo's annotated points (as gt-box does); use one that finds "
                           "faces, e.g. mtcnn")
    if any(is_video(p) for p in paths):
        require_av()
    out = Path(out)
    check_output_dir(out, paths)
    results, errors = [], []
    for path, name in zip(paths, output_names(paths)):
        try:
            if is_video(path):
                results.append(predict_video(trained, detector, path, out, name, console, overlays, smooth))
                continue
            image = read_image(path)
        except KpbenchError as exc:
            log.warning(f"kpbench: skipped: {exc}")
            errors.append({"video" if is_video(path) else "image": str(path), "error": str(exc)})
            continue
        faces, boxes, pts = predict_faces(trained, detector, image)
        entry = {"image": str(path), "output": name, "width": int(image.shape[1]), "height": int(image.shape[0]),
                 "faces": [face_entry(f, p, schema) for f, p in zip(faces, pts)]}
        if not faces:
            log.info(f"{path}: no face found")
        elif overlays:
            plots.photo_keypoints(image, pts, boxes, out / f"{name}.jpg")
        atomic_write_json(out / f"{name}.json", entry)
        results.append(entry)
    atomic_write_json(out / "predictions.json", {"model": str(trained.model_dir), "detector": detector_name or type(detector).__name__,
                                                 "margin": getattr(detector, "margin", None),
                                                 "images": [r for r in results if "image" in r],
                                                 "videos": [r for r in results if "video" in r], "errors": errors})
    return results, errors


def predict_video(trained: Trained, detector, path: Path, out: Path, name: str, console: Console,
                  overlays: bool = True, smooth: dict | None = None) -> dict:
    """Every face in every frame of a video, decoded one frame at a time and predicted by
    :func:`predict_faces`: ``<name>.csv`` (one row per frame and face: frame, time in seconds, face
    number, box, score, the named points), ``<name>.json`` (the same as strict JSON, every frame
    listed, also those without a face) and, with ``overlays``, ``<name>.mp4`` (boxes and points
    drawn), each written whole or not at all. Faces keep their number across frames
    (:class:`~kpbench.video.FaceTracks`); with ``smooth`` (:func:`~kpbench.video.smoothing`) each
    face's points are One-Euro filtered over time. Returns the video's summary."""
    from rich.progress import Progress

    from kpbench import plots
    from kpbench.video import FaceTracks, VideoWriter, face_filter, frame_rate, frames, open_video

    schema = get_schema(trained.config["data"]["schema"])
    tracks, filters = FaceTracks(), {}
    with contextlib.ExitStack() as stack:
        container, stream = stack.enter_context(open_video(path))
        head = {"video": str(path), "model": str(trained.model_dir), "width": stream.width, "height": stream.height,
                "fps": frame_rate(stream), "smooth": smooth}
        summary = {**head, "output": name, "frames": 0, "faces": 0, "frames_without_face": 0}
        table = csv.writer(stack.enter_context(open(stack.enter_context(atomic_output(out / f"{name}.csv")), "w",
                                                    newline="")))
        doc = stack.enter_context(open(stack.enter_context(atomic_output(out / f"{name}.json")), "w"))
        writer = None
        if overlays:
            writer = VideoWriter(stack.enter_context(atomic_output(out / f"{name}.mp4")), summary["fps"],
                                 stream.width, stream.height)
            stack.callback(writer.close)
        progress = stack.enter_context(Progress(console=status_console(), transient=True))
        task = progress.add_task(path.name, total=stream.frames or None)
        table.writerow(["frame", "time", "face", "box_x0", "box_y0", "box_side", "box_angle", "score",
                        *[f"{p}_{axis}" for p in schema.points for axis in "xy"]])
        doc.write(json.dumps(strict(head), allow_nan=False)[:-1] + ', "frames": [\n')  # then one frame a line
        for index, t, image in frames(path, container, stream):
            faces, boxes, pts = predict_faces(trained, detector, image)
            numbers = tracks.follow(boxes)
            if smooth is not None and faces:
                pts = np.stack([filters.setdefault(k, face_filter(smooth, b[2]))(p, t)
                                for k, b, p in zip(numbers, boxes, pts)])
            entries = [{"face": k, **face_entry(f, p, schema)} for k, f, p in zip(numbers, faces, pts)]
            for e in entries:
                table.writerow([index, round(t, 4), e["face"], *(e["box"] + [0.0])[:4], e["score"],
                                *[v for xy in e["keypoints"].values() for v in xy]])
            doc.write(("," if index else "") + json.dumps(strict({"frame": index, "time": round(t, 4),
                                                                  "faces": entries}), allow_nan=False) + "\n")
            if writer:
                writer.write(np.asarray(plots.draw_faces(image, pts, boxes)))
            summary.update(frames=index + 1, faces=summary["faces"] + len(faces),
                           frames_without_face=summary["frames_without_face"] + (not faces))
            progress.advance(task)
        doc.write("]}\n")
        if not summary["frames"]:
            raise KpbenchError(f"{path}: no video frames")
    log.info(f"{path}: {summary['frames']} frames, {summary['faces']} face(s) "
             f"({summary['frames_without_face']} frames without a face)")
    return summary
