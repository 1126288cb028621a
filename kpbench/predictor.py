"""The photo path as one object: an image in, every face's box, score and named keypoints out, in
the image's own pixels. ``kpbench predict`` (photos and videos) runs it; so can any program::

    from kpbench import Predictor

    predictor = Predictor()                          # the model kpbench ships
    predictor = Predictor.from_run("results/...")    # a model you trained (a run folder)
    predictor = Predictor.from_onnx("model.onnx")    # a model you exported
    for face in predictor("photo.jpg"):              # a path, a PIL image or an (H, W[, 3]) array
        print(face.box, face.score, face.keypoints["nose_tip"])

A Predictor holds the model, its keypoint schema, its crop convention (the face box and margin it
was trained on) and a face detector set to that convention. The model runs under ONNX Runtime
when it is installed (exported once and cached, checked against PyTorch), else in PyTorch. An
exported graph (``kpbench export``'s, or the shipped model's own ``model.onnx``) runs without
importing PyTorch at all: the photo path then starts in a fraction of the time.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kpbench.card import GRAPH, sha256
from kpbench.data import crop_from_image, points_origin, read_image, split_confidence, stack_boxes, to_image_pixels
from kpbench.errors import KpbenchError
from kpbench.geometry import box_at, centre_and_spread, place_around
from kpbench.keypoints import Schema
from kpbench.log import log
from kpbench.protocols import FindsFaces
from kpbench.runtime import OnnxModel, runs_graphs
from kpbench.trained import Located, Trained, build_trained, load_onnx, locate_trained

SHIPPED = Path(__file__).resolve().parent / "shipped" / "wild"  # the recommended model, as its run left it
SHIPPED_GRAPH = SHIPPED / GRAPH  # the same model exported (kpbench.card.ship): runs without PyTorch
RUNTIMES = ("auto", "onnxruntime", "torch")
ONNX_TOLERANCE = 1e-4  # max |ONNX Runtime - PyTorch| on seeded crops, in crop fractions (0.013 px of a 128 px crop)


@dataclass(frozen=True)
class Face:
    """One face found in an image: the crop ``box`` (x0, y0, side[, angle]) and every point in the
    image's pixels, the detector's ``score``, and per point the model's ``confidence`` in [0, 1]
    (None for models that give none)."""

    box: tuple[float, ...]
    score: float
    points: np.ndarray  # (K, 2)
    names: tuple[str, ...]
    confidence: np.ndarray | None = None  # (K,)

    @property
    def keypoints(self) -> dict[str, tuple[float, float]]:
        """The points by name: ``{"left_eye_center": (x, y), ...}``."""
        return {n: (float(x), float(y)) for n, (x, y) in zip(self.names, self.points)}

    @property
    def face_confidence(self) -> float | None:
        """The mean of the points' confidences (None without them)."""
        return None if self.confidence is None else float(np.mean(self.confidence))

    def to_json(self) -> dict:
        """The face as ``kpbench predict`` writes it: box, score, named points to 0.01 pixel, and the
        confidences (null without them)."""
        conf = None if self.confidence is None else [round(float(c), 4) for c in self.confidence]
        return {"box": [round(float(v), 2) for v in self.box], "score": round(float(self.score), 4),
                "keypoints": {k: [round(x, 2), round(y, 2)] for k, (x, y) in self.keypoints.items()},
                "confidence": None if conf is None else dict(zip(self.names, conf)),
                "face_confidence": None if conf is None else round(float(np.mean(conf)), 4)}


def default_detector(plugins) -> str:
    """The detector ``predict`` uses unless told: ``blazeface`` where its runtime (LiteRT) imports,
    else ``mtcnn``."""
    import importlib.util

    if "blazeface" in plugins.detectors.names() and importlib.util.find_spec("ai_edge_litert") is not None:
        return "blazeface"
    return "mtcnn"


def as_image(image: Any) -> np.ndarray:
    """A file path, a PIL image or an array -> an (H, W) or (H, W, 3) array."""
    if isinstance(image, (str, Path)):
        return read_image(image)
    if hasattr(image, "convert") and hasattr(image, "size"):  # a PIL image
        return np.asarray(image.convert("RGB"))
    arr = np.asarray(image)
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 3, 4)) or min(arr.shape[:2]) < 1:
        raise KpbenchError(f"expected an image: a path, a PIL image or an (H, W[, 3]) array, got shape {arr.shape}")
    return arr


def graph_sources(net_source: Path) -> list[Path]:
    """The code a model's graph is computed by: its network's module, the Regressor's and the
    confidence wrapper's (:mod:`kpbench.evaluate`)."""
    here = Path(__file__).resolve().parent
    return [Path(net_source), here / "regressor.py", here / "evaluate.py"]


def graph_cache(model_dir: Path, label: str, net_source: Path, flip: bool) -> Path:
    """Where a model's ONNX graph is kept: keyed by the checkpoint's bytes, the source of the code
    that computes it (:func:`graph_sources`), its test-time flip averaging, its form (one crop at a
    time) and torch's version, so that a changed model or kpbench exports anew."""
    from kpbench.io import cache_root

    h = hashlib.sha256((model_dir / "best.pt").read_bytes())
    for file in graph_sources(net_source):
        h.update(file.read_bytes())
    h.update(f"{_torch_version()} flip {bool(flip)} batch 1".encode())
    return cache_root() / "onnx" / f"{label}-{h.hexdigest()[:16]}.onnx"


def _torch_version() -> str:
    from importlib.metadata import version

    return version("torch")


def _graph_cache(trained: Trained) -> tuple[Path, Path]:
    """:func:`graph_cache` of a loaded model, and its network's module: its factory's
    (``trained.source``) or, for a model built in code, its network's class's."""
    import inspect

    regressor = getattr(trained.model, "regressor", trained.model)
    net = Path(trained.source or inspect.getsourcefile(type(getattr(regressor, "net", regressor))))
    return graph_cache(trained.model_dir, trained.label, net, bool(getattr(regressor, "flip_test", None))), net


def _index_entry(model_dir: Path, label: str) -> Path:
    from kpbench.io import cache_root

    return cache_root() / "onnx" / "index" / f"{label}-{sha256(model_dir / 'best.pt')[:16]}.json"


def remember_graph(trained: Trained, cache: Path, net_source: Path) -> None:
    """Note, by checkpoint, which cached graph a run's model has and the code it was computed by,
    so that the next Predictor of that run finds it without its model plugin, so without torch
    (:func:`indexed_graph`)."""
    from kpbench.io import atomic_write_json

    if trained.settings is None:
        return
    entry = {"graph": cache.name, "torch": _torch_version(), "input_size": trained.input_size,
             "origin": points_origin(trained.model),
             "sources": {str(f): sha256(f) for f in graph_sources(net_source)}}
    try:
        atomic_write_json(_index_entry(trained.model_dir, trained.label), entry)
    except OSError as exc:  # a read-only cache: the next start imports torch, nothing worse
        log.info(f"{trained.label}: graph index not written ({exc})")


def indexed_graph(path: str | Path, plugins) -> Trained | None:
    """A run's finished model as the cached graph :func:`remember_graph` noted, if that graph and
    the code it was computed by (each file's SHA-256) and torch's version are unchanged; None
    otherwise (then the model is located and loaded as usual)."""
    from kpbench.io import cache_root
    from kpbench.rundir import read_mapping
    from kpbench.trained import find_finished, get_schema, run_convention

    try:
        rd, settings, mdir, row = find_finished(path)
        entry = read_mapping(_index_entry(mdir, row["model"]))
        sources = entry["sources"]
        if entry["torch"] != _torch_version() or any(sha256(Path(f)) != h for f, h in sources.items()):
            return None
        graph = OnnxModel(cache_root() / "onnx" / entry["graph"])
        graph.origin = float(entry["origin"])
        return Trained(graph, row["model"], int(entry["input_size"]), get_schema(settings.data.schema),
                       run_convention(rd, settings, plugins), settings, rd.path, mdir, Path(next(iter(sources))))
    except Exception:  # noqa: BLE001 - no entry, a stale or unreadable one, no ONNX Runtime: the usual way
        return None


def cached_graph(found: Located) -> Trained | None:
    """A located model as its cached ONNX graph (exported and checked against PyTorch when it was
    written), without building the PyTorch model or importing its libraries: None where there
    is no such graph yet (or ONNX Runtime is not installed)."""
    import torch

    from kpbench import runtime
    from kpbench.regressor import flips

    if found.source is None:  # whether it opts out of flip averaging is known only once built
        return None
    cache = graph_cache(found.model_dir, found.label, found.source, flips(found.settings.eval.flip_test,
                                                                          found.plan.spec.factory))
    if not cache.is_file():
        return None
    try:
        graph = runtime.OnnxModel(cache, torch.get_num_threads())
    except Exception:  # noqa: BLE001 - no ONNX Runtime, or an unreadable cache file: export it again
        return None
    graph.origin = found.points_origin()  # as onnx_in_place gives the graph it exports
    trained = found.trained(graph)
    remember_graph(trained, cache, found.source)
    return trained


def onnx_in_place(trained: Trained) -> bool:
    """Run ``trained``'s PyTorch model under ONNX Runtime from now on, if the graph (exported once,
    cached) gives the same points within ONNX_TOLERANCE; True when it does. The graph takes one
    crop at a time (every shape fixed, so ONNX Runtime folds the shape arithmetic away; the faces
    of a photo run one after the other)."""
    import torch

    from kpbench import runtime
    from kpbench.io import atomic_write_bytes

    if not runtime.available():
        return False
    model, size = trained.model.eval(), trained.input_size
    cache, net = _graph_cache(trained)
    try:
        if cache.is_file():
            graph = runtime.OnnxModel(cache, torch.get_num_threads())
        else:
            data = runtime.to_onnx(model, torch.rand(1, 1, size, size), trained.label, any_batch=False)
            atomic_write_bytes(cache, data)
            graph = runtime.OnnxModel(data, torch.get_num_threads())
        crops = torch.rand(2, 1, size, size, generator=torch.Generator().manual_seed(0))
        with torch.inference_mode():
            diff = float((graph(crops).reshape(-1) - model(crops).reshape(-1)).abs().max())
    except (KpbenchError, OSError) as exc:
        log.info(f"{trained.label}: runs in PyTorch ({exc})")
        return False
    if not diff <= ONNX_TOLERANCE:
        log.warning(f"kpbench: {trained.label}: ONNX Runtime differs from PyTorch by {diff:.1e}; runs in PyTorch")
        return False
    graph.origin = points_origin(model)
    trained.model = graph
    remember_graph(trained, cache, net)
    return True


class Predictor:
    """A trained model behind a face detector: ``predictor(image) -> list[Face]``.

    ``model``: a run folder, a model folder or ``best.pt`` in one, or an ``.onnx`` file from
    ``kpbench export``; None: the model kpbench ships. ``detector``: any detector plugin that finds
    faces (default :func:`default_detector`), set to the model's crop convention;
    ``detector_options`` override. ``runtime``: ``auto`` (ONNX Runtime when installed),
    ``onnxruntime`` or ``torch``."""

    def __init__(self, model: str | Path | None = None, *, detector: str | None = None,
                 detector_options: dict | None = None, runtime: str = "auto", plugins=None):
        from kpbench.plugins import get_plugins

        plugins = plugins or get_plugins()
        source = SHIPPED if model is None else Path(model)
        if model is None and not (SHIPPED / "config.yaml").is_file():
            raise KpbenchError(f"this installation of kpbench has no shipped model ({SHIPPED}); give a trained run "
                               f"(Predictor.from_run, predict --model)")
        if source.suffix == ".onnx" and runtime == "torch":
            raise KpbenchError(f"{source}: an ONNX graph runs under ONNX Runtime, not runtime 'torch'")
        if model is None and runtime != "torch" and SHIPPED_GRAPH.is_file() and runs_graphs():
            trained = load_onnx(SHIPPED_GRAPH)
            trained.run_dir = SHIPPED
        elif source.suffix == ".onnx":
            trained = load_onnx(source)
        else:  # a graph exported by an earlier Predictor needs no PyTorch model (a faster start), and
            # once noted by checkpoint (indexed_graph) not even torch
            trained = indexed_graph(source, plugins) if runtime != "torch" else None
            if trained is None:
                found = locate_trained(source, plugins)
                trained = (cached_graph(found) if runtime != "torch" else None) or build_trained(found)
        self._setup(trained, detector, detector_options, runtime, plugins)

    @classmethod
    def from_trained(cls, trained: Trained, *, detector: str | None = None, detector_options: dict | None = None,
                     runtime: str = "auto", plugins=None) -> "Predictor":
        """A Predictor around a model already loaded (or built in a test)."""
        from kpbench.plugins import get_plugins

        self = cls.__new__(cls)
        self._setup(trained, detector, detector_options, runtime, plugins or get_plugins())
        return self

    def _setup(self, trained: Trained, detector, detector_options, runtime: str, plugins) -> None:
        if runtime not in RUNTIMES:
            raise KpbenchError(f"runtime {runtime!r}: choose one of {', '.join(RUNTIMES)}")
        self.trained = trained
        onnx_file = isinstance(trained.model, OnnxModel)
        if not onnx_file:
            from kpbench.evaluate import PointsAndConfidence, gives_confidence

            if gives_confidence(trained.model):
                trained.model = PointsAndConfidence(trained.model).eval()
        self.schema: Schema = trained.schema
        self.detector_name = detector or default_detector(plugins)
        self.detector = trained.convention.detector_for(plugins, self.detector_name, detector_options, cache=False)
        if not isinstance(self.detector, FindsFaces):
            raise KpbenchError(f"detector {self.detector_name!r} needs each photo's annotated points (as gt-box "
                               f"does); use one that finds faces, e.g. blazeface or mtcnn")
        if onnx_file:
            self.runtime = "onnxruntime"
        elif runtime == "torch":
            self.runtime = "torch"
        else:
            self.runtime = "onnxruntime" if onnx_in_place(self.trained) else "torch"
            if runtime == "onnxruntime" and self.runtime != "onnxruntime":
                from kpbench.runtime import available

                why = ("its ONNX graph does not give PyTorch's points (see the warning)" if available()
                       else "pip install 'kpbench[onnx]'")
                raise KpbenchError(f"{self.label}: cannot run under ONNX Runtime here: {why}")

    @classmethod
    def from_run(cls, path: str | Path, **options) -> "Predictor":
        """The best model of a run folder (or the model of a model folder or ``best.pt``)."""
        return cls(Path(path), **options)

    @classmethod
    def from_onnx(cls, path: str | Path, **options) -> "Predictor":
        """A model exported by ``kpbench export`` (the ``.onnx`` and its ``.json`` sidecar)."""
        if Path(path).suffix != ".onnx":
            raise KpbenchError(f"{path}: not an .onnx file")
        return cls(Path(path), **options)

    @property
    def label(self) -> str:
        return self.trained.label

    @property
    def margin(self) -> float | None:
        """The margin of the crops the model gets (its training crops')."""
        return getattr(self.detector, "margin", None)

    def __repr__(self) -> str:
        return (f"Predictor({self.label}, {self.schema.name}, {self.trained.input_size} px crops, "
                f"detector {self.detector_name}, {self.runtime})")

    def __call__(self, image: Any) -> list[Face] | list[list[Face]]:
        """The faces of one image (a path, PIL image or array), or of each image of a list."""
        if isinstance(image, (list, tuple)):
            return [self(i) for i in image]
        return self.faces(as_image(image))

    def faces(self, image: np.ndarray, found: list[dict] | None = None) -> list[Face]:
        """The faces of a decoded image, best detector score first (``found``: as for
        :meth:`predict_arrays`)."""
        found, _, points, conf = self.predict_arrays(image, found)
        return self.as_faces(found, points, conf)

    def as_faces(self, found: list[dict], points: np.ndarray, conf: np.ndarray | None) -> list[Face]:
        """:meth:`predict_arrays`'s arrays as :class:`Face` objects."""
        return [Face(tuple(float(v) for v in f["box"]), float(f.get("score", 1.0)), points[i], self.schema.points,
                     None if conf is None else conf[i]) for i, f in enumerate(found)]

    def detect(self, image: np.ndarray) -> list[dict]:
        """The detector's faces (each ``{"box", "score", ...}``) of a decoded image."""
        return self.detector.detect_all(np.asarray(image))  # a video Frame's RGB is made here

    def predict_arrays(self, image: np.ndarray, found: list[dict] | None = None):
        """The model on every face of a decoded image (``found``: boxes known already, e.g. from a
        track). Returns the faces, their boxes (F, 3|4), points (F, K, 2) in the image's pixels and
        per-point confidences (F, K) or None."""
        found = self.detect(image) if found is None else found
        if not found:
            return [], np.zeros((0, 3), np.float32), np.zeros((0, self.schema.num_points, 2)), None
        boxes = stack_boxes([f["box"] for f in found])
        return (found, boxes, *self.points_on(self.crops(image, boxes), boxes))

    def points_on(self, crops: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """The model on crops (F, 1, S, S) cut at ``boxes``: points (F, K, 2) in the image's pixels
        and per-point confidences (F, K), or None for a model without them."""
        model = self.trained.model
        if isinstance(model, OnnxModel):
            out = model.run(crops)
        else:
            import torch

            from kpbench.evaluate import predict

            out = predict(model, torch.from_numpy(crops))
        points, conf = split_confidence(out, self.schema.num_points)
        return to_image_pixels(points, boxes, points_origin(self.trained.model)), conf

    def crops(self, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """The model's input for each box: (F, 1, S, S) gray float32, cut as in training."""
        size = self.trained.input_size
        return np.stack([crop_from_image(image, b, size) for b in boxes])[:, None].astype(np.float32)


# How far a track's box is drawn from the detector's place around the points towards the training
# crops' (measured with the shipped model on filmed held-out faces: docs/results.md, Video)
PRIOR_WEIGHT = 0.25


class FaceTracker:
    """Faces through the frames of a video, as MediaPipe tracks them: the detector runs on the first
    frame, every ``redetect_every`` frames (to find new faces) and whenever a track is lost; on the
    other frames each face's crop is cut from its own points of the frame before. The box follows
    the points as it sat around them (:func:`kpbench.geometry.place_around`): as the detector's
    box did when the face was detected, drawn ``prior_weight`` (default ``PRIOR_WEIGHT``) of the way to
    where the training crops sat around theirs (the convention's ``crop_from_points``, where the
    model's run recorded it), so the crop keeps the crop convention and one detection's error is
    not carried through the track. A track is lost when its face
    confidence falls below ``keep`` x the one it had when detected, or its points collapse or leave
    the frame. ``predictor.predict_arrays`` is the per-frame step; turned crops (``align``) are
    detected on every frame."""

    def __init__(self, predictor: Predictor, redetect_every: int = 30, keep: float = 0.6,
                 prior_weight: float = PRIOR_WEIGHT):
        if redetect_every < 1 or not 0 <= keep <= 1 or not 0 <= prior_weight <= 1:
            raise KpbenchError(f"tracking: redetect_every must be >= 1 and keep and prior_weight in [0, 1], got "
                               f"{redetect_every}, {keep}, {prior_weight}")
        self.predictor, self.redetect_every, self.keep = predictor, int(redetect_every), float(keep)
        self.tracks: list[dict] = []  # per face: its detector face, box place, last points, confidence when detected
        prior = predictor.trained.convention.crop_from_points
        self.prior, self.prior_weight = None if prior is None else np.asarray(prior), float(prior_weight)
        self.frame = 0
        self.detections = 0  # frames on which the detector ran

    def __call__(self, image: np.ndarray):
        """The faces of the next frame: as :meth:`Predictor.predict_arrays`."""
        aligned = getattr(self.predictor.detector, "align", False)
        if aligned or not self.tracks or self.frame % self.redetect_every == 0:
            out = self._detect(image)
        else:
            out = self._follow(image)
            if out is None:
                out = self._detect(image)
        self.frame += 1
        return out

    def _detect(self, image: np.ndarray):
        self.detections += 1
        found, boxes, points, conf = self.predictor.predict_arrays(image)
        self.tracks = []
        for i, (face, box, pts) in enumerate(zip(found, boxes, points)):
            centre, spread = centre_and_spread(pts)
            if not spread > 0:
                continue
            place = place_around(box, pts)
            if self.prior is not None:
                place = (1 - self.prior_weight) * place + self.prior_weight * self.prior
            self.tracks.append({"face": face, "place": place, "last": (centre, spread),
                                "confidence": None if conf is None else float(conf[i].mean())})
        return found, boxes, points, conf

    def _follow(self, image: np.ndarray):
        """Every track's crop from its last points; None when a track is lost (then detect)."""
        h, w = image.shape[:2]
        found = []
        for t in self.tracks:
            found.append({**t["face"], "box": box_at(t["place"], *t["last"])})
        _, boxes, points, conf = self.predictor.predict_arrays(image, found)
        for i, (t, pts) in enumerate(zip(self.tracks, points)):
            centre, spread = centre_and_spread(pts)
            inside = 0 <= centre[0] <= w and 0 <= centre[1] <= h
            sure = conf is None or t["confidence"] is None or conf[i].mean() >= self.keep * t["confidence"]
            if not (inside and sure and spread > 2.0):
                return None
            t["last"] = (centre, spread)
        return found, boxes, points, conf
