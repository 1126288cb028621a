"""``kpbench predict``'s files: photos and videos found by name, each image through the
:class:`~kpbench.Predictor`, and per photo ``<name>.json`` (+ ``<name>.jpg``), per video
``<name>.csv``, ``<name>.json`` (+ ``<name>.mp4``), and ``predictions.json`` for the batch.
Nothing is written over: ``--out`` must be new or empty."""

from __future__ import annotations

import contextlib
import csv
import functools
import glob
from pathlib import Path

import numpy as np

from kpbench import overlay
from kpbench.data import IMAGE_SUFFIXES, read_image, stack_boxes
from kpbench.errors import KpbenchError
from kpbench.io import atomic_output, atomic_write_json, is_leftover, strict_json
from kpbench.log import log, status_console
from kpbench.predictor import FaceTracker, Predictor
from kpbench.video import SMOOTH, VIDEO_SUFFIXES, is_video, require_av
from kpbench.video import read_ahead as ahead_of


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
    files = [f for f in files if f.is_file()]  # a FIFO or device named like a photo would block a read
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
    used: set[str] = {"predictions"}  # the batch's own predictions.json
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
    entries = list(out.iterdir()) if out.is_dir() else []
    if entries and all(is_leftover(p) for p in entries):  # all a killed predict left: not the user's
        for p in entries:
            p.unlink()
        log.info(f"--out {out}: removed {len(entries)} half-written file(s) an interrupted predict left")
        entries = []
    if entries:
        inside = any(p.resolve().parent == out.resolve() for p in inputs)
        why = "it holds the input photos" if inside else "it is not empty"
        raise KpbenchError(f"--out {out}: {why}; kpbench predict never writes over files, choose a new folder")


@contextlib.contextmanager
def read_ahead(paths: list[Path]):
    """An iterator of (path, read) in order, where ``read()`` gives the photo decoded
    (:func:`~kpbench.data.read_image`, raising its error) or None for a video: the photos are
    decoded on :func:`kpbench.video.read_ahead`'s thread while the one before goes through the
    model, one photo ahead (so memory stays flat). The thread stops with the block, whatever ends it."""

    def decoded():
        for path in paths:
            try:
                yield path, None if is_video(path) else read_image(path)
            except KpbenchError as exc:  # this photo's error, raised at its turn
                yield path, exc

    def read(got):
        if isinstance(got, KpbenchError):
            raise got
        return got

    with contextlib.closing(ahead_of(decoded(), 1)) as photos:
        yield ((path, functools.partial(read, got)) for path, got in photos)


def predict_photos(predictor: Predictor, paths: list[Path], out: Path, overlays: bool = False,
                   smooth: dict | None = SMOOTH, track: bool = True) -> tuple[list[dict], list[dict]]:
    """Every face in every photo: box, score and named keypoints in the photo's pixels, written as
    ``<name>.json`` and, with ``overlays``, ``<name>.jpg`` (boxes and points drawn) under ``out``,
    plus ``predictions.json`` (also when interrupted: then marked ``partial``); each photo is
    decoded while the one before it is predicted (:func:`read_ahead`). Videos among
    ``paths`` go through :func:`predict_video` (``smooth``: its smoothing options, None for none). A file
    that cannot be read is reported and counted; the rest go on. Returns the photos' and videos'
    entries and the unreadable files' errors."""
    if any(is_video(p) for p in paths):
        require_av()
    out = Path(out)
    check_output_dir(out, paths)
    results, errors, finished = [], [], False
    try:
        with read_ahead(paths) as photos:
            for (path, read), name in zip(photos, output_names(paths)):
                try:
                    if is_video(path):
                        results.append(predict_video(predictor, path, out, name, overlays, smooth, track))
                        continue
                    image = read()
                except KpbenchError as exc:
                    log.warning(f"kpbench: skipped: {exc}")
                    errors.append({"video" if is_video(path) else "image": str(path), "error": str(exc)})
                    continue
                faces = predictor.faces(image)
                entry = {"image": str(path), "output": name, "width": int(image.shape[1]),
                         "height": int(image.shape[0]), "faces": [f.to_json() for f in faces]}
                if not faces:
                    log.info(f"{path}: no face found")
                elif overlays:
                    overlay.photo_keypoints(image, np.stack([f.points for f in faces]),
                                            stack_boxes([f.box for f in faces]), out / f"{name}.jpg")
                atomic_write_json(out / f"{name}.json", entry)
                results.append(entry)
        finished = True
    finally:
        if out.is_dir():
            atomic_write_json(out / "predictions.json", {
                "model": str(predictor.trained.model_dir), "detector": predictor.detector_name,
                "margin": predictor.margin, "runtime": predictor.runtime, "partial": not finished,
                "images": [r for r in results if "image" in r], "videos": [r for r in results if "video" in r],
                "errors": errors})
    return results, errors


def predict_video(predictor: Predictor, path: Path, out: Path, name: str, overlays: bool = False,
                  smooth: dict | None = SMOOTH, track: bool = True) -> dict:
    """Every face in every frame of a video, decoded one frame at a time and predicted by
    :class:`~kpbench.Predictor`: ``<name>.csv`` (one row per frame and face: frame, time in seconds, face
    number, box, score, the named points, the face's and each point's confidence, empty for a model
    without them), ``<name>.json`` (the same as strict JSON, every frame
    listed, also those without a face) and, with ``overlays``, ``<name>.mp4`` (boxes and points
    drawn), each written whole or not at all. Faces keep their number across frames
    (:class:`~kpbench.video.FaceTracks`); with ``smooth`` (:func:`~kpbench.video.smoothing`; the
    default, :data:`~kpbench.video.SMOOTH`) each face's shape is One-Euro filtered over time
    (:class:`~kpbench.video.ShapeFilter`), None leaves the points as predicted. With ``track`` the detector runs only where
    :class:`~kpbench.predictor.FaceTracker` needs it; else on every frame. Returns the video's
    summary."""
    from rich.progress import Progress

    from kpbench.video import FaceTracks, VideoWriter, frame_rate, frames, open_video, smoothed

    schema = predictor.schema
    tracker = FaceTracker(predictor) if track else None
    step = tracker or predictor.predict_arrays
    tracks, filters = FaceTracks(), {}
    with contextlib.ExitStack() as stack:
        container, stream = stack.enter_context(open_video(path))
        head = {"video": str(path), "model": str(predictor.trained.model_dir), "width": stream.width, "height": stream.height,
                "fps": frame_rate(stream), "smooth": smooth, "tracking": track}
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
                        *[f"{p}_{axis}" for p in schema.points for axis in "xy"], "face_confidence",
                        *[f"{p}_confidence" for p in schema.points]])
        doc.write(strict_json(head)[:-1] + ', "frames": [\n')  # then one frame a line
        for index, t, image in stack.enter_context(contextlib.closing(frames(path, container, stream))):
            faces, boxes, pts, conf = step(image)
            numbers = tracks.follow(boxes)
            if smooth is not None and faces:
                pts = smoothed(filters, smooth, numbers, pts, t)
            entries = [{"face": k, **face.to_json()} for k, face in zip(numbers, predictor.as_faces(faces, pts, conf))]
            for e in entries:
                confidence = e["confidence"] or dict.fromkeys(schema.points, "")  # empty cells: the model gives none
                table.writerow([index, round(t, 4), e["face"], *(e["box"] + [0.0])[:4], e["score"],
                                *[v for xy in e["keypoints"].values() for v in xy],
                                "" if e["face_confidence"] is None else e["face_confidence"], *confidence.values()])
            doc.write(("," if index else "") + strict_json({"frame": index, "time": round(t, 4), "faces": entries}) + "\n")
            if writer:
                writer.write(np.asarray(overlay.draw_faces(np.asarray(image), pts, boxes)))
            summary.update(frames=index + 1, faces=summary["faces"] + len(faces),
                           frames_without_face=summary["frames_without_face"] + (not faces))
            progress.advance(task)
        doc.write("]}\n")
        summary["detector_frames"] = tracker.detections if tracker else summary["frames"]
        if not summary["frames"]:
            raise KpbenchError(f"{path}: no video frames")
        declared = int(stream.frames or 0)
        if declared and summary["frames"] < declared - 1:  # FFmpeg skips what it cannot decode
            log.warning(f"kpbench: warning: {path}: {summary['frames']} of the {declared} frames its header "
                        f"declares could be decoded (the file may be damaged or cut short)")
    log.info(f"{path}: {summary['frames']} frames, {summary['faces']} face(s) "
             f"({summary['frames_without_face']} frames without a face)")
    return summary
