"""Tracking against detecting on every frame, smoothed or not, on real faces moving at a real frame rate:

    python benchmarks/video_track.py [--model RUN] [--clips 20] [--frames 60] [--threads 2] [--json OUT]
        [--end-to-end N [--end-to-end-size W H]]
    python benchmarks/video_track.py --prior-weights 0 0.25 0.5 0.75 --clips 60 --frames 40 --split val [--dataset D]

The shared annotated faces are photos and 3-frame clips, so the "videos" are made: each clip is one
held-out photo (the test split of ``ibug:../shared/data/300w-helen-train``, split as ``wild.yaml``
splits it) filmed by a hand-held camera: a 256 x 256 window that drifts (6 % of the face's size),
zooms (+-8 %) and re-encodes every frame as JPEG (quality 80), ``--frames`` frames at 30 fps,
the annotation carried through the same transform. Each clip goes through kpbench's video path
with tracking (:class:`kpbench.predictor.FaceTracker`, ``kpbench predict`` on a video) and with
the detector on every frame (``--detect-every-frame``), each with the face's shape smoothed as
``kpbench predict`` smooths it (:class:`kpbench.video.ShapeFilter`) and without (``--no-smooth``),
and through MediaPipe Face Mesh in video mode (its own tracker) and static mode. Printed per path:
NME (15 points, inter-ocular), jitter (the registered ``jitter`` metric: the frame-to-frame change
of the error) and its two parts (of the error's mean over the points, the face's place; and of the
rest, its shape), ms per frame and the share of frames the detector ran on.

A filmed photo's shape never changes, which flatters smoothing the shape. So a second table
measures what the filter costs where the shape does change: the shared YouTube Faces clips' own
annotated shapes (3 frames of one person each), each held 5 frames and turning into the next over
``--change`` frames at 30 fps, with per-frame noise on the shape as large as the model's own
flicker on the filmed clips (measured above, unsmoothed tracking), predicted by nothing: the
annotation plus that noise, smoothed and not.

``--prior-weights W ...`` prints instead the tracked, smoothed path's NME and jitter with the
track's box drawn each ``W`` of the way from the detector's place around the points to the
training crops' (``FaceTracker``'s ``prior_weight``), beside detecting on every frame; with
``--dataset`` and ``--split val`` on the validation faces of another photo set, as the weight was
chosen.

``--end-to-end N`` also writes the first ``N`` frames of the filmed clips as one .mp4 (kpbench's
own writer) and times what a user runs on it: ``kpbench predict clip.mp4`` (no overlay: decode,
track, smooth, write CSV and JSON) less ``kpbench predict`` on one photo (start-up), against
MediaPipe video mode on the same frames decoded by PyAV in this process, ms per frame of each (the
best of three interleaved rounds). ``--end-to-end-size 1280 720`` writes those frames as 720p
instead: each scaled to 720 x 720 px and centred in 1280 x 720 (the face about 500 px wide)."""

from __future__ import annotations

import argparse
import csv
import io
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from kpbench.components import load_dataset
from kpbench.data import split_dataset
from kpbench.evaluate import MetricContext, aggregate, match_face
from kpbench.keypoints import convert, get_schema
from kpbench.plugins import get_plugins
from kpbench.predictor import PRIOR_WEIGHT, SHIPPED, FaceTracker, Predictor
from kpbench.geometry import centre_and_spread
from kpbench.video import SMOOTH, FaceTracks, VideoWriter, open_video, smoothed
from video_jitter import smooth_clips  # the sibling script: each clip's points smoothed in frame order

SIZE, FPS = 256, 30.0
HELEN = "ibug:../shared/data/300w-helen-train"


def film(photo: np.ndarray, points: np.ndarray, frames: int, rng: np.random.Generator):
    """One photo as a hand-held clip: (frames, SIZE, SIZE, 3) uint8 and the points in each frame."""
    lo, hi = np.nanmin(points, 0), np.nanmax(points, 0)
    side0, centre0 = 1.6 * float((hi - lo).max()), (lo + hi) / 2
    phase = rng.uniform(0, 2 * np.pi, 3)
    images, pts = [], []
    for t in range(frames):
        u = 2 * np.pi * t / FPS
        side = side0 * (1 + 0.08 * np.sin(0.7 * u + phase[0]))
        cx, cy = centre0 + 0.06 * side0 * np.array([np.sin(0.9 * u + phase[1]), np.cos(0.6 * u + phase[2])])
        x0, y0, k = cx - side / 2, cy - side / 2, SIZE / side
        frame = Image.fromarray(photo).transform((SIZE, SIZE), Image.AFFINE, (1 / k, 0, x0, 0, 1 / k, y0),
                                                 Image.BILINEAR)
        buf = io.BytesIO()
        frame.save(buf, "JPEG", quality=80)
        images.append(np.asarray(Image.open(buf).convert("RGB")))
        pts.append((points + 0.5 - [x0, y0]) * k - 0.5)
    return images, np.stack(pts)


def held_out_clips(n: int, frames: int, dataset: str = HELEN, split: str = "test"):
    """The first ``n`` faces of ``dataset``'s test (or validation) split, split as ``wild.yaml``
    splits it, each filmed (:func:`film`)."""
    plugins = get_plugins()
    data = load_dataset(plugins, dataset, {})
    held = split_dataset(data, [0.7, 0.15, 0.15], 0)[2 if split == "test" else 1][:n]
    rng = np.random.default_rng(0)
    return [film(s.image, s.points.astype(np.float64), frames, rng) for s in (data[int(i)] for i in held)]


def prior_weights(predictor: Predictor, clips, weights: list[float]) -> list[dict]:
    """Tracked and smoothed (``kpbench predict``'s default) with the track's box drawn each of
    ``weights`` of the way to the training crops' place (``FaceTracker``'s ``prior_weight``), and
    detecting on every frame, smoothed: NME and jitter of each."""
    rows = [{"path": f"tracking, prior weight {w:g}", **scores(kpbench_path(predictor, clips, True, SMOOTH, w)[0], clips)}
            for w in weights]
    rows.append({"path": "every frame", **scores(kpbench_path(predictor, clips, False, SMOOTH)[0], clips)})
    return rows


def kpbench_path(predictor: Predictor, clips, track: bool, smooth: dict | None = None,
                 prior_weight: float = PRIOR_WEIGHT):
    """Every frame of every clip through ``predictor`` (tracking, with ``prior_weight``, or
    detecting on every frame; with ``smooth``, each face's shape smoothed as ``kpbench predict``
    does)."""
    preds, seconds, detected = [], 0.0, 0
    for images, truth in clips:
        step = FaceTracker(predictor, prior_weight=prior_weight) if track else predictor.predict_arrays
        tracks, filters = FaceTracks(), {}
        for index, (image, true) in enumerate(zip(images, truth)):
            t = time.perf_counter()
            _, boxes, pts, _ = step(image)
            if smooth is not None and len(pts):
                pts = smoothed(filters, smooth, tracks.follow(boxes), pts, index / FPS)
            seconds += time.perf_counter() - t
            preds.append(annotated_face(pts, convert(true, "ibug68", "kaggle15")))
        detected += step.detections if track else len(images)
    return np.stack(preds), seconds, detected


def mesh_points(face, width: int, height: int) -> np.ndarray:
    """A MediaPipe Face Mesh face's 15 points in pixels (through its 68 iBUG points)."""
    from kpbench_plugins.mediapipe_ref import MESH_TO_IBUG68

    p68 = np.array([(face.landmark[i].x * width, face.landmark[i].y * height) for i in MESH_TO_IBUG68]) - 0.5
    return convert(p68, "ibug68", "kaggle15")


def mediapipe_path(clips, video_mode: bool):
    import mediapipe as mp

    preds, seconds = [], 0.0
    for images, truth in clips:
        mesh = mp.solutions.face_mesh.FaceMesh(static_image_mode=not video_mode, max_num_faces=1)
        for image, true in zip(images, truth):
            t = time.perf_counter()
            found = mesh.process(image).multi_face_landmarks
            seconds += time.perf_counter() - t
            preds.append(mesh_points(found[0], SIZE, SIZE) if found else np.full((15, 2), np.nan))
        mesh.close()
    return np.stack(preds), seconds, len(clips) * len(clips[0][0])


def scores(pred, clips) -> dict:
    true = np.concatenate([convert(t, "ibug68", "kaggle15") for _, t in clips])
    frames = [(c, k) for c, (images, _) in enumerate(clips) for k in range(len(images))]
    return scored(pred, true, frames)


def scored(pred: np.ndarray, true: np.ndarray, frames: list) -> dict:
    """NME, jitter and jitter's two parts: of the error's mean over the points (where the face is)
    and of the error less that mean (its shape); and the share of frames missed."""
    ctx = MetricContext(schema=get_schema("kaggle15"), boxes=np.zeros((len(true), 3)), frames=frames)
    metrics = get_plugins().metrics
    err = pred - true
    place = np.repeat(err.mean(axis=1, keepdims=True), err.shape[1], axis=1)
    jitter = {name: aggregate(metrics.get("jitter")(true + e, true, ctx), "mean")
              for name, e in (("jitter", err), ("jitter_place", place), ("jitter_shape", err - place))}
    return {"nme": aggregate(metrics.get("nme")(pred, true, ctx), "mean"), **jitter,
            "missed": float(np.isnan(pred).any(axis=(1, 2)).mean())}


def shape_noise(pred: np.ndarray, clips) -> float:
    """The model's flicker on a still shape: the RMS over frames, points and axes of each clip's
    shape error (points about their centroid, in units of their spread) less its mean over the clip."""
    true = np.concatenate([convert(t, "ibug68", "kaggle15") for _, t in clips])
    dev, i = [], 0
    for images, _ in clips:
        e = np.stack([_shape(p) - _shape(t) for p, t in zip(pred[i:i + len(images)], true[i:i + len(images)])])
        dev.append(e - e.mean(axis=0))
        i += len(images)
    return float(np.sqrt(np.mean(np.concatenate(dev) ** 2)))


def _shape(points: np.ndarray) -> np.ndarray:
    centre, spread = centre_and_spread(points)
    return (points - centre) / spread


def youtube_clips() -> list[list[np.ndarray]]:
    """The shared YouTube clips' annotated 15 points, frame by frame (read once, used per ``--change``)."""
    data = load_dataset(get_plugins(), "folder68:../shared/data/youtube-faces-68", {})
    clips: dict = {}
    for s in (data[i] for i in range(len(data))):
        clips.setdefault(s.frame[0], {})[s.frame[1]] = convert(s.points.astype(np.float64), "ibug68", "kaggle15")
    return [[members[k] for k in sorted(members)] for members in clips.values()]


def changing_shapes(clips: list[list[np.ndarray]], change: int, noise: float, hold: int = 5):
    """Those clips' shapes at a real rate: each held ``hold`` frames and turning linearly into the
    next over ``change`` frames, placed where and as large as the clip's first; (points per frame,
    the same with Gaussian noise of ``noise`` spreads on every coordinate (seed 0), (clip, frame)
    per frame)."""
    rng = np.random.default_rng(0)
    true, frames = [], []
    for c, shapes in enumerate(clips):
        centre, spread = centre_and_spread(shapes[0])
        qs = [_shape(p) for p in shapes]
        path = [qs[0]] * hold
        for a, b in zip(qs, qs[1:]):
            path += [a + (b - a) * (j + 1) / change for j in range(change)] + [b] * hold
        true += [centre + spread * q for q in path]
        frames += [(c, k) for k in range(len(path))]
    true = np.stack(true)
    spreads = np.array([centre_and_spread(p)[1] for p in true])
    return true, true + noise * spreads[:, None, None] * rng.standard_normal(true.shape), frames


def framed(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """``image`` (square) scaled to ``height`` x ``height`` px and centred on a black ``width`` x
    ``height`` frame: the filmed clip as a larger video would hold it."""
    if image.shape[:2] == (height, width):
        return image
    out = np.zeros((height, width, 3), np.uint8)
    left = (width - height) // 2
    out[:, left:left + height] = np.asarray(Image.fromarray(image).resize((height, height), Image.BILINEAR))
    return out


def end_to_end(model: str, clips, n: int, size: tuple[int, int] = (SIZE, SIZE), repeat: int = 3) -> dict:
    """ms per frame of ``kpbench predict`` on an ``n``-frame .mp4 of the filmed clips (each frame
    :func:`framed` at ``size``, width and height; less its start-up, timed on one photo; its own
    threads: all cores) and of PyAV decoding + MediaPipe video mode on that file, each the best of
    ``repeat`` interleaved rounds; and the NME of what each found (kpbench: its CSV)."""
    import mediapipe as mp

    images = [framed(im, *size) for c, _ in clips for im in c][:n]
    scale, left = size[1] / SIZE, (size[0] - size[1]) // 2  # the filmed frame's place in the larger one
    true = [convert((t + 0.5) * scale - 0.5 + [left, 0], "ibug68", "kaggle15") for _, ts in clips for t in ts][:n]
    index = [(c, k) for c, (ims, _) in enumerate(clips) for k in range(len(ims))][:n]
    with tempfile.TemporaryDirectory() as tmp:
        clip, photo = Path(tmp) / "clip.mp4", Path(tmp) / "photo.png"
        writer = VideoWriter(clip, FPS, *size)
        for im in images:
            writer.write(im)
        writer.close()
        Image.fromarray(images[0]).save(photo)

        def predict(path, out):
            t = time.perf_counter()
            chosen = [] if model == str(SHIPPED) else ["--model", model]  # the shipped: its graph, as a user runs it
            subprocess.run([sys.executable, "-m", "kpbench", "predict", str(path), *chosen,
                            "--out", str(Path(tmp) / out)], check=True, capture_output=True)
            return time.perf_counter() - t

        def mediapipe():
            mesh = mp.solutions.face_mesh.FaceMesh(static_image_mode=False, max_num_faces=1)
            t = time.perf_counter()
            with open_video(clip) as (container, stream):  # PyAV's frames as RGB, one after another
                found = [mesh.process(frame.to_ndarray(format="rgb24")).multi_face_landmarks
                         for frame in container.decode(stream)]
            seconds = time.perf_counter() - t
            mesh.close()
            return seconds, found

        predict(photo, "warm")  # the graph cache and the page cache, as on a user's second run
        # Best of `repeat` rounds of each, interleaved: one start-up's spread (about a second here)
        # would move a 600-frame figure by 1-2 ms a frame.
        rounds = [(predict(photo, f"photo{r}"), predict(clip, f"clip{r}"), mediapipe()) for r in range(repeat)]
        start, whole = min(r[0] for r in rounds), min(r[1] for r in rounds)
        mediapipe_s = min(r[2][0] for r in rounds)
        found = rounds[-1][2][1]
        kp = predicted_faces(Path(tmp) / f"clip{repeat - 1}" / "clip.csv", n)
    mesh_faces = [np.stack([mesh_points(face, *size) for face in f]) if f else np.zeros((0, 15, 2)) for f in found]
    nme = {name: scored(np.stack([annotated_face(f, t) for f, t in zip(faces, true)]), np.stack(true), index)["nme"]
           for name, faces in (("kpbench", kp), ("mediapipe", mesh_faces))}
    return {"frames": n, "size": list(size), "rounds": repeat, "kpbench_predict_ms": 1000 * (whole - start) / n, "startup_s": start,
            "mediapipe_pyav_ms": 1000 * mediapipe_s / n, "mediapipe_found": sum(map(bool, found)) / n,
            "kpbench_nme": nme["kpbench"], "mediapipe_nme": nme["mediapipe"]}


def annotated_face(faces: np.ndarray, true: np.ndarray) -> np.ndarray:
    """The one of a frame's faces (faces, 15, 2) that its annotation describes, else NaN (a miss)."""
    k = match_face(list(faces), true)
    return faces[k] if k is not None else np.full((15, 2), np.nan)


def predicted_faces(csv_path: Path, n: int) -> list[np.ndarray]:
    """Each of the first ``n`` frames' faces (faces, 15, 2) as ``kpbench predict`` wrote them in its CSV."""
    names = get_schema("kaggle15").points
    faces = [[] for _ in range(n)]
    with csv_path.open(newline="") as fh:
        for row in csv.DictReader(fh):
            if row[f"{names[0]}_x"] != "" and int(row["frame"]) < n:
                faces[int(row["frame"])].append([(float(row[f"{p}_x"]), float(row[f"{p}_y"])) for p in names])
    return [np.reshape(np.array(f, np.float64), (-1, 15, 2)) for f in faces]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(SHIPPED))
    ap.add_argument("--detector", default=None)
    ap.add_argument("--clips", type=int, default=20)
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--change", type=int, nargs="+", default=[3, 8],
                    help="frames a shape takes to change in the second table (30 fps)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--end-to-end", type=int, default=0, metavar="N",
                    help="also time kpbench predict on an N-frame .mp4 against PyAV + MediaPipe video mode")
    ap.add_argument("--end-to-end-size", type=int, nargs=2, default=[SIZE, SIZE], metavar=("W", "H"),
                    help="that .mp4's frames: each filmed frame scaled to H x H and centred (e.g. 1280 720)")
    ap.add_argument("--dataset", default=HELEN, help="the photos filmed (an ibug: or folder68: dataset)")
    ap.add_argument("--split", choices=["test", "val"], default="test", help="which held-out split's faces")
    ap.add_argument("--prior-weights", type=float, nargs="+", metavar="W",
                    help="instead: NME and jitter of tracking with each weight of the training crops' place")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    clips = held_out_clips(args.clips, args.frames, args.dataset, args.split)
    predictor = Predictor(args.model, detector=args.detector)
    predictor.predict_arrays(clips[0][0][0])  # warm up
    if args.prior_weights:
        print(f"{args.clips} clips x {args.frames} frames of {args.dataset} ({args.split} split); {predictor!r}")
        for r in prior_weights(predictor, clips, args.prior_weights):
            print(f"{r['path']:32s} NME {r['nme']:.5f}  jitter {r['jitter']:.5f}  missed {r['missed']:.1%}")
        return
    rows, kp = [], f"kpbench {predictor.detector_name}"
    for name, run in ((f"{kp}, tracking (predict's default)", lambda: kpbench_path(predictor, clips, True, SMOOTH)),
                      (f"{kp}, tracking, --no-smooth", lambda: kpbench_path(predictor, clips, True)),
                      (f"{kp}, every frame", lambda: kpbench_path(predictor, clips, False, SMOOTH)),
                      (f"{kp}, every frame, --no-smooth", lambda: kpbench_path(predictor, clips, False)),
                      ("MediaPipe Face Mesh, video mode", lambda: mediapipe_path(clips, True)),
                      ("MediaPipe Face Mesh, static mode", lambda: mediapipe_path(clips, False))):
        pred, seconds, detected = run()
        frames = len(pred)
        row = {"path": name, **scores(pred, clips), "ms_per_frame": 1000 * seconds / frames,
               "detector_frames": detected / frames}
        if name.endswith("tracking, --no-smooth"):
            noise = row["shape_noise"] = shape_noise(pred, clips)
        rows.append(row)
    print(f"{args.clips} clips x {args.frames} frames ({SIZE} px, {FPS:.0f} fps, made from held-out HELEN photos); "
          f"{predictor!r}; {args.threads} threads; {platform.processor() or platform.machine()}")
    print(f"{'path':48s} {'NME':>7s} {'jitter':>7s} {'(place':>7s} {'shape)':>7s} {'missed':>7s} {'ms/frame':>9s} "
          f"{'detector':>9s}")
    for r in rows:
        print(f"{r['path']:48s} {r['nme']:7.4f} {r['jitter']:7.4f} {r['jitter_place']:7.4f} {r['jitter_shape']:7.4f} "
              f"{r['missed']:7.1%} {r['ms_per_frame']:9.2f} {r['detector_frames']:9.1%}")
    changes = []
    print(f"\nShapes that change (the YouTube clips' annotations, noise {noise:.4f} spreads: the model's own "
          f"shape flicker, unsmoothed tracking, above)")
    print(f"{'change over':12s} {'points':24s} {'NME':>7s} {'jitter':>7s}")
    shapes = youtube_clips()
    for change in args.change:
        true, noisy, frames = changing_shapes(shapes, change, noise)
        for name, pts in (("as given (--no-smooth)", noisy), ("smoothed", smooth_clips(noisy, frames, SMOOTH, FPS))):
            r = {"change_frames": change, "points": name, **scored(pts, true, frames)}
            changes.append(r)
            print(f"{1000 * change / FPS:6.0f} ms    {name:24s} {r['nme']:7.4f} {r['jitter']:7.4f}")
    e2e = end_to_end(args.model, clips, args.end_to_end, tuple(args.end_to_end_size)) if args.end_to_end else None
    if e2e:
        print(f"\nEnd to end on a {e2e['frames']}-frame {e2e['size'][0]} x {e2e['size'][1]} .mp4 (best of {e2e['rounds']} rounds): kpbench predict {e2e['kpbench_predict_ms']:.2f} "
              f"ms a frame after its start-up ({e2e['startup_s']:.1f} s); PyAV + MediaPipe video mode "
              f"{e2e['mediapipe_pyav_ms']:.2f} ms a frame: {e2e['kpbench_predict_ms'] / e2e['mediapipe_pyav_ms']:.2f}x; "
              f"NME {e2e['kpbench_nme']:.4f} against {e2e['mediapipe_nme']:.4f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"clips": args.clips, "frames": args.frames, "threads": args.threads, "smooth": SMOOTH,
                       "rows": rows, "changing_shapes": changes, "end_to_end": e2e}, fh, indent=1, allow_nan=False)


if __name__ == "__main__":
    main()
