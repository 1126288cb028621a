"""``kpbench export``: a trained model as an ONNX graph for ONNX Runtime, checked against PyTorch.

The graph takes the model's crops and returns keypoints in crop coordinates, exactly as kpbench's
evaluation path sees them (mean-shape offset, output scale and test-time flip averaging
included); ``<file>.json`` beside it says how crops are made and mapped back. Needs the optional
extra ``kpbench[onnx]`` (``onnx`` 1.17, which still accepts the protobuf 4 that ``mediapipe``
pins, and ``onnxruntime``)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from kpbench.errors import KpbenchError
from kpbench.inference import Trained
from kpbench.io import atomic_write_bytes, atomic_write_json
from kpbench.keypoints import get_schema
from kpbench.profile import median_seconds

OPSET = 17


def _onnxruntime():
    try:
        import onnx  # noqa: F401  (torch's exporter needs it)
        import onnxruntime
    except ImportError:
        raise KpbenchError("kpbench export needs onnx and onnxruntime: pip install -e '.[onnx]'") from None
    return onnxruntime


def session(path: Path, threads: int | None = None):
    """An ONNX Runtime CPU session for an exported file."""
    ort = _onnxruntime()
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def export_onnx(trained: Trained, out: Path) -> dict:
    """Write ``out`` (.onnx) and ``out``.json; returns the sidecar: input/output, schema, crop
    convention, and the check against PyTorch (max abs difference on seeded crops) with both
    batch-1 CPU latencies."""
    out = Path(out)
    if out.suffix != ".onnx":
        raise KpbenchError(f"--out {out}: give a file name ending in .onnx")
    sidecar_path = out.with_name(out.name + ".json")
    for p in (out, sidecar_path):
        if p.exists():
            raise KpbenchError(f"{p} exists; kpbench never overwrites a file (give a new --out)")
    _onnxruntime()
    model, size = trained.model.eval(), trained.input_size
    crops = torch.rand(8, 1, size, size, generator=torch.Generator().manual_seed(0))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        try:
            with torch.inference_mode():
                torch.onnx.export(model, (crops[:2],), str(path), dynamo=False, opset_version=OPSET,
                                  input_names=["crops"], output_names=["points"],
                                  dynamic_axes={"crops": {0: "batch"}, "points": {0: "batch"}})
        except Exception as exc:  # noqa: BLE001 - the exporter's own errors run to many lines
            first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
            raise KpbenchError(f"model {trained.label!r} cannot be exported to ONNX (opset {OPSET}): {first}") from None
        sess = session(path, torch.get_num_threads())
        with torch.inference_mode():
            want = model(crops).numpy()
        got = sess.run(None, {"crops": crops.numpy()})[0]
        diff = float(np.abs(got.reshape(want.shape) - want).max())
        one, one_np = crops[:1], crops[:1].numpy()
        with torch.inference_mode():  # batch-1 latency: median of 30 runs after 5 warm-up runs
            torch_ms = median_seconds(lambda: model(one), 5, 30) * 1000
        ort_ms = median_seconds(lambda: sess.run(None, {"crops": one_np}), 5, 30) * 1000
        atomic_write_bytes(out, path.read_bytes())
    schema = get_schema(trained.config["data"]["schema"])
    manifest = json.loads((trained.run_dir / "manifest.json").read_text())
    sidecar = {
        "model": trained.label, "run": str(trained.run_dir), "onnx_opset": OPSET,
        "input": {"name": "crops", "shape": ["batch", 1, size, size], "dtype": "float32",
                  "what": "gray face crops in [0, 1] (0.299 R + 0.587 G + 0.114 B), cut as crop_convention says"},
        "output": {"name": "points", "shape": ["batch", schema.num_points, 2],
                   "what": "x, y per point in crop coordinates scaled to [0, 1] (pixel edges): "
                           "photo pixel = x0 + x * side - 0.5 for a box (x0, y0, side); a turned box "
                           "(x0, y0, side, angle): kpbench.data.to_image_pixels"},
        "schema": schema.name, "points": list(schema.points),
        "flip_test": model.flip_test is not None,
        "crop_convention": manifest.get("crop_convention"),
        "check": {"max_abs_diff_vs_torch": diff, "crops": len(crops), "torch_latency_ms": round(torch_ms, 3),
                  "onnxruntime_latency_ms": round(ort_ms, 3), "threads": torch.get_num_threads()},
    }
    atomic_write_json(sidecar_path, sidecar)
    return sidecar
