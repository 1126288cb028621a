"""``kpbench export``: a trained model as an ONNX graph for ONNX Runtime, checked against PyTorch.

The graph takes the model's crops and returns keypoints in crop coordinates, exactly as kpbench's
evaluation path sees them (mean-shape offset, output scale and test-time flip averaging
included); ``<file>.json`` beside it says how crops are made and mapped back, so ``kpbench predict
--model <file>.onnx`` (:func:`kpbench.trained.load_onnx`) cuts the same crops. Needs the optional
extra ``kpbench[onnx]`` (see :mod:`kpbench.runtime`)."""

from __future__ import annotations

from pathlib import Path

import torch

from kpbench.errors import KpbenchError
from kpbench.evaluate import PointsAndConfidence, gives_confidence, points_origin
from kpbench.io import atomic_write_bytes, atomic_write_json
from kpbench.profile import median_seconds
from kpbench.runtime import OPSET, OnnxModel, to_onnx
from kpbench.trained import Trained


def export_onnx(trained: Trained, out: Path, batch: int | None = None) -> dict:
    """Write ``out`` (.onnx) and ``out``.json; returns the sidecar: input/output, schema, crop
    convention, and the check against PyTorch (max abs difference on seeded crops) with both
    batch-1 CPU latencies. ``batch``: a graph of that fixed batch size (1: one face at a time, as
    the Predictor runs them; every shape known, ONNX Runtime folds the shape arithmetic away), else
    any batch."""
    out = Path(out)
    if out.suffix != ".onnx":
        raise KpbenchError(f"--out {out}: give a file name ending in .onnx")
    sidecar_path = out.with_name(out.name + ".json")
    for p in (out, sidecar_path):
        if p.exists():
            raise KpbenchError(f"{p} exists; kpbench never overwrites a file (give a new --out)")
    model, size = trained.model.eval(), trained.input_size
    if gives_confidence(model):  # the points, then a confidence per point: as the Predictor runs it
        model = PointsAndConfidence(model).eval()
    crops = torch.rand(8, 1, size, size, generator=torch.Generator().manual_seed(0))
    graph = to_onnx(model, crops[:batch or 2], trained.label, any_batch=batch is None)
    onnx_model = OnnxModel(graph, torch.get_num_threads())
    with torch.inference_mode():
        want, got = model(crops), onnx_model(crops)
        diff = float((got.reshape(want.shape) - want).abs().max())
        one = crops[:1]  # batch-1 latency: median of 30 runs after 5 warm-up runs
        torch_ms, ort_ms = (median_seconds(lambda: m(one), 5, 30) * 1000 for m in (model, onnx_model))
    schema, plain = trained.schema, not isinstance(model, PointsAndConfidence)
    sidecar = {
        "model": trained.label, "run": str(trained.run_dir), "onnx_opset": OPSET,
        "input": {"name": "crops", "shape": [batch or "batch", 1, size, size], "dtype": "float32",
                  "what": "gray face crops in [0, 1] (0.299 R + 0.587 G + 0.114 B), cut as crop_convention says"},
        "output": {"name": "points", "shape": [batch or "batch", schema.num_points, 2] if plain else
                   [batch or "batch", 3 * schema.num_points],
                   "what": ("" if plain else f"the first {2 * schema.num_points} values, then a confidence in [0, 1] "
                            f"per point: ") +
                           "x, y per point in crop coordinates scaled to [0, 1] (pixel edges): "
                           "photo pixel = x0 + x * side - 0.5 + points_origin for a box (x0, y0, side); "
                           "a turned box (x0, y0, side, angle): kpbench.data.to_image_pixels"},
        "points_origin": points_origin(model),
        "schema": schema.name, "points": list(schema.points),
        "flip_test": getattr(model, "regressor", model).flip_test is not None,
        "crop_convention": trained.convention.to_mapping(),
        "check": {"max_abs_diff_vs_torch": diff, "crops": len(crops), "torch_latency_ms": round(torch_ms, 3),
                  "onnxruntime_latency_ms": round(ort_ms, 3), "threads": torch.get_num_threads()},
    }
    atomic_write_json(sidecar_path, sidecar)  # the pair appears together or not at all
    try:
        atomic_write_bytes(out, graph)
    except BaseException:
        sidecar_path.unlink(missing_ok=True)
        raise
    return sidecar
