"""A trained model, loaded for use after its run: from a run folder (its best checkpoint, with the
run's config and crop convention) or from an ``.onnx`` file with the sidecar ``kpbench export``
wrote. :class:`kpbench.Predictor` and ``evaluate`` and ``export`` get their model here."""

from __future__ import annotations

import dataclasses
import inspect
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from kpbench.components import CropConvention, ModelPlan, load_splits, make_detector
from kpbench.config import Settings
from kpbench.data import Prepared, pixel_origin, prepare
from kpbench.errors import KpbenchError, first_line
from kpbench.keypoints import Schema, get_schema
from kpbench.plugins import Plugins
from kpbench.rundir import RunDir, read_mapping
from kpbench.runtime import OnnxModel

if TYPE_CHECKING:  # building a PyTorch model imports torch; an exported graph (load_onnx) needs none
    import torch

    from kpbench.regressor import Regressor


@dataclass
class Trained:
    """A trained model with what using it needs: its schema and the crop convention it was trained on."""
    model: torch.nn.Module | OnnxModel  # a Regressor, or an OnnxModel in its place
    label: str
    input_size: int
    schema: Schema
    convention: CropConvention
    settings: Settings | None  # its run's settings (None for an exported graph)
    run_dir: Path
    model_dir: Path
    source: Path | None = None  # the module of its network's factory, where that is a class


def held_out_faces(trained: Trained, plugins: Plugins, split: str = "test", margin: float | None = None) -> Prepared:
    """The faces a run held out (``split``: "test" or "val"), cut by the annotated box as ``kpbench
    evaluate --detector gt-box`` cuts them (or with ``margin`` around it instead of the run's), at
    the model's input size and schema (the run config's dataset paths are relative to the working
    directory)."""
    if trained.settings is None:
        raise KpbenchError(f"{trained.model_dir}: an exported graph keeps no run settings, so no held-out split")
    sources, splits = load_splits(plugins, trained.settings)
    k = {"val": 1, "test": 2}[split]
    options = trained.settings.data.detector_options
    detect = make_detector(plugins, "gt-box", options if margin is None else {**options, "margin": margin})
    return prepare(sources[k], splits[k], detect, trained.input_size, trained.schema.name)


@dataclass
class Located:
    """A run's finished model, found but not built: what building or loading it needs."""
    plan: ModelPlan
    settings: Settings
    schema: Schema
    convention: CropConvention
    run_dir: Path
    model_dir: Path

    @property
    def label(self) -> str:
        return self.plan.label

    @property
    def source(self) -> Path | None:
        """The module of the network's factory, where the factory is a class (else None)."""
        factory = self.plan.spec.factory
        return Path(inspect.getsourcefile(factory)) if isinstance(factory, type) else None

    def points_origin(self) -> float:
        """The pixel origin its best checkpoint numbers points from (the Regressor's ``origin``;
        0 for a checkpoint from before it), read without building the model."""
        from kpbench.weights import read_checkpoint

        return float(read_checkpoint(self.model_dir / "best.pt")["state_dict"].get("origin", 0.0))

    def trained(self, model: torch.nn.Module) -> Trained:
        """This model as a :class:`Trained` around ``model`` (built here, or its ONNX graph)."""
        return Trained(model, self.label, self.plan.input_size, self.schema, self.convention, self.settings,
                       self.run_dir, self.model_dir, self.source)


def _run_dir_of(path: Path) -> Path:
    for p in [path, *path.parents]:
        if (p / "config.yaml").is_file() and (p / "manifest.json").is_file():
            return p
    raise KpbenchError(f"{path}: not inside a kpbench run directory (no config.yaml and manifest.json above it)")


def _leaderboard_rows(run_dir: Path) -> list[dict]:
    """The rows of a run's leaderboard.json, best first; none where it is missing or unreadable."""
    try:
        rows = json.loads((run_dir / "leaderboard.json").read_text())["rows"]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    return [r for r in rows if isinstance(r, dict) and "model" in r] if isinstance(rows, list) else []


def locate_trained(path: str | Path, plugins: Plugins) -> Located:
    """A finished model of a run: the run directory (its best model), a model directory
    (``models/<label>[/seed<k>]``) or a ``best.pt`` inside one."""
    rd, settings, mdir, row = find_finished(path)
    label = row["model"]
    m = ModelPlan.of(settings, label, plugins.models.get(label.split("@")[0], where="--model"))
    if row.get("input_size"):
        m = dataclasses.replace(m, input_size=int(row["input_size"]))
    return Located(m, settings, get_schema(settings.data.schema), run_convention(rd, settings, plugins), rd.path,
                   mdir)


def find_finished(path: str | Path) -> tuple[RunDir, Settings, Path, dict]:
    """The run, settings, model folder and result row of the finished model :func:`locate_trained`
    finds at ``path``, read without its model plugin (so without torch)."""
    path = Path(path)
    if not path.exists():
        raise KpbenchError(f"--model {path}: no such file or directory")
    run_dir = _run_dir_of(path.resolve())
    rd = RunDir(run_dir)
    settings = rd.settings()
    found = rd.results(settings)
    if not found:
        raise KpbenchError(f"{rd}: no finished model in this run yet")
    path = path.resolve()
    if path == run_dir:  # the leaderboard's best trainable model (the config's first without one)
        trainable = [r for _, r in found if r.get("params", 0)] or [r for _, r in found]
        ranked = [r["model"] for r in _leaderboard_rows(run_dir)]
        trainable.sort(key=lambda r: ranked.index(r["model"]) if r["model"] in ranked else len(ranked))
        mdir, row = next((d, r) for d, r in found if r is trainable[0])
    else:
        mdir = path.parent if path.is_file() else path
        match = [(d, r) for d, r in found if d.resolve() == mdir or d.resolve().parent == mdir]
        if not match:
            raise KpbenchError(f"{path}: not a finished model of run {run_dir}")
        mdir, row = match[0]
    return rd, settings, mdir, row


def load_trained(path: str | Path, plugins: Plugins) -> Trained:
    """A trained model (see :func:`locate_trained`), built and given its best checkpoint's weights."""
    return build_trained(locate_trained(path, plugins))


def build_trained(found: Located) -> Trained:
    """A located model built, given its best checkpoint's weights and made ready to run (its
    BatchNorms folded, its weights channels-last: :func:`kpbench.folding.ready_to_run`)."""
    import torch

    from kpbench.folding import ready_to_run
    from kpbench.regressor import use_flip_test

    m = found.plan
    model, _ = ready_to_run(trained_network(found), torch.rand(1, 1, m.input_size, m.input_size,
                                                           generator=torch.Generator().manual_seed(0)))
    use_flip_test(model, found.settings.eval.flip_test, found.schema)
    return found.trained(model)


def trained_network(found: Located) -> Regressor:
    """A located model's network with its best checkpoint's weights, as it trained."""
    import torch

    from kpbench.regressor import Regressor
    from kpbench.weights import read_checkpoint

    m, schema, mdir = found.plan, found.schema, found.model_dir
    takes_weights = "weights" in inspect.signature(m.spec.factory).parameters or "weights" in m.options
    no_start = {"weights": "none"} if takes_weights else {}  # the checkpoint holds every weight
    net = m.build(schema.num_points, **no_start)
    model = Regressor(net, torch.zeros(schema.num_points, 2), m.input_size if m.train.targets == "pixels" else 1)
    state = read_checkpoint(mdir / "best.pt")["state_dict"]
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k != "origin"]  # a checkpoint from before it: trained on origin-0 targets
    if missing or unexpected:
        raise KpbenchError(f"{mdir / 'best.pt'}: does not fit model {found.label!r}: missing {missing[:3]}, "
                           f"unexpected {unexpected[:3]}")
    return model


def run_convention(rd: RunDir, settings: Settings, plugins: Plugins) -> CropConvention:
    """The crop convention a run's manifest holds (one written before manifests had it: worked
    out from its settings)."""
    entry = rd.manifest().get("crop_convention")
    if isinstance(entry, dict) and isinstance(entry.get("detector"), str):
        return CropConvention.from_mapping(entry)
    return CropConvention.of_run(plugins, settings.data)


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
    sidecar = read_mapping(sidecar_path)
    convention, shape = sidecar.get("crop_convention"), (sidecar.get("input") or {}).get("shape")
    if not convention:
        raise KpbenchError(f"{sidecar_path}: no crop_convention (its run predates it); train and export it again")
    bad = (not isinstance(convention, dict) or not isinstance(convention.get("detector_options"), dict)
           or not isinstance(convention.get("detector"), str) or not isinstance(sidecar.get("model"), str)
           or not isinstance(sidecar.get("schema"), str) or not isinstance(shape, list) or len(shape) != 4
           or not all(isinstance(v, int) and v > 0 for v in shape[1:]))
    if bad:
        raise KpbenchError(f"{sidecar_path}: not the sidecar kpbench export writes (crop_convention with detector "
                           f"and detector_options, model, schema, input.shape [batch, 1, S, S])")
    schema = get_schema(sidecar["schema"])
    try:
        graph = OnnxModel(path)
    except KpbenchError:
        raise
    except Exception as exc:  # noqa: BLE001 - ONNX Runtime's own errors: not a graph it can read
        raise KpbenchError(f"--model {path}: ONNX Runtime cannot load it: {first_line(exc)[:300]}") from None
    check_graph(graph, path, shape[1:], schema.num_points)
    graph.origin = pixel_origin(sidecar.get("points_origin", 0.0), f"{sidecar_path}: points_origin")
    return Trained(graph, sidecar["model"], shape[-1], schema, CropConvention.from_mapping(convention), None,
                   Path(str(sidecar.get("run", ""))), path)


def check_graph(graph: OnnxModel, path: Path, input_shape: list[int], points: int) -> None:
    """The graph's input and output agree with its sidecar: (batch, C, S, S) crops in, K points
    (K x 2, or K x 3 with confidences) out; else a one-line error before any face is cut."""
    (inp,), outs = graph.session.get_inputs(), graph.session.get_outputs()
    got_in = list(inp.shape[1:])
    out = outs[0].shape[1:] if outs else []
    sizes = [v for v in out if isinstance(v, int)]
    width = int(np.prod(sizes)) if sizes else None
    if got_in != list(input_shape) or width not in (2 * points, 3 * points):
        raise KpbenchError(f"--model {path}: the graph takes {got_in} and gives {out}, but its sidecar says "
                           f"{list(input_shape)} crops and {points} points; export the model again")
