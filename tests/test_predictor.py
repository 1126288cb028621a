"""The Python API of the photo path (`kpbench.Predictor`), confidences, the detector base class that
lets a detector plugin only detect, and the shipped model's card."""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import ROOT, run_cli

import kpbench
from kpbench.errors import KpbenchError

TINY = """
run: {name: api, seed: 0}
data: {dataset: synthetic, options: {n: 60, size: 48, seed: 1}, detector: none, input_size: 32}
models: [integral, cnn]
model_options: {cnn: {width: 4}, integral: {width: 4}}
train: {epochs: 1, batch_size: 16}
eval: {latency: false}
"""


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("api")
    (root / "tiny.yaml").write_text(TINY)
    r = run_cli("run", "-c", root / "tiny.yaml", "--out", root / "run")
    assert r.returncode == 0, r.stderr
    return root / "run"


@pytest.fixture(scope="module")
def face_image():
    from kpbench_plugins.synthetic import render

    image, points = render(3, 0, 48)
    return image, np.asarray(points, np.float64)


def test_predictor_takes_an_array_a_pil_image_a_path_and_a_list(tiny_run, face_image, tmp_path):
    from PIL import Image

    image, _ = face_image
    p = kpbench.Predictor.from_run(tiny_run / "models" / "integral", detector="none", runtime="torch")
    (face,) = p(image)
    assert face.points.shape == (15, 2) and len(face.keypoints) == 15
    assert set(face.keypoints) == set(p.schema.points)
    path = tmp_path / "face.png"
    Image.fromarray(image).save(path)
    for other in (Image.open(path), str(path), path):
        (again,) = p(other)
        np.testing.assert_allclose(again.points, face.points, atol=1e-4)
    batch = p([image, image])
    assert len(batch) == 2 and all(len(faces) == 1 for faces in batch)
    assert repr(p).startswith("Predictor(integral, kaggle15, 32 px")


def test_heatmap_models_give_confidences_and_others_null(tiny_run, face_image):
    image, _ = face_image
    (face,) = kpbench.Predictor.from_run(tiny_run / "models" / "integral", detector="none", runtime="torch")(image)
    assert face.confidence.shape == (15,) and ((face.confidence >= 0) & (face.confidence <= 1)).all()
    doc = face.to_json()
    json.dumps(doc, allow_nan=False)
    assert set(doc["confidence"]) == set(face.keypoints) and 0 <= doc["face_confidence"] <= 1
    (plain,) = kpbench.Predictor.from_run(tiny_run / "models" / "cnn", detector="none", runtime="torch")(image)
    assert plain.confidence is None and plain.to_json()["confidence"] is None


def test_confidence_is_high_for_a_sharp_peak_and_low_for_a_flat_map():
    from kpbench_plugins.models import soft_argmax

    h = torch.full((1, 2, 32, 32), -20.0)
    h[0, 0, 10, 20] = 20.0  # one sharp peak; the second map is flat
    h[0, 1] = 0.0
    points, conf = soft_argmax(h, confidence=True)
    assert points[0, :2].tolist() == pytest.approx([20.5 / 32, 10.5 / 32], abs=1e-4)
    assert conf[0, 0] > 0.99 and conf[0, 1] < 0.02
    assert torch.equal(points, soft_argmax(h))


def test_onnx_runtime_gives_the_pytorch_points(tiny_run, face_image):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    image, _ = face_image
    model = tiny_run / "models" / "integral"
    fast = kpbench.Predictor.from_run(model, detector="none", runtime="onnxruntime")
    slow = kpbench.Predictor.from_run(model, detector="none", runtime="torch")
    assert (fast.runtime, slow.runtime) == ("onnxruntime", "torch")
    (a,), (b,) = fast(image), slow(image)
    np.testing.assert_allclose(a.points, b.points, atol=0.01)  # pixels
    np.testing.assert_allclose(a.confidence, b.confidence, atol=1e-4)



def test_a_model_reports_its_points_numbered_as_its_training_annotations(tiny_run, face_image, tmp_path):
    """A model trained on annotations that count pixels from 1 (Regressor.origin 1) reports every
    point 1 px right and down of the same model's from 0: in PyTorch, under ONNX Runtime (the graph
    it exports, and the one a later Predictor takes from the cache) and from an exported graph (its
    sidecar's points_origin)."""
    import shutil

    image, _ = face_image
    moved = tmp_path / "run"
    shutil.copytree(tiny_run, moved)
    ckpt = moved / "models" / "integral" / "best.pt"
    state = torch.load(ckpt, weights_only=True)
    state["state_dict"]["origin"] = torch.tensor(1.0)
    torch.save(state, ckpt)
    runtimes = ["torch"] + (["onnxruntime"] if importlib.util.find_spec("onnxruntime") and importlib.util.find_spec("onnx") else [])
    for runtime in runtimes:
        (a,) = kpbench.Predictor.from_run(tiny_run / "models" / "integral", detector="none", runtime=runtime)(image)
        (b,) = kpbench.Predictor.from_run(moved / "models" / "integral", detector="none", runtime=runtime)(image)
        np.testing.assert_allclose(b.points - a.points, 1.0, atol=1e-4)
    if len(runtimes) == 2:
        # the second Predictor under ONNX Runtime takes the graph the first cached
        (again,) = kpbench.Predictor.from_run(moved / "models" / "integral", detector="none")(image)
        np.testing.assert_allclose(again.points - a.points, 1.0, atol=1e-4)
        onnx = tmp_path / "m.onnx"
        assert run_cli("export", "--model", moved / "models" / "integral", "--out", onnx).returncode == 0
        assert json.loads((tmp_path / "m.onnx.json").read_text())["points_origin"] == 1.0
        (c,) = kpbench.Predictor.from_onnx(onnx, detector="none")(image)
        np.testing.assert_allclose(c.points - a.points, 1.0, atol=0.01)

def test_a_cached_graph_starts_without_building_the_pytorch_model(tiny_run, face_image, monkeypatch, tmp_path):
    """The second Predictor of a run takes the graph the first exported (checked then) and never
    builds the PyTorch model; the points are the first one's."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    import kpbench.predictor as predictor

    monkeypatch.setenv("KPBENCH_CACHE_DIR", str(tmp_path))
    image, _ = face_image
    model = tiny_run / "models" / "integral"
    first = kpbench.Predictor.from_run(model, detector="none")
    assert first.runtime == "onnxruntime" and len(list((tmp_path / "onnx").glob("integral-*.onnx"))) == 1

    def not_built(*args, **kwargs):
        raise AssertionError("the PyTorch model was built")

    monkeypatch.setattr(predictor, "build_trained", not_built)
    second = kpbench.Predictor.from_run(model, detector="none")
    assert second.runtime == "onnxruntime" and second.trained.settings is not None
    (a,), (b,) = first(image), second(image)
    np.testing.assert_allclose(a.points, b.points, atol=1e-4)
    with pytest.raises(AssertionError, match="was built"):  # runtime torch still builds it
        kpbench.Predictor.from_run(model, detector="none", runtime="torch")


def test_the_onnx_graph_cache_tells_flip_averaging_apart(tiny_run):
    from kpbench.predictor import _graph_cache
    from kpbench.trained import load_trained

    trained = load_trained(tiny_run / "models" / "integral", kpbench.plugins.get_plugins())
    trained.model.flip_test = None
    plain = _graph_cache(trained)
    trained.model.flip_test = list(trained.model.flip_test or range(15))
    assert _graph_cache(trained) != plain  # a graph exported with the other setting is never reused
    trained.model.flip_test = None
    assert _graph_cache(trained) == plain


def test_bad_inputs_are_one_line_errors(tiny_run):
    model = tiny_run / "models" / "cnn"
    with pytest.raises(KpbenchError, match="needs each photo's annotated points"):
        kpbench.Predictor.from_run(model, detector="gt-box")
    with pytest.raises(KpbenchError, match="runtime 'gpu'"):
        kpbench.Predictor.from_run(model, detector="none", runtime="gpu")
    p = kpbench.Predictor.from_run(model, detector="none", runtime="torch")
    with pytest.raises(KpbenchError, match="expected an image"):
        p(np.zeros((4, 4, 7)))
    with pytest.raises(KpbenchError, match="not an .onnx file"):
        kpbench.Predictor.from_onnx(model)


def imported_by_predict(tmp_path, args: list[str], modules: tuple[str, ...]) -> tuple[int, list[str]]:
    """``kpbench predict face.png`` (detector none, overlays on, into out/) with ``args`` in a fresh
    process: its return code and which of ``modules`` it imported."""
    code = ("import json, sys; from kpbench.cli import main; "
            f"rc = main(['predict', {str(tmp_path / 'face.png')!r}, '--detector', 'none', *{args!r}, "
            f"'--out', {str(tmp_path / 'out')!r}, '--overlay']); "
            f"print(rc, json.dumps([m for m in {modules!r} if m in sys.modules]))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr
    rc, found = r.stdout.strip().splitlines()[-1].split(" ", 1)
    return int(rc), json.loads(found)


def test_predict_on_a_photo_imports_neither_the_runner_nor_the_report_nor_matplotlib(tiny_run, face_image, tmp_path):
    # Start-up is part of every photo's time: the overlay is drawn with PIL (matplotlib alone takes a second)
    from PIL import Image

    Image.fromarray(face_image[0]).save(tmp_path / "face.png")
    modules = ("kpbench.runner", "kpbench.report", "kpbench.plots", "matplotlib")
    args = ["--model", str(tiny_run / "models" / "integral"), "--runtime", "torch"]
    assert imported_by_predict(tmp_path, args, modules) == (0, [])
    written = json.loads((tmp_path / "out" / "face.json").read_text())
    assert len(written["faces"]) == 1 and written["faces"][0]["confidence"]
    assert json.loads((tmp_path / "out" / "predictions.json").read_text())["partial"] is False
    assert np.asarray(Image.open(tmp_path / "out" / "face.jpg")).shape == (*face_image[0].shape[:2], 3)


def test_predict_with_an_exported_graph_starts_without_importing_torch(tmp_path, face_image):
    # torch's import is 1-2 s of a 2-core machine's start-up: the shipped model's graph (as any
    # `kpbench export` graph) runs under ONNX Runtime, and nothing on the photo path imports torch
    pytest.importorskip("onnxruntime")
    from PIL import Image

    from kpbench.card import GRAPH
    from kpbench.predictor import SHIPPED

    if not (SHIPPED / GRAPH).is_file():
        pytest.skip("no shipped model in this checkout")
    Image.fromarray(face_image[0]).save(tmp_path / "face.png")
    assert imported_by_predict(tmp_path, [], ("torch",)) == (0, [])
    written = json.loads((tmp_path / "out" / "face.json").read_text())
    assert len(written["faces"]) == 1 and len(written["faces"][0]["keypoints"]) == 15
    batch = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert batch["runtime"] == "onnxruntime" and batch["model"] == str(SHIPPED / GRAPH)
    assert (tmp_path / "out" / "face.jpg").is_file()  # the overlay too


def test_a_run_s_model_starts_without_torch_once_its_graph_is_cached(tiny_run, tmp_path, monkeypatch):
    # The first Predictor of a run exports its graph and notes it by checkpoint; the next ones find
    # it without the model plugin, so without torch, while the code and torch are those it was made by.
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    monkeypatch.setenv("KPBENCH_CACHE_DIR", str(tmp_path / "cache"))
    model = tiny_run / "models" / "integral"
    image = np.random.default_rng(2).integers(0, 256, (48, 48, 3), dtype=np.uint8)
    np.save(tmp_path / "image.npy", image)
    first = kpbench.Predictor(model, detector="none")
    assert first.runtime == "onnxruntime"
    (entry,) = (tmp_path / "cache" / "onnx" / "index").glob("integral-*.json")
    code = ("import sys, numpy as np; from kpbench import Predictor; "
            f"p = Predictor({str(model)!r}, detector='none'); f = p(np.load({str(tmp_path / 'image.npy')!r}))[0]; "
            "print('torch' in sys.modules, p.runtime); print(f.points.tolist())")

    def again():
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300,
                           env={**os.environ, "HF_HUB_OFFLINE": "1", "KPBENCH_CACHE_DIR": str(tmp_path / "cache")})
        assert r.returncode == 0, r.stderr
        lines = r.stdout.strip().splitlines()
        return lines[-2], np.asarray(json.loads(lines[-1]))

    want = first(image)[0].points
    said, points = again()
    assert said == "False onnxruntime"
    np.testing.assert_allclose(points, want, atol=1e-4)
    stale = json.loads(entry.read_text())
    entry.write_text(json.dumps({**stale, "torch": "0.0"}))  # made by another torch: not used
    said, points = again()
    assert said == "True onnxruntime"
    np.testing.assert_allclose(points, want, atol=1e-4)


class Rectangles(kpbench.FaceDetector):
    """A whole detector plugin: raw rectangles and eyes; everything else is the core's."""

    calibration = {"scale": 0.8, "shift_x": 0.0, "shift_y": 0.1}

    def raw_faces(self, rgb):
        return [kpbench.RawFace((10, 20, 50, 60), 0.95, np.array([[40.0, 30.0], [20.0, 30.0]])),
                kpbench.RawFace((100, 100, 120, 120), 0.3),
                kpbench.RawFace((70, 10, 90, 30), 0.7, np.array([[75.0, 18.0], [85.0, 22.0]]))]


def test_a_detector_plugin_that_returns_rectangles_gets_the_crop_convention():
    from kpbench.calibrate import calibratable
    from kpbench.geometry import square_box

    det = Rectangles(margin=0.1)
    faces = det.detect_all(np.zeros((130, 130, 3), np.uint8))
    assert [f["score"] for f in faces] == [0.95, 0.7]  # best first; below min_score (0.5) dropped
    assert faces[0]["box"] == pytest.approx(square_box((10, 20, 50, 60), 0.1, 0.8, 0.0, 0.1))
    turned = Rectangles(margin=0.1, align=True).detect_all(np.zeros((130, 130), np.uint8))
    assert turned[0]["box"][3] == pytest.approx(0.0) and turned[1]["box"][3] == pytest.approx(21.8, abs=0.1)
    near_second = np.array([[72.0, 12.0], [88.0, 28.0], [80.0, 20.0]])
    assert det(np.zeros((130, 130, 3), np.uint8), near_second) == faces[1]["box"]
    assert det(np.zeros((130, 130, 3), np.uint8), np.array([[300.0, 300.0], [310.0, 320.0]])) is None
    assert calibratable(Rectangles)
    for bad in ({"margin": float("nan")}, {"margin": -0.6}, {"min_score": "high"}, {"align": "yes"}):
        with pytest.raises(KpbenchError, match="detector option"):
            Rectangles(**bad)


def test_mtcnn_options_that_would_hang_or_crash_are_refused():
    pytest.importorskip("facenet_pytorch")
    from kpbench_plugins.mtcnn import MTCNNDetector

    for bad in ({"factor": 1.0}, {"min_face_size": 0}, {"min_face_size": "big"}, {"threads": -1}):
        with pytest.raises(KpbenchError, match="mtcnn"):
            MTCNNDetector(**bad)


def test_the_shipped_model_is_what_its_card_says():
    from kpbench.card import verify
    from kpbench.config import Settings, differences, load
    from kpbench.predictor import SHIPPED

    if not (SHIPPED / "card.json").is_file():
        pytest.skip("no shipped model in this checkout")
    card = verify(SHIPPED)
    settings = Settings.from_dict(load(SHIPPED / "config.yaml"))
    assert differences(Settings.from_dict(load(ROOT / card["config_file"])), settings) == []
    assert settings.run.out is None  # not the training machine's run folder
    p = kpbench.Predictor(detector="none", runtime="torch")
    assert p.label == card["model"] and p.trained.input_size == card["input_size"]
    assert p(np.full((64, 64, 3), 128, np.uint8))[0].points.shape == (15, 2)
    # its graph (model.onnx, in the card's files) is the checkpoint's model: the same points
    from kpbench.card import GRAPH

    assert GRAPH in card["sha256"] and f"{GRAPH}.json" in card["sha256"]
    if importlib.util.find_spec("onnxruntime") is None:
        return
    graph = kpbench.Predictor(detector="none")
    assert graph.runtime == "onnxruntime" and graph.trained.model_dir == SHIPPED / GRAPH
    rng = np.random.default_rng(0)
    for image in (rng.integers(0, 256, (96, 128, 3), dtype=np.uint8), np.full((64, 64, 3), 128, np.uint8)):
        got, want = graph(image)[0], p(image)[0]
        np.testing.assert_allclose(got.points, want.points, atol=1e-3 * 128)  # ONNX_TOLERANCE of the crop
        np.testing.assert_allclose(got.confidence, want.confidence, atol=1e-3)


def test_ship_packages_a_run_of_the_config_as_written_and_refuses_any_other(tiny_run, tmp_path):
    from kpbench.card import ship, verify
    from kpbench.config import Settings, differences, load

    def config(text):
        (tmp_path / "c.yaml").write_text(text)
        return str(tmp_path / "c.yaml")

    root = tmp_path / "shipped"
    with pytest.raises(KpbenchError, match="train.epochs"):  # another recipe
        ship(tiny_run, config(TINY.replace("epochs: 1", "epochs: 2")), root=root)
    with pytest.raises(KpbenchError, match="not one of"):  # the run's best model is not the config's
        ship(tiny_run, config(TINY.replace("[integral, cnn]", "[mean-shape]")), root=root)
    assert not root.exists()
    # A run that trained a subset of the config's models is the same recipe for them: the package's
    # config is the config file's, and its files are what its card says.
    wanted = config(TINY.replace("[integral, cnn]", "[integral, cnn, mean-shape]"))
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from kpbench.card import GRAPH

    dest = ship(tiny_run, wanted, root=root)
    card = verify(dest)
    # the run's best model (cnn at 32 px) has an operator the exporter cannot take: shipped without a graph
    assert card["model"] == "cnn" and GRAPH not in card["sha256"] and not (dest / GRAPH).exists()
    assert kpbench.Predictor(dest, detector="none").runtime == "torch"
    # a model that exports is shipped with its graph, one face at a time, giving the checkpoint's points
    other = ship(tiny_run / "models" / "integral", wanted, root=tmp_path / "other")
    assert GRAPH in verify(other)["sha256"]
    sidecar = json.loads((other / f"{GRAPH}.json").read_text())
    assert sidecar["input"]["shape"][0] == 1 and sidecar["run"] == f"shipped/{other.name}"
    image = np.random.default_rng(1).integers(0, 256, (48, 48, 3), dtype=np.uint8)
    from_graph = kpbench.Predictor.from_onnx(other / GRAPH, detector="none")(image)[0].points
    from_run = kpbench.Predictor(other, detector="none", runtime="torch")(image)[0].points
    np.testing.assert_allclose(from_graph, from_run, atol=1e-3 * 48)
    assert differences(Settings.from_dict(load(wanted)), Settings.from_dict(load(dest / "config.yaml"))) == []
    assert (dest / "models" / card["model"] / "best.pt").is_file() and card["result"]["nme"] > 0
    with pytest.raises(KpbenchError, match="exists"):
        ship(tiny_run, wanted, root=root)


def test_evaluate_without_a_dataset_scores_the_run_s_own_test_split(tiny_run, tmp_path):
    out = tmp_path / "ev"
    r = run_cli("evaluate", "--model", tiny_run / "models" / "cnn", "--out", out)
    assert r.returncode == 0, r.stderr
    run_test = json.loads((tiny_run / "manifest.json").read_text())["splits"]["test"]
    assert json.loads((out / "manifest.json").read_text())["splits"]["test"] == run_test
    with np.load(tiny_run / "models" / "cnn" / "predictions.npz") as a, np.load(out / "models" / "cnn" / "predictions.npz") as b:
        assert list(a["ids"]) == list(b["ids"])
        np.testing.assert_allclose(a["pred"], b["pred"], atol=1e-3)
    r = run_cli("evaluate", "--model", tiny_run / "models" / "cnn", "--out", out)
    assert r.returncode == 2 and "--out" in r.stderr


def test_evaluate_keeps_the_training_seed_of_a_model_trained_with_seeds(tmp_path):
    import csv

    (tmp_path / "tiny.yaml").write_text(TINY.replace("models: [integral, cnn]", "models: [cnn]"))
    run = tmp_path / "run"
    assert run_cli("run", "-c", tmp_path / "tiny.yaml", "--seeds", "1", "--out", run).returncode == 0
    out = tmp_path / "ev"
    r = run_cli("evaluate", "--model", run, "--out", out)
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "models" / "cnn" / "result.json").read_text())["seed"] == 1  # the model's seed
    with (out / "leaderboard.csv").open(newline="") as fh:
        assert [row["seed"] for row in csv.DictReader(fh)] == ["1"]
    # ... on the run's own test split, which the run's seed (0) cut
    assert json.loads((out / "manifest.json").read_text())["splits"]["test"] == \
        json.loads((run / "manifest.json").read_text())["splits"]["test"]


def test_list_models_marks_the_shipped_weights():
    from kpbench.predictor import SHIPPED

    if not (SHIPPED / "card.json").is_file():
        pytest.skip("no shipped model in this checkout")
    r = run_cli("list", "models", "--json")
    assert r.returncode == 0, r.stderr
    marks = {m["name"]: m["shipped"] for m in json.loads(r.stdout)}
    assert marks["effnet-heatmap"] == "kpbench/shipped/wild" and marks["cnn"] is None
