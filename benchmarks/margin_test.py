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

import numpy as np
from held_out import model_and_options

from kpbench.components import make_detector
from kpbench.data import points_origin, to_crop
from kpbench.evaluate import predict, score
from kpbench.io import atomic_write_json
from kpbench.trained import held_out_faces


def main() -> None:
    args, plugins, trained = model_and_options(__doc__, step={
        "type": float, "default": 0.05, "help": "margin difference tried on each side of the model's own"})
    own = make_detector(plugins, "gt-box", trained.settings.data.detector_options).margin  # the run's
    model, nme = trained.model.eval(), [plugins.metrics.get("nme", where="margin_test")]
    origin = points_origin(model)
    margins = (round(own - args.step, 4), own, round(own + args.step, 4))
    faces, pred_px, rows = {}, {}, []
    for m in margins:
        faces[m] = held_out_faces(trained, plugins, args.split, margin=m)
        pred_px[m], values, _ = score(predict(model, faces[m].images), faces[m], trained.schema, nme, origin)
        rows.append({"margins": [m], "nme": values["nme"]})
    for combo in (margins, margins[1:], margins[:2]):
        mean_crop = to_crop(np.mean([pred_px[m] for m in combo], axis=0) - origin, faces[own].boxes)
        rows.append({"margins": list(combo), "nme": score(mean_crop, faces[own], trained.schema, nme, origin)[1]["nme"]})
    print(f"{args.model}: {len(faces[own])} {args.split} faces, annotated box, its own margin {own}")
    for row in rows:
        what = " + ".join(f"{m:.3f}" for m in row["margins"])
        print(f"  margin {what:23s} ({len(row['margins'])} pass{'es' * (len(row['margins']) > 1)}): NME {row['nme']:.5f}")
    if args.json:
        atomic_write_json(args.json, {"model": str(args.model), "split": args.split, "own_margin": own, "rows": rows})


if __name__ == "__main__":
    main()
