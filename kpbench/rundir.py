"""A run's folder, the one place that knows its layout and writes it atomically::

    <run>/config.yaml          the resolved config (written by the driver)
    <run>/manifest.json        versions, machine, data fingerprint, splits, crop convention
    <run>/test_faces.npz       the first test crops, for overlays in reports
    <run>/leaderboard.*        the reports (kpbench.report)
    <run>/models/<label>[/seed<k>]/   one job's folder: best.pt, last.pt (while it trains),
                                      history.csv, predictions.npz, paths/<detector>/, result.json,
                                      error.txt (when the job failed)

A job writes only its own model folder; the run-level files are the driver's.
"""

from __future__ import annotations

import json
import platform
import subprocess
import time
import traceback
from pathlib import Path

import numpy as np
import yaml

from kpbench.config import Settings, config_hash, differences
from kpbench.errors import KpbenchError
from kpbench.io import atomic_save_npz, atomic_write_json, atomic_write_text


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __str__(self) -> str:
        return str(self.path)

    # -- run level (the driver) --------------------------------------------------------------
    def is_run(self) -> bool:
        return (self.path / "manifest.json").is_file() and (self.path / "config.yaml").is_file()

    def settings(self) -> Settings:
        """The run's settings as this version reads them (a key added since it ran has its default)."""
        path = self.path / "config.yaml"
        return Settings.from_dict(read_mapping(path), str(path))

    def manifest(self) -> dict:
        return read_mapping(self.path / "manifest.json")

    def check_can_start(self, settings: Settings, fingerprint: str, resume: bool) -> None:
        """A new run needs an absent or empty folder; a resumed one the same config (where-keys
        aside) and the same data. Each refusal is one line naming what differs."""
        if self.path.exists() and not self.path.is_dir():
            raise KpbenchError(f"{self}: is a file, not a run directory")
        if self.path.exists() and any(self.path.iterdir()) and not resume:
            raise KpbenchError(f"{self}: run directory exists and is not empty (use --resume to continue it)")
        if resume and self.path.exists() and any(self.path.iterdir()) and not self.is_run():
            raise KpbenchError(f"{self}: not a kpbench run (no manifest.json and config.yaml), so there is nothing "
                               f"to resume; kpbench never writes over files it did not make: choose a new folder")
        if not (resume and (self.path / "manifest.json").is_file()):
            return
        old = self.manifest()
        before = self.settings() if (self.path / "config.yaml").is_file() else None
        if (config_hash(before) if before else old.get("config_hash")) != config_hash(settings):
            diff = differences(before, settings) if before else []
            raise KpbenchError(f"{self}: cannot resume, its config differs from this run's: "
                               + ("; ".join(diff[:3]) + (f" (and {len(diff) - 3} more)" if len(diff) > 3 else "")
                                  if diff else "it was written by another kpbench version"))
        if old.get("dataset_fingerprint") != fingerprint:
            raise KpbenchError(f"{self}: cannot resume, its data differ from this run's (fingerprint "
                               f"{old.get('dataset_fingerprint')} vs {fingerprint})")

    def write_config(self, settings: Settings) -> None:
        atomic_write_text(self.path / "config.yaml", yaml.safe_dump(settings.to_dict(), sort_keys=False))

    def write_manifest(self, meta: dict) -> None:
        atomic_write_json(self.path / "manifest.json", meta)

    def write_json(self, name: str, obj) -> None:
        atomic_write_json(self.path / name, obj)

    def write_text(self, name: str, text: str) -> None:
        atomic_write_text(self.path / name, text)

    def save_test_faces(self, data, limit: int = 64) -> None:
        """The first test crops (uint8) and their boxes, for keypoint overlays in reports."""
        n = min(limit, len(data))
        images = (data.images[:n, 0].numpy() * 255).round().clip(0, 255).astype(np.uint8)
        atomic_save_npz(self.path / "test_faces.npz", images=images, boxes=data.boxes[:n], ids=np.array(data.ids[:n]))

    # -- jobs --------------------------------------------------------------------------------
    def model_dir(self, label: str, seed: int, seeds: list[int]) -> Path:
        """A job's folder: ``models/<label>``, or ``models/<label>/seed<k>`` with several seeds."""
        base = self.path / "models" / label
        return base if len(seeds) == 1 else base / f"seed{seed}"

    def results(self, settings: Settings) -> list[tuple[Path, dict]]:
        """(model folder, result row) of every finished job, in the settings' order."""
        seeds = seeds_of(settings)
        found = []
        for label in settings.models:
            for seed in seeds:
                mdir = self.model_dir(label, seed, seeds)
                if (mdir / "result.json").is_file():
                    found.append((mdir, read_mapping(mdir / "result.json")))
        return found


def read_mapping(path: Path) -> dict:
    """A run folder's JSON or YAML file as a mapping; a missing, unreadable, truncated or otherwise
    damaged one is a one-line error naming it."""
    try:
        text = path.read_text()
        value = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except FileNotFoundError:
        raise KpbenchError(f"{path}: missing") from None
    except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError) as exc:
        raise KpbenchError(f"{path}: damaged or unreadable ({type(exc).__name__}); the run that wrote it may have "
                           f"been cut short") from None
    if not isinstance(value, dict):
        raise KpbenchError(f"{path}: damaged: expected a mapping, found {type(value).__name__}")
    return value


def seeds_of(settings: Settings) -> list[int]:
    """The training seeds of a run: ``run.seeds``, or the one ``run.seed``."""
    return list(settings.run.seeds or [settings.run.seed])


def save_result(mdir: Path, row: dict) -> None:
    """A finished job: its ``result.json`` (what marks it finished), its epoch checkpoint and any
    earlier attempt's ``error.txt`` gone."""
    atomic_write_json(mdir / "result.json", row)
    (mdir / "last.pt").unlink(missing_ok=True)  # the epoch checkpoint is only for resuming
    (mdir / "error.txt").unlink(missing_ok=True)


def save_error(mdir: Path, exc: BaseException) -> Path:
    """A failed job's traceback, in its folder."""
    path = mdir / "error.txt"
    atomic_write_text(path, "".join(traceback.format_exception(exc)))
    return path


def _git_commit() -> str | None:
    import kpbench

    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(kpbench.__file__).parent, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _cpu_model() -> str | None:
    """The CPU's model name (Linux: /proc/cpuinfo; elsewhere what ``platform`` knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def manifest(settings: Settings, device: str, fingerprint: str) -> dict:
    """A manifest's first entries: versions, machine, seed, config hash and data fingerprint."""
    import timm
    import torch

    import kpbench

    return {
        "kpbench": kpbench.__version__, "torch": torch.__version__, "timm": timm.__version__,
        "numpy": np.__version__, "python": platform.python_version(), "platform": platform.platform(),
        "device": device, "cpu": platform.processor() or platform.machine(), "cpu_model": _cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),  # the instruction set torch's kernels use
        "threads": torch.get_num_threads(),
        "git_commit": _git_commit(), "seed": settings.run.seed, "config_hash": config_hash(settings),
        "dataset": settings.data.dataset, "dataset_fingerprint": fingerprint,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def metrics_meta(metrics) -> dict:
    """What the report path needs to know of each metric, kept in the manifest."""
    return {m.name: {"aggregate": m.aggregate, "higher_is_better": m.higher_is_better, "unit": m.unit}
            for m in metrics}
