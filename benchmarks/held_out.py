"""What the benchmarks that score a trained model on its run's held-out faces share (flip_test.py,
heatmap_readout.py, margin_test.py): their options ``--model``, ``--split``, ``--threads`` and
``--json``, and the model they load. Run them from the project root (``python benchmarks/NAME.py``):
a run config's dataset paths are relative to it."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from kpbench.plugins import get_plugins
from kpbench.predictor import SHIPPED
from kpbench.trained import load_trained


def model_and_options(doc: str, **extra: dict):
    """Parse the command line (the shared options, plus ``extra``: option name -> ``add_argument``
    keywords) and load the model: (args, plugins, trained). Torch runs on ``--threads`` threads."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=SHIPPED, help="run folder or model folder (default: the shipped model)")
    ap.add_argument("--split", choices=("test", "val"), default="test")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, help="also write the figures here as strict JSON")
    for name, keywords in extra.items():
        ap.add_argument(f"--{name}", **keywords)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    plugins = get_plugins()
    return args, plugins, load_trained(args.model, plugins)
