"""Test-time flip averaging, measured: is a model's prediction on the mirrored crop worth averaging in?

    python benchmarks/flip_test.py [--model RUN] [--split test|val] [--shift PX] [--threads 2] [--json OUT.json]

On the run's own test split (``--split val``: its validation split; the faces it held out, cut by the annotated box as ``kpbench
evaluate --detector gt-box`` cuts them; run from the project root, the run config's dataset paths
are relative to it), with the model's flip averaging off, three predictions per face: the plain
one, the mirrored crop's mirrored back (left/right points swapped, x -> 1 - x), and their average
(what ``eval.flip_test: true`` gives). For each: the NME (kpbench's ``nme`` metric) and the mean
signed x and y offset of its points, as the model reports them (numbered from its ``origin``),
from the annotated ones, in the photos' pixels, over all faces and by face size (the crop's side:
an offset from how a format numbers pixels is the same at every size, see ``Sample.origin``).
Also the batch-1 forward time of one crop and of the pair, in PyTorch (median of 50 after 5
warm-up calls). Default model: the one kpbench ships.
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import torch
from held_out import model_and_options

from kpbench.evaluate import points_origin, score
from kpbench.io import atomic_write_json
from kpbench.trained import held_out_faces


SIZES = ((0, 150), (150, 250), (250, 400), (400, 100000))  # crop sides, px


def forward_ms(model, x: torch.Tensor, n: int = 50) -> float:
    with torch.inference_mode():
        for _ in range(5):
            model(x)
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def main() -> None:
    args, plugins, trained = model_and_options(__doc__, shift={
        "type": float, "default": 0.0, "help": "also score the average moved this many pixels right (what an x offset costs)"})
    schema = trained.schema
    test = held_out_faces(trained, plugins, args.split)
    model = trained.model.eval()
    model.flip_test = None
    perm = list(schema.flip_permutation)
    nme = [plugins.metrics.get("nme", where="flip_test")]
    with torch.inference_mode():
        plain = model(test.images).numpy()
        mirrored = model(test.images.flip(-1)).numpy()[:, perm]
    mirrored[..., 0] = 1 - mirrored[..., 0]
    out = {"model": str(args.model), "split": args.split, "faces": len(test), "threads": args.threads}
    print(f"{args.model}: {len(test)} {args.split} faces, annotated box")
    side = test.boxes[:, 2]
    rows = [("plain", plain), ("mirrored back", mirrored), ("average (flip_test)", (plain + mirrored) / 2)]
    if args.shift:
        moved = rows[-1][1].copy()
        moved[..., 0] += args.shift / side[:, None]  # px -> crop fractions (an upright box)
        rows.append((f"average {args.shift:+g} px in x", moved))
    for name, pred in rows:
        pred_px, values, _ = score(pred, test, schema, nme, points_origin(model))
        offset = np.nanmean(pred_px - test.points, axis=1)  # (N, 2) px
        by_size = {}
        for lo, hi in SIZES:
            faces = (side >= lo) & (side < hi)
            if faces.any():
                by_size[f"{lo}-{hi} px"] = {"faces": int(faces.sum()), "x_px": float(offset[faces, 0].mean()),
                                            "y_px": float(offset[faces, 1].mean())}
        out[name] = {"nme": values["nme"], "offset_x_px": float(offset[:, 0].mean()),
                     "offset_y_px": float(offset[:, 1].mean()), "offset_by_face_size": by_size}
        print(f"  {name:20s} NME {values['nme']:.4f}   mean offset x {offset[:, 0].mean():+.2f} px  "
              f"y {offset[:, 1].mean():+.2f} px;  x by crop side: "
              + ", ".join(f"{k} ({v['faces']}) {v['x_px']:+.2f}" for k, v in by_size.items()))
    one = test.images[:1]
    out["forward_ms"] = {"one": forward_ms(model, one), "pair": forward_ms(model, torch.cat([one, one.flip(-1)]))}
    print(f"  forward, batch 1: {out['forward_ms']['one']:.2f} ms; with its mirror: {out['forward_ms']['pair']:.2f} ms")
    if args.json:
        atomic_write_json(args.json, out)


if __name__ == "__main__":
    main()
