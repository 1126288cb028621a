"""The crop's margin at test time, measured: does a model do better on a tighter or looser crop, and
is averaging over margins worth its extra passes?

    python benchmarks/margin_test.py [--model RUN] [--split test|val] [--step 0.05] [--threads 2] [--json OUT.json]

On the run's own test split (``--split val``: its validation split; run from the project root, the
run config's dataset paths are relative to it), each face cut by its annotated box as ``kpbench
evaluate --detector gt-box`` cuts it, with the model's own margin (``data.detector_options.margin``)
and with ``--step`` less and more. For each margin the NME (kpbench's ``nme`` metric, the model's
own flip averaging as its config says), then the NME of the points averaged in the photo's pixels
over the three margins and over each pair with the model's own. A margin the model was not trained
at reads the face at another scale: the box jitter of training (``train.box_jitter.scale``) is
what makes that fair. Default model: the one kpbench ships.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from kpbench.components import load_splits, make_detector
from kpbench.data import points_origin, prepare, to_crop
from kpbench.evaluate import predict, score
from kpbench.io import atomic_write_json
from kpbench.plugins import get_plugins
from kpbench.predictor import SHIPPED
from kpbench.trained import load_trained


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=SHIPPED, help="run folder or model folder (default: the shipped model)")
    ap.add_argument("--split", choices=("test", "val"), default="test")
    ap.add_argument("--step", type=float, default=0.05, help="margin difference tried on each side of the model's own")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, help="also write the figures here as strict JSON")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    plugins = get_plugins()
    trained = load_trained(args.model, plugins)
    options = dict(trained.settings.data.detector_options)
    own = float(options.get("margin", 0.15))
    sources, splits = load_splits(plugins, trained.settings)
    k = {"val": 1, "test": 2}[args.split]
    model, nme = trained.model.eval(), [plugins.metrics.get("nme", where="margin_test")]
    origin = points_origin(model)
    margins = (round(own - args.step, 4), own, round(own + args.step, 4))
    faces, pred_px, out = {}, {}, {"model": str(args.model), "split": args.split, "margins": {}, "averaged": {}}
    for m in margins:
        detect = make_detector(plugins, "gt-box", {**options, "margin": m})
        faces[m] = prepare(sources[k], splits[k], detect, trained.input_size, trained.schema.name)
        pred_px[m], values, _ = score(predict(model, faces[m].images), faces[m], trained.schema, nme, origin)
        out["margins"][str(m)] = values["nme"]
        print(f"margin {m:.3f}{' (its own)' if m == own else ''}: NME {values['nme']:.5f}", flush=True)
    ref = faces[own]
    for combo in (margins, margins[1:], margins[:2]):
        mean_px = np.mean([pred_px[m] for m in combo], axis=0)
        crop = to_crop(mean_px - origin, ref.boxes)  # back to the own margin's crop fractions
        _, values, _ = score(crop, ref, trained.schema, nme, origin)
        name = " + ".join(f"{m:.3f}" for m in combo)
        out["averaged"][name] = values["nme"]
        print(f"averaged over margins {name} ({len(combo)} passes): NME {values['nme']:.5f}")
    if args.json:
        atomic_write_json(args.json, out)


if __name__ == "__main__":
    main()
