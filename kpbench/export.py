"""``kpbench export``: a trained model as an ONNX graph for ONNX Runtime, checked against PyTorch.

The graph takes the model's crops and returns keypoints in crop coordinates, exactly as kpbench's
evaluation path sees them (mean-shape offset, output scale and test-time flip averaging
included); ``<file>.json`` beside it says how crops are made and mapped back, so ``kpbench predict
--model <file>.onnx`` (:func:`load_onnx`) cuts the same crops. Needs the optional extra
``kpbench[onnx]`` (``onnx`` 1.17, which still accepts the protobuf 4 that ``mediapipe`` pins, and
``onnxruntime``)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import warnings
from pathlib import Path

import torch

from kpbench.errors import KpbenchError, first_line
from kpbench.inference import Trained
from kpbench.io import atomic_write_bytes, atomic_write_json
from kpbench.keypoints import get_schema
from kpbench.profile import median_seconds

OPSET = 17
INSTALL = "pip install 'kpbench[onnx]'"


def available() -> bool:
    """Whether onnx (the exporter's) and onnxruntime can be imported."""
    try:
        _onnxruntime()
    except KpbenchError:
        return False
    return True


def _onnxruntime(what: str = "exporting to ONNX", exporter: bool = True):
    try:
        if exporter:
            import onnx  # noqa: F401  (torch's exporter needs it)
        import onnxruntime
    except ImportError:
        needs = "onnx and onnxruntime" if exporter else "onnxruntime"
        raise KpbenchError(f"{what} needs {needs}: {INSTALL}") from None
    return onnxruntime


@contextlib.contextmanager
def _stdout_to_devnull():
    """File descriptor 1 to /dev/null for a while: torch's TorchScript exporter turns its C++ log on
    and never off (torch 2.14 ``setup_onnx_logging`` tests a function, not its result, for truth),
    so a failed export would print the whole graph on stdout (into ``--json`` output, mid-run)."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def to_onnx(model: torch.nn.Module, example: torch.Tensor, label: str) -> bytes:
    """``model`` (eval mode) as an ONNX graph in memory: input ``crops`` (any batch), output
    ``points``; a model the exporter cannot take is a one-line KpbenchError."""
    _onnxruntime()
    buffer = io.BytesIO()
    try:
        with torch.inference_mode(), _stdout_to_devnull(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tracer's on shape tests: only the batch size varies
            torch.onnx.export(model.eval(), (example,), buffer, dynamo=False, opset_version=OPSET,
                              input_names=["crops"], output_names=["points"],
                              dynamic_axes={"crops": {0: "batch"}, "points": {0: "batch"}})
    except Exception as exc:  # noqa: BLE001 - the exporter's own errors run to many lines
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise KpbenchError(f"model {label!r} cannot be exported to ONNX (opset {OPSET}): {first}") from None
    return buffer.getvalue()


class OnnxModel(torch.nn.Module):
    """An exported graph under ONNX Runtime in the place of a PyTorch model: crops (N, 1, S, S)
    in, points out, so :func:`kpbench.evaluate.predict` and :func:`kpbench.profile.latency` run
    it as they run the model."""

    def __init__(self, graph: Path | bytes, threads: int | None = None):
        super().__init__()
        ort = _onnxruntime("running an ONNX model", exporter=False)
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(graph if isinstance(graph, bytes) else str(graph), options,
                                            providers=["CPUExecutionProvider"])

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session.run(None, {"crops": crops.cpu().numpy()})[0])


def onnxruntime_model(model: torch.nn.Module, input_size: int, label: str) -> OnnxModel:
    """``model`` (on the CPU) exported in memory and loaded in ONNX Runtime (CPU, torch's thread count)."""
    graph = to_onnx(model, torch.rand(2, 1, input_size, input_size), label)
    try:
        return OnnxModel(graph, torch.get_num_threads())
    except Exception as exc:  # noqa: BLE001 - ONNX Runtime refusing a graph the exporter wrote
        raise KpbenchError(f"model {label!r}: ONNX Runtime cannot load its graph: {str(exc).strip()[:300]}") from None


def load_onnx(path: str | Path) -> Trained:
    """An exported model with its sidecar's crop convention and schema, in the shape of a run's
    trained model for ``kpbench predict`` (``model_dir`` is the .onnx file)."""
    path = Path(path)
    sidecar_path = path.with_name(path.name + ".json")
    if not path.is_file():
        raise KpbenchError(f"--model {path}: no such file")
    if not sidecar_path.is_file():
        raise KpbenchError(f"--model {path}: no {sidecar_path.name} beside it (kpbench export writes it: the crop "
                           f"convention and schema predict needs)")
    try:
        sidecar = json.loads(sidecar_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise KpbenchError(f"{sidecar_path}: not the JSON kpbench export writes ({exc})") from None
    convention = sidecar.get("crop_convention") if isinstance(sidecar, dict) else None
    if not convention:
        raise KpbenchError(f"{sidecar_path}: no crop_convention (its run predates it); train and export it again")
    options = {**convention["detector_options"],
               **{k: convention[k] for k in ("margin", "align") if convention.get(k) is not None}}
    config = {"data": {"schema": sidecar["schema"], "detector": convention["detector"], "detector_options": options}}
    try:
        graph = OnnxModel(path)
    except KpbenchError:
        raise
    except Exception as exc:  # noqa: BLE001 - ONNX Runtime's own errors: not a graph it can read
        raise KpbenchError(f"--model {path}: ONNX Runtime cannot load it: {first_line(exc)[:300]}") from None
    return Trained(graph, sidecar["model"], int(sidecar["input"]["shape"][-1]), config,
                   Path(sidecar["run"]), path)


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
    model, size = trained.model.eval(), trained.input_size
    crops = torch.rand(8, 1, size, size, generator=torch.Generator().manual_seed(0))
    graph = to_onnx(model, crops[:2], trained.label)
    onnx_model = OnnxModel(graph, torch.get_num_threads())
    with torch.inference_mode():
        want, got = model(crops), onnx_model(crops)
        diff = float((got.reshape(want.shape) - want).abs().max())
        one = crops[:1]  # batch-1 latency: median of 30 runs after 5 warm-up runs
        torch_ms, ort_ms = (median_seconds(lambda: m(one), 5, 30) * 1000 for m in (model, onnx_model))
    atomic_write_bytes(out, graph)
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
