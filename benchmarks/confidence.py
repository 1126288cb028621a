"""Whether the confidences mean something: on the test split of a model's run, through a face
detector, the error of the least-confident tenth of the points against the most-confident tenth,
and how well the face confidence flags failed faces (NME > 0.1: the area under the ROC curve of
1 - face confidence as a failure score):

    python benchmarks/confidence.py [--model RUN] [--detector blazeface] [--json OUT]

Errors are each point's distance over the face's inter-ocular distance (the ``nme`` metric's
normalization), on the 15 points the model predicts."""

from __future__ import annotations

import argparse
import json

import numpy as np

from kpbench.evaluate import match_face
from kpbench.formulas import roc_auc
from kpbench.keypoints import convert
from kpbench.plugins import get_plugins
from kpbench.predictor import SHIPPED, Predictor
from kpbench.components import load_splits


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(SHIPPED))
    ap.add_argument("--detector", default=None)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    predictor = Predictor(args.model, detector=args.detector)
    sources, splits = load_splits(get_plugins(), predictor.trained.settings)
    a, b = predictor.schema.norm_pair
    errors, confs, face_conf, face_nme = [], [], [], []
    for i in splits[2]:
        sample = sources[2][int(i)]
        true = convert(np.asarray(sample.points, np.float64), sample.schema, predictor.schema.name)
        faces = predictor(sample.image)
        k = match_face([f.points for f in faces], true)
        if k is None or faces[k].confidence is None:
            continue
        face = faces[k]
        err = np.linalg.norm(face.points - true, axis=1) / np.linalg.norm(true[a] - true[b])
        ok = np.isfinite(err)
        errors.append(err[ok]), confs.append(face.confidence[ok])
        face_conf.append(face.face_confidence), face_nme.append(float(np.nanmean(err)))
    err, conf = np.concatenate(errors), np.concatenate(confs)
    order = np.argsort(conf)
    tenth = max(1, len(order) // 10)
    low, high = float(err[order[:tenth]].mean()), float(err[order[-tenth:]].mean())
    failed = np.array(face_nme) > 0.1
    out = {"model": predictor.label, "detector": predictor.detector_name, "faces": len(face_nme),
           "points": int(len(err)), "error_least_confident_tenth": low, "error_most_confident_tenth": high,
           "ratio": low / high, "confidence_p10_p50_p90": [float(q) for q in np.percentile(conf, [10, 50, 90])],
           "failed_faces": int(failed.sum()),
           "failure_auroc": roc_auc(-np.array(face_conf), failed),
           "spearman_conf_vs_error": float(np.corrcoef(np.argsort(np.argsort(conf)),
                                                       np.argsort(np.argsort(err)))[0, 1])}
    print(json.dumps(out, indent=1))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1, allow_nan=False)


if __name__ == "__main__":
    main()
