"""Atomic file writes (temp file in the same folder, then rename): nothing is left half-written."""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def _signals_held():
    """Ctrl-C and SIGTERM wait until the block is done (delivered right after it): a writer such as
    torch.save's zip writer, interrupted halfway, can fail on closing with another error that
    hides the interruption. Held at Python's level (the handlers swapped for one that notes the
    signal, then raised again): a signal mask holds a signal for one thread only, and the kernel
    hands a process's SIGTERM to any of its threads (torch's, ONNX Runtime's), whose delivery
    Python then runs on the main thread all the same. Only the main thread can swap handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held = [s for s in (signal.SIGINT, signal.SIGTERM) if signal.getsignal(s) is not None]  # None: set outside Python
    caught: list[int] = []
    previous = {s: signal.signal(s, lambda signum, frame: caught.append(signum)) for s in held}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        for s in dict.fromkeys(caught):
            signal.raise_signal(s)


@contextlib.contextmanager
def atomic_output(path: Path):
    """A temporary file beside ``path`` to write at length (a video, a long CSV), renamed to
    ``path`` when the block ends without error and removed otherwise, so a reader never sees it
    half-written. Ctrl-C is not held here: a long write stays interruptible and leaves nothing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual file mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def is_leftover(path: Path) -> bool:
    """A temporary file of :func:`atomic_output` (``.NAME.XXXX.tmp``), left by a process that was
    killed before it could rename or remove it."""
    return path.is_file() and path.name.startswith(".") and path.name.endswith(".tmp") and path.name.count(".") >= 3


def _atomic(path: Path, write) -> None:
    with atomic_output(path) as tmp, open(tmp, "wb") as f, _signals_held():
        write(f)


def atomic_write_text(path: Path, text: str) -> None:
    _atomic(path, lambda f: f.write(text.encode("utf-8")))


def strict(obj):
    """``obj`` with every NaN or infinite float (numpy's too) as None, so that it is strict JSON."""
    if isinstance(obj, dict):
        return {k: strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    return obj


def strict_json(obj, **options) -> str:
    """``obj`` as strict JSON text (``json.dumps`` with ``options``): NaN and infinities written as
    null, numpy floats as numbers. A document of plain JSON values without them (a video frame's,
    say) is encoded as it is, without :func:`strict`'s copy (the same text, at half the cost)."""
    plain = {k: v for k, v in options.items() if k != "default"}  # ``default`` would hide a numpy float
    try:
        return json.dumps(obj, allow_nan=False, **plain)
    except (ValueError, TypeError):  # a NaN or infinity, or a value that is not plain JSON
        return json.dumps(strict(obj), allow_nan=False, **options)


def atomic_write_json(path: Path, obj) -> None:
    """Strict JSON (NaN and infinities written as null), atomically."""
    atomic_write_text(path, strict_json(obj, indent=2, default=str) + "\n")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    _atomic(path, lambda f: f.write(data))


def atomic_save_npz(path: Path, **arrays) -> None:
    """A compressed ``.npz``, atomically."""
    _atomic(path, lambda f: np.savez_compressed(f, **arrays))


def atomic_torch_save(obj, path: Path) -> None:
    import torch

    _atomic(path, lambda f: torch.save(obj, f))


@contextlib.contextmanager
def fd_to_devnull(fd: int):
    """File descriptor ``fd`` (1: stdout, 2: stderr) to /dev/null for a while, for C++ libraries
    that print where they should not: torch's TorchScript exporter turns its log on and never off
    (torch 2.14 ``setup_onnx_logging`` tests a function, not its result, for truth), so a failed
    export would print the whole graph into ``--json`` output; LiteRT prints "INFO: Created
    TensorFlow Lite XNNPACK delegate for CPU." when it allocates an interpreter."""
    (sys.stdout if fd == 1 else sys.stderr).flush()
    saved = os.dup(fd)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), fd)
        yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)


def cache_root() -> Path:
    """kpbench's cache folder: ``$KPBENCH_CACHE_DIR`` or ``~/.cache/kpbench``."""
    return Path(os.environ.get("KPBENCH_CACHE_DIR") or Path.home() / ".cache" / "kpbench")
