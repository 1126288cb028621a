"""Jitter and NME of a run's test predictions on video clips, as predicted and One-Euro smoothed
(README, "Video"):

    python benchmarks/video_jitter.py RUN [--model NAME] [--fps 25 ...] [--smooth-options YAML] [--out FILE.json]

Reads ``RUN/models/<model>/predictions.npz`` (the test faces' predictions in the images' pixels,
the annotations, face boxes and sample ids), groups the frames into clips by their names
(:func:`kpbench_plugins.datasets.clip_frame`: the shared YouTube Faces frames come in clips of
three), runs each clip's predictions through the filter ``kpbench predict`` smooths videos with
(:class:`kpbench.video.ShapeFilter`, frames ``1 / fps`` seconds apart) and scores both with the registered ``nme`` and ``jitter`` metrics. ``motion`` is the annotated
points' own mean frame-to-frame displacement over the inter-ocular distance (``jitter`` of a
prediction fixed at zero), for scale. Nothing is re-predicted: the figures are those of the run's
model on its own face boxes.

The shared clips' frames are far apart (see ``motion``), so ``--still N`` also measures what
smoothing is for: each test face held still for N frames (``--fps`` apart), its face box moved
every frame as a detector's box wobbles (side x exp(scale z), centre + shift z x side, z standard
normal, as ``train.box_jitter`` draws it; by default MTCNN's measured spread against the annotated
box, ``wild.yaml``'s box_jitter, an upper bound on frame-to-frame wobble), predicted through
``kpbench predict``'s per-image path (:meth:`kpbench.Predictor.predict_arrays`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import yaml

from kpbench.data import split_dataset
from kpbench.evaluate import MetricContext, aggregate
from kpbench.predictor import Predictor
from kpbench.trained import load_trained
from kpbench.io import atomic_write_json
from kpbench.keypoints import get_schema
from kpbench.plugins import get_plugins
from kpbench.rundir import RunDir
from kpbench.components import load_dataset
from kpbench.video import SMOOTH, ShapeFilter, smoothing
from kpbench_plugins.datasets import clip_frame


def clip_frames(ids) -> list[tuple[str, int]]:
    """(clip, frame index) of each sample id, the clip prefixed by the id's folder (a source name)."""
    return [(f"{Path(i).parent}/{clip}", k) for i in map(str, ids) for clip, k in [clip_frame(i)]]


def smooth_clips(pred: np.ndarray, frames: list[tuple[str, int]], options: dict, fps: float) -> np.ndarray:
    """Each clip's predictions smoothed in frame order, as ``kpbench predict`` smooths a video's."""
    out, clips = pred.copy(), {}
    for i, (c, k) in enumerate(frames):  # one pass: clip -> its (frame, row)s
        clips.setdefault(c, []).append((k, i))
    for members in clips.values():
        f = ShapeFilter(options)
        for k, i in sorted(members):
            out[i] = f(pred[i], k / fps)
    return out


class WobblyBox:
    """A detector that returns ``box`` moved at random each call, as a detector's box wobbles."""

    def __init__(self, box: np.ndarray, rng: np.random.Generator, scale: float, shift: float):
        self.box, self.rng, self.scale, self.shift = np.asarray(box, np.float64), rng, scale, shift

    def detect_all(self, image):
        z = self.rng.standard_normal(3)
        side = self.box[2] * np.exp(self.scale * z[0])
        centre = self.box[:2] + self.box[2] / 2 + self.shift * z[1:] * self.box[2]
        return [{"box": (*(centre - side / 2), side), "score": 1.0}]


def still_clips(run: Path, model: str, settings, boxes: dict, n: int, scale: float, shift: float):
    """Each test face (``boxes``: id -> the run's face box) held still for ``n`` frames under a
    :class:`WobblyBox`: predictions, annotations, boxes and (clip, frame) of every frame."""
    plugins = get_plugins()
    predictor = Predictor.from_trained(load_trained(run / "models" / model, plugins), detector="none",
                                       runtime="torch", plugins=plugins)
    dc = settings.data
    data = load_dataset(plugins, dc.dataset, dc.options)
    rng = np.random.default_rng(0)
    pred, true, used, frames = [], [], [], []
    for i in split_dataset(data, dc.split, settings.run.seed)[2]:
        s = data[int(i)]
        detector = WobblyBox(boxes[s.id], rng, scale, shift)
        for k in range(n):
            _, b, p, _ = predictor.predict_arrays(s.image, detector.detect_all(s.image))
            pred.append(p[0]), true.append(s.points), used.append(b[0]), frames.append((s.id, k))
    return np.stack(pred), np.stack(true).astype(np.float64), np.stack(used), frames


def scores(pred, true, ctx) -> dict:
    metrics = get_plugins().metrics
    return {m: aggregate(np.asarray(metrics.get(m)(pred, true, ctx), float), "mean") for m in ("nme", "jitter")}


def compare(pred, true, boxes, frames, schema, options, fps_list) -> list[dict]:
    """``nme`` and ``jitter`` as predicted and One-Euro smoothed at each frame rate."""
    ctx = MetricContext(schema=schema, boxes=boxes, frames=frames)
    rows = [{"predictions": "as predicted", "fps": None, **scores(pred, true, ctx)}]
    return rows + [{"predictions": "One-Euro smoothed", "fps": fps,
                    **scores(smooth_clips(pred, frames, options, fps), true, ctx)} for fps in fps_list]


def measure(run: Path, model: str | None, fps_list: list[float], options: dict, still: int = 0,
            wobble: tuple[float, float] = (0.075, 0.027)) -> dict:
    settings = RunDir(run).settings()
    model = model or settings.models[0]
    schema = get_schema(settings.data.schema)
    with np.load(run / "models" / model / "predictions.npz") as z:
        pred, true, boxes, ids = z["pred"], z["true"], z["boxes"], z["ids"]
    frames = clip_frames(ids)
    motion = scores(np.zeros_like(true), true, MetricContext(schema=schema, boxes=boxes, frames=frames))["jitter"]
    result = {"run": str(run), "model": model, "dataset": settings.data.dataset, "schema": schema.name,
              "detector": settings.data.detector, "detector_options": settings.data.detector_options,
              "faces": len(ids), "clips": len({c for c, _ in frames}), "pairs": int(sum(k > 0 for _, k in frames)),
              "smooth": options, "motion": motion, "rows": compare(pred, true, boxes, frames, schema, options, fps_list)}
    if still:
        clips = still_clips(run, model, settings, dict(zip(map(str, ids), boxes)), still, *wobble)
        result["still"] = {"frames": still, "fps": fps_list[0], "wobble": {"scale": wobble[0], "shift": wobble[1]},
                           "rows": compare(*clips, schema, options, fps_list[:1])}
    return result


def _table(rows: list[dict]) -> None:
    print(f"{'predictions':<20} {'fps':>5} {'NME':>8} {'jitter':>8}")
    for r in rows:
        print(f"{r['predictions']:<20} {r['fps'] or '':>5} {r['nme']:8.4f} {r['jitter']:8.4f}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path, help="a kpbench run directory")
    ap.add_argument("--model", help="model label (default: the run's first)")
    ap.add_argument("--fps", type=float, nargs="+", default=[25.0], help="frame rates to assume (default 25)")
    ap.add_argument("--smooth-options", default="{}", help=f"YAML mapping over {json.dumps(SMOOTH)}")
    ap.add_argument("--still", type=int, default=0, metavar="N", help="also each test face held still N frames")
    ap.add_argument("--wobble", type=float, nargs=2, default=[0.075, 0.027], metavar=("SCALE", "SHIFT"),
                    help="--still: the face box's per-frame spread (default MTCNN's, 0.075 0.027)")
    ap.add_argument("--out", type=Path, help="also write the result as JSON here")
    args = ap.parse_args(argv)
    result = measure(args.run, args.model, args.fps, smoothing(yaml.safe_load(args.smooth_options) or {}),
                     args.still, tuple(args.wobble))
    print(f"{result['model']} on {result['faces']} test faces ({result['clips']} clips, {result['pairs']} frame pairs) "
          f"of {result['dataset']}, {result['detector']} {result['detector_options']}; annotated motion "
          f"{result['motion']:.4f} inter-ocular distances per frame")
    _table(result["rows"])
    if args.still:
        print(f"each test face held still for {args.still} frames at {args.fps[0]:g} fps, face box wobbling "
              f"(scale {args.wobble[0]}, shift {args.wobble[1]}):")
        _table(result["still"]["rows"])
    if args.out:
        atomic_write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
