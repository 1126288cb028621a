"""Does the heatmap head lose accuracy in how its points are read out? Before building a head that
keeps more resolution (PIPNet's heatmap plus offsets), measure what the readout costs:

    python benchmarks/heatmap_readout.py [--model RUN] [--split test|val] [--json OUT.json]

On the run's own test split (or ``--split val``), cut by the annotated box as ``kpbench evaluate
--detector gt-box`` cuts them (run from the project root: the run config's dataset paths are
relative to it), one forward of an ``effnet-heatmap`` model (no flip averaging), its heatmaps read
out several ways and each scored with kpbench's ``nme`` metric:

- ``soft-argmax`` over the whole map: what the model does (its training readout);
- ``local soft-argmax, r cells``: the same, over the (2r+1)^2 cells around the map's peak only,
  so mass far from the peak cannot pull the point towards it (the heatmap-plus-offset idea without
  training an offset head);
- ``peak cell``: the centre of the highest cell, the readout an offset head starts from;
- ``annotation on the grid``: the annotated points moved to their cell's centre, the error of a
  perfect peak with no sub-cell readout at all (what an offset head exists to remove).

If the local readouts are level with the global one, the heatmaps are sharp and unimodal where
they matter, and a higher-resolution readout has nothing to recover: the error is in where the
peak is. Default model: the one kpbench ships.
"""

from __future__ import annotations

import torch
from held_out import model_and_options

from kpbench.evaluate import points_origin, score
from kpbench.io import atomic_write_json
from kpbench.trained import held_out_faces
from kpbench_plugins.models import pixel_centres, soft_argmax


def peak_rows_cols(h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The row and column of each map's highest cell, each (B, K), of heatmaps (B, K, H, W)."""
    peak = h.flatten(2).argmax(-1)
    return peak // h.shape[-1], peak % h.shape[-1]


def near_peak(h: torch.Tensor, r: int) -> torch.Tensor:
    """Heatmap logits (B, K, H, W) with every cell farther than ``r`` cells (x or y) from each
    map's highest cell set to -inf, so a softmax over them is the peak's neighbourhood alone."""
    py, px = (i[..., None, None] for i in peak_rows_cols(h))
    rows = torch.arange(h.shape[-2], device=h.device)[:, None]
    cols = torch.arange(h.shape[-1], device=h.device)[None, :]
    keep = ((rows - py).abs() <= r) & ((cols - px).abs() <= r)
    return h.masked_fill(~keep, float("-inf"))


def peak_cell(h: torch.Tensor) -> torch.Tensor:
    """The centre of each map's highest cell, (B, 2K) in [0, 1] of the crop."""
    b, k, hh, ww = h.shape
    py, px = peak_rows_cols(h)
    return torch.stack([pixel_centres(ww, h)[px], pixel_centres(hh, h)[py]], -1).reshape(b, 2 * k)


def on_grid(targets: torch.Tensor, cells: int) -> torch.Tensor:
    """Targets (B, K, 2) in [0, 1] moved to the centre of the cell of a ``cells``-wide grid they fall in."""
    return ((targets * cells).floor().clamp(0, cells - 1) + 0.5) / cells


def main() -> None:
    args, plugins, trained = model_and_options(__doc__)
    net = trained.model.net
    if not hasattr(net, "heatmaps"):
        raise SystemExit(f"{args.model}: its model has no heatmaps to read out (effnet-heatmap has)")
    faces = held_out_faces(trained, plugins, args.split)
    model = trained.model.eval()
    with torch.inference_mode():
        h = torch.cat([net.heatmaps(faces.images[i:i + 64]) for i in range(0, len(faces), 64)])
    cells = h.shape[-1]
    readouts = [("soft-argmax", soft_argmax(h))]
    readouts += [(f"local soft-argmax, r {r}", soft_argmax(near_peak(h, r))) for r in (1, 2, 3, 5)]
    readouts += [("peak cell", peak_cell(h)), ("annotation on the grid", on_grid(faces.targets, cells))]
    nme = [plugins.metrics.get("nme", where="heatmap_readout")]
    peak_mass = h.flatten(2).softmax(-1).amax(-1).mean().item()
    print(f"{args.model}: {len(faces)} {args.split} faces, annotated box, heatmaps {cells}x{cells} "
          f"({trained.input_size // cells} px a cell), mean mass of the highest cell {peak_mass:.3f}")
    out = {"model": str(args.model), "split": args.split, "faces": len(faces), "cells": cells,
           "peak_mass": peak_mass, "nme": {}}
    for name, pred in readouts:
        _, values, _ = score(pred.reshape(len(faces), -1, 2).numpy(), faces, trained.schema, nme, points_origin(model))
        out["nme"][name] = values["nme"]
        print(f"  {name:26s} NME {values['nme']:.4f}")
    if args.json:
        atomic_write_json(args.json, out)


if __name__ == "__main__":
    main()
