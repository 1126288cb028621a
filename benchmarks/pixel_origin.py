"""How each annotated set numbers its pixels, measured: where dlib's points sit against the annotations.

    python benchmarks/pixel_origin.py [--dataset kind:path ...] [--faces 250] [--json OUT.json]

dlib (its HOG detector upsampling once, then the 68-point shape predictor, as its users run it) on
about ``--faces`` photos of each dataset spread evenly through it (run from the project root: the
default datasets are the shared YouTube Faces frames and HELEN photos, ../shared/data). For each
found face whose NME is under 0.1 (gross failures left out), the mean signed offset of its 68
points from the annotated ones; then the mean over faces, in pixels, with its standard error.
dlib is the same model on every set, so two sets whose offsets agree number their pixels alike
(``Sample.origin``, the ``origin`` option of ``folder68`` and ``ibug``): the shared YouTube CSV
and the 300-W .pts files do (-1.33, -0.65 px and -1.43, -0.79 px on the 2-core development machine; standard
errors 0.06-0.07 px). dlib's points are whole pixels, so its rounding adds noise, not an offset.
"""

from __future__ import annotations

import argparse

import numpy as np

from kpbench.evaluate import match_face
from kpbench.io import atomic_write_json
from kpbench.plugins import get_plugins

DEFAULT = ["folder68:../shared/data/youtube-faces-68", "ibug:../shared/data/300w-helen-train"]


def dlib_offsets(dataset, faces: int) -> np.ndarray:
    """(F, 2): per face dlib found (NME < 0.1), its points' mean offset from the annotation, px."""
    from kpbench_plugins.dlib68 import Dlib68

    dlib = Dlib68(68, 128)
    out = []
    for i in range(0, len(dataset), max(1, len(dataset) // faces)):
        s = dataset[i]
        found = [np.asarray(f) for f in dlib.photo_keypoints(s.image)]
        k = match_face(found, s.points)
        if k is None:
            continue
        d = found[k] - s.points
        if np.nanmean(np.linalg.norm(d, axis=-1)) < 0.1 * np.linalg.norm(s.points[36] - s.points[45]):
            out.append(np.nanmean(d, axis=0))
    return np.asarray(out).reshape(-1, 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", action="append", help="kind:path (repeat; default: the shared YouTube and HELEN sets)")
    ap.add_argument("--faces", type=int, default=250)
    ap.add_argument("--json", help="also write the figures here as strict JSON")
    args = ap.parse_args()
    plugins = get_plugins()
    rows = {}
    for spec in args.dataset or DEFAULT:
        kind, _, path = spec.partition(":")
        d = dlib_offsets(plugins.datasets.get(kind).factory(path), args.faces)
        se = d.std(axis=0) / np.sqrt(max(len(d), 1))
        rows[spec] = {"faces": len(d), "dx_px": float(d[:, 0].mean()), "dy_px": float(d[:, 1].mean()),
                      "se_dx_px": float(se[0]), "se_dy_px": float(se[1])}
        print(f"{spec}: {len(d)} faces, dlib's points sit dx {rows[spec]['dx_px']:+.2f} dy {rows[spec]['dy_px']:+.2f} px "
              f"from the annotations (standard errors {se[0]:.2f}, {se[1]:.2f})")
    if args.json:
        atomic_write_json(args.json, rows)


if __name__ == "__main__":
    main()
