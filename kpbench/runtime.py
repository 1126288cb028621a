"""ONNX Runtime as kpbench's second runtime: a model exported in memory or read from a file, run
in the place of the PyTorch model (crops in, crop coordinates out). Running a graph
(:class:`OnnxModel`) needs ``onnxruntime`` (a dependency of kpbench) and no PyTorch: an exported
model's photo path starts without importing it. Exporting needs the optional extra
``kpbench[onnx]`` too (``onnx`` 1.17, which still accepts the protobuf 4 that ``mediapipe`` pins);
:func:`available` tells."""

from __future__ import annotations

import contextlib
import io
import os
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from kpbench.errors import KpbenchError
from kpbench.io import fd_to_devnull

if TYPE_CHECKING:
    import torch

OPSET = 17
INSTALL = "pip install 'kpbench[onnx]'"


def default_threads() -> int:
    """The threads a CPU runtime (ONNX Runtime, LiteRT) gets unless told: torch's setting where
    torch is loaded (a caller may have set it), else the CPUs this process may run on."""
    torch = sys.modules.get("torch")
    if torch is not None:
        return torch.get_num_threads()
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@contextlib.contextmanager
def torch_threads(n: int | None):
    """Use ``n`` torch threads inside the block (None: leave it), then restore the caller's setting."""
    if not n:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def available() -> bool:
    """Whether onnx (the exporter's) and onnxruntime can be imported."""
    try:
        _onnxruntime()
    except KpbenchError:
        return False
    return True


def runs_graphs() -> bool:
    """Whether ONNX Runtime can be imported, found without importing it (nor the exporter's onnx):
    what running an exported graph needs."""
    import importlib.util

    return importlib.util.find_spec("onnxruntime") is not None


def _onnxruntime(what: str = "exporting to ONNX", exporter: bool = True):
    try:
        if exporter:
            import onnx  # noqa: F401  (torch's exporter needs it)
        import onnxruntime
    except ImportError:
        needs = "onnx and onnxruntime" if exporter else "onnxruntime"
        raise KpbenchError(f"{what} needs {needs}: {INSTALL}") from None
    return onnxruntime


def to_onnx(model: torch.nn.Module, example: torch.Tensor, label: str, any_batch: bool = True) -> bytes:
    """``model`` (eval mode) as an ONNX graph in memory: input ``crops`` (any batch, or with
    ``any_batch=False`` exactly the example's: then every shape is known and ONNX Runtime folds
    the shape arithmetic away, 8 % of a 128 px ``effnet-heatmap`` run), output ``points``; a model
    the exporter cannot take is a one-line KpbenchError."""
    import torch

    _onnxruntime()
    buffer = io.BytesIO()
    try:
        with torch.inference_mode(), fd_to_devnull(1), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tracer's on shape tests: only the batch size varies
            torch.onnx.export(model.eval(), (example,), buffer, dynamo=False, opset_version=OPSET,
                              input_names=["crops"], output_names=["points"],
                              dynamic_axes={"crops": {0: "batch"}, "points": {0: "batch"}} if any_batch else None)
    except Exception as exc:  # noqa: BLE001 - the exporter's own errors run to many lines
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise KpbenchError(f"model {label!r} cannot be exported to ONNX (opset {OPSET}): {first}") from None
    return buffer.getvalue()


class OnnxModel:
    """An exported graph under ONNX Runtime in the place of a PyTorch model: crops (N, 1, S, S) in,
    points out: a numpy array for a numpy array (the Predictor's path, which never imports torch)
    and a tensor for a tensor, so :func:`kpbench.evaluate.predict` and
    :func:`kpbench.profile.latency` run it as they run the model. A graph of a fixed batch size
    runs on the crops that many at a time."""

    def __init__(self, graph: Path | bytes, threads: int | None = None):
        ort = _onnxruntime("running an ONNX model", exporter=False)
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads or default_threads())
        # Threads spin between the operators of one run (waking a sleeping one costs more than most
        # operators here) and stop when it returns: the detector, crops and decoding share the cores.
        options.add_session_config_entry("session.intra_op.allow_spinning", "1")
        options.add_session_config_entry("session.force_spinning_stop", "1")
        self.session = ort.InferenceSession(graph if isinstance(graph, bytes) else str(graph), options,
                                            providers=["CPUExecutionProvider"])
        batch = self.session.get_inputs()[0].shape[0]
        self.batch = batch if isinstance(batch, int) else None  # None: any
        self.origin = 0.0  # the pixel origin of its points (kpbench.data.points_origin), set by its loader

    def run(self, crops: np.ndarray) -> np.ndarray:
        """Points for float32 crops (N, 1, S, S), as the graph gives them."""
        x = np.ascontiguousarray(crops, dtype=np.float32)
        if self.batch is None or len(x) == self.batch:
            return self.session.run(None, {"crops": x})[0]
        if len(x) % self.batch:
            raise KpbenchError(f"this ONNX graph takes crops {self.batch} at a time, got {len(x)}")
        return np.concatenate([self.run(x[i:i + self.batch]) for i in range(0, len(x), self.batch)])

    def __call__(self, crops):
        if isinstance(crops, np.ndarray):
            return self.run(crops)
        import torch

        return torch.from_numpy(self.run(crops.detach().cpu().numpy()))

    def eval(self) -> "OnnxModel":
        """As a module's: the graph has no training mode."""
        return self

    def to(self, device) -> "OnnxModel":
        """As a module's: the graph runs on the CPU whatever the device."""
        return self


def onnxruntime_model(model: torch.nn.Module, input_size: int, label: str) -> OnnxModel:
    """``model`` (on the CPU) exported in memory and loaded in ONNX Runtime (CPU, torch's thread count)."""
    import torch

    graph = to_onnx(model, torch.rand(2, 1, input_size, input_size), label)
    try:
        return OnnxModel(graph, torch.get_num_threads())
    except Exception as exc:  # noqa: BLE001 - ONNX Runtime refusing a graph the exporter wrote
        raise KpbenchError(f"model {label!r}: ONNX Runtime cannot load its graph: {str(exc).strip()[:300]}") from None
