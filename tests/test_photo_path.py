"""The photo path: a model's crops through `predict`, `evaluate` and `eval.detectors` follow the crop
convention it was trained with; detector calibration; the box cache; `predict` safety."""

import hashlib
import json

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from conftest import ROOT, run_cli

# A test plugin: an ideal detector that knows every photo's annotated points (from a JSON file named by
# $ORACLE_POINTS, keyed by the sha1 of the pixels) and returns the annotated face box plus *its own*
# margin, deliberately not the run's; and a dataset of those photos.
ORACLE = '''
import hashlib, json, os
import numpy as np
import kpbench
from kpbench.data import Sample, points_box, read_image


def _known():
    return json.loads(open(os.environ["ORACLE_POINTS"]).read())


class Oracle:
    def __init__(self, margin: float = 0.33):
        self.margin = margin

    def __call__(self, image, points):
        return points_box(np.asarray(points, np.float32), self.margin)

    def detect_all(self, image):
        key = hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest()
        pts = np.asarray(_known()[key]["points"], np.float32)
        return [{"box": points_box(pts, self.margin), "score": 1.0, "landmarks": None}]


class Photos:
    schema = "kaggle15"

    def __init__(self, path=None):
        self.items = sorted(_known().values(), key=lambda v: v["file"])

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        it = self.items[i]
        return Sample(read_image(it["file"]), np.asarray(it["points"], np.float32), it["file"], self.schema)


@kpbench.hookimpl
def kpbench_detectors():
    return [kpbench.DetectorSpec("oracle", Oracle, "knows the annotation")]


@kpbench.hookimpl
def kpbench_datasets():
    return [kpbench.DatasetSpec("oracle-photos", Photos, "test photos")]
'''

TRAIN = """
run: {name: conv, seed: 0}
data:
  dataset: synthetic
  options: {n: 80, size: 48, seed: 1}
  detector: gt-box
  detector_options: {margin: 0.2}
  input_size: 32
models: [cnn]
model_options: {cnn: {width: 4}}
train: {epochs: 2, batch_size: 16, box_jitter: {scale: 0.05, shift: 0.02}}
eval: {latency: false, detectors: [oracle]}
"""


def _canvas_photos(tmp_path, n=4):
    """Synthetic faces pasted, scaled, into larger gray canvases at seeded positions."""
    from PIL import Image

    from kpbench_plugins.synthetic import render

    rng = np.random.default_rng(5)
    photos, known = tmp_path / "photos", {}
    photos.mkdir()
    for i in range(n):
        face, pts = render(7, i, 48)
        k = float(rng.uniform(1.5, 2.5))
        size = int(round(48 * k))
        face = np.asarray(Image.fromarray(face).resize((size, size), Image.BILINEAR))
        canvas = np.full((200, 260, 3), 90, np.uint8) if face.ndim == 3 else np.full((200, 260), 90, np.uint8)
        x0, y0 = int(rng.integers(0, 260 - size)), int(rng.integers(0, 200 - size))
        canvas[y0:y0 + size, x0:x0 + size] = face
        points = (np.asarray(pts, np.float64) + 0.5) * size / 48 - 0.5 + [x0, y0]
        path = photos / f"face{i}.png"
        Image.fromarray(canvas).save(path)
        from kpbench.data import read_image

        key = hashlib.sha1(np.ascontiguousarray(read_image(path)).tobytes()).hexdigest()
        known[key] = {"file": str(path), "points": points.tolist()}
    (tmp_path / "known.json").write_text(json.dumps(known))
    return photos, known


@pytest.fixture
def oracle_env(tmp_path):
    (tmp_path / "plug").mkdir()
    (tmp_path / "plug" / "kpbench_oracle.py").write_text(ORACLE)
    photos, known = _canvas_photos(tmp_path)
    env = {"ORACLE_POINTS": str(tmp_path / "known.json"), "KPBENCH_PLUGINS": "kpbench_oracle"}
    return tmp_path / "plug", env, photos, known


def test_predict_evaluate_and_eval_paths_crop_as_the_model_was_trained(tmp_path, oracle_env):
    from kpbench.data import crop_resize, points_box, read_image, to_gray, to_image_pixels
    from kpbench.evaluate import predict
    from kpbench.trained import load_trained
    from kpbench.plugins import get_plugins

    plug, env, photos, known = oracle_env
    cfg = tmp_path / "train.yaml"
    cfg.write_text(TRAIN)
    run = tmp_path / "run"
    r = run_cli("run", "-c", cfg, "--out", run, pythonpath=plug, env=env)
    assert r.returncode == 0, r.stderr
    convention = json.loads((run / "manifest.json").read_text())["crop_convention"]
    assert convention["margin"] == 0.2
    # where the training crops sat around their points, for video tracks: a gt-box crop is centred on
    # the points' box and 1.4x its side, so the side is more than 1.4 spreads
    offset_x, offset_y, side = convention["crop_from_points"]
    assert abs(offset_x) < 0.5 and abs(offset_y) < 1.0 and side > 1.4

    # eval.detectors: the ideal detector at the run's margin crops exactly like gt-box(0.2).
    paths = pd.read_csv(run / "leaderboard_by_path.csv")
    assert list(paths["path"]) == ["gt-box", "oracle"]
    assert paths["nme_ratio"].tolist() == pytest.approx([1.0, 1.0], abs=1e-9)
    with np.load(run / "models" / "cnn" / "paths" / "oracle" / "predictions.npz") as z, \
            np.load(run / "models" / "cnn" / "predictions.npz") as base:
        np.testing.assert_allclose(z["boxes"], base["boxes"], atol=1e-4)

    # predict: the box is the face box plus the run's margin (not the detector's own 0.33) ...
    out = tmp_path / "pred"
    r = run_cli("predict", photos, "--model", run, "--detector", "oracle", "--out", out, pythonpath=plug, env=env)
    assert r.returncode == 0, r.stderr
    import os

    os.environ["ORACLE_POINTS"] = env["ORACLE_POINTS"]
    import sys

    sys.path.insert(0, str(plug))
    try:
        trained = load_trained(run, get_plugins(("kpbench_oracle",)))
    finally:
        sys.path.remove(str(plug))
    assert trained.convention.crop_from_points == (offset_x, offset_y, side)
    ours = {}
    for item in known.values():
        name = item["file"].rsplit("/", 1)[-1][:-4]
        (face,) = json.loads((out / f"{name}.json").read_text())["faces"]
        want = points_box(np.asarray(item["points"], np.float32), 0.2)
        assert face["box"] == pytest.approx(list(want), abs=0.02)
        # ... and the points are the model's on exactly that crop, mapped back to the photo.
        crop = crop_resize(to_gray(read_image(item["file"])), np.float32(want), trained.input_size)
        box = np.asarray([want], np.float32)
        expect = to_image_pixels(predict(trained.model, torch.from_numpy(crop[None, None].copy())), box)[0]
        got = np.array(list(face["keypoints"].values()))
        np.testing.assert_allclose(got, expect, atol=0.02)
        ours[item["file"]] = got

    # evaluate through the same detector: the same crops and points as predict.
    ev = tmp_path / "eval"
    r = run_cli("evaluate", "--model", run, "--dataset", "oracle-photos", "--detector", "oracle", "--out", ev,
                pythonpath=plug, env=env)
    assert r.returncode == 0, r.stderr
    assert yaml.safe_load((ev / "config.yaml").read_text())["data"]["detector_options"] == {"margin": 0.2}
    with np.load(ev / "models" / "cnn" / "predictions.npz") as z:
        for i, pred in zip(z["ids"], z["pred"]):
            np.testing.assert_allclose(pred, ours[str(i)], atol=0.02)


def test_predict_never_overwrites_and_names_outputs_apart(tmp_path, oracle_env):
    from PIL import Image

    from kpbench.photos import output_names

    plug, env, photos, known = oracle_env
    run = tmp_path / "run"
    cfg = tmp_path / "train.yaml"
    cfg.write_text(TRAIN.replace("epochs: 2", "epochs: 1").replace("detectors: [oracle]", "detectors: []"))
    assert run_cli("run", "-c", cfg, "--out", run, pythonpath=plug, env=env).returncode == 0

    # --out equal to the photos' folder: refused before any work, the photos untouched.
    before = {p.name: p.read_bytes() for p in photos.iterdir()}
    r = run_cli("predict", photos, "--model", run, "--detector", "oracle", "--out", photos, pythonpath=plug, env=env)
    assert r.returncode == 2 and "holds the input photos" in r.stderr
    assert {p.name: p.read_bytes() for p in photos.iterdir()} == before

    # a.png and a.jpg, and the same name in two folders: four distinct results; a broken file is
    # reported and counted, the others still predicted.
    more = tmp_path / "more"
    (more / "x").mkdir(parents=True)
    (more / "y").mkdir()
    img = Image.open(photos / "face0.png")
    img.save(more / "x" / "a.png")
    img.convert("RGB").save(more / "x" / "a.jpg")
    img.save(more / "y" / "a.png")
    (more / "x" / "broken.jpg").write_bytes(b"not a jpeg")
    names = output_names([more / "x" / "a.png", more / "x" / "a.jpg", more / "y" / "a.png"])
    assert len(set(names)) == 3
    out = tmp_path / "out"
    r = run_cli("predict", more / "x", more / "y" / "a.png", "--model", run, "--detector", "gt-box",
                "--out", out, pythonpath=plug, env=env)
    assert r.returncode == 2 and "needs each photo's annotated points" in r.stderr  # gt-box cannot find faces
    r = run_cli("predict", more / "x", more / "y" / "a.png", "--model", run, "--detector", "none", "--out", out,
                "--no-overlay", pythonpath=plug, env=env)
    assert r.returncode == 0, r.stderr
    assert "broken.jpg" in r.stderr and "1 unreadable" in r.stdout
    summary = json.loads((out / "predictions.json").read_text())
    assert len(summary["images"]) == 3 and len(summary["errors"]) == 1
    assert len({e["output"] for e in summary["images"]}) == 3
    assert not list(out.glob("*.jpg"))  # --no-overlay
    # the same folder again: not empty any more, refused
    r = run_cli("predict", more / "x", "--model", run, "--detector", "none", "--out", out, pythonpath=plug, env=env)
    assert r.returncode == 2 and "not empty" in r.stderr



def test_predict_with_the_exported_onnx_gives_the_runs_boxes_and_points(tmp_path, oracle_env, monkeypatch):
    """`predict --model FILE.onnx` crops by the sidecar's convention (the run's margin 0.2, not the
    detector's own 0.33) and gives the run directory's boxes and points: within 0.011 px, the JSON's
    0.01 px rounding (the graph itself differs from PyTorch by about 1e-7 of the crop side)."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    import sys

    from kpbench import KpbenchError
    from kpbench.data import points_box
    from kpbench.trained import load_onnx

    plug, env, photos, known = oracle_env
    cfg = tmp_path / "train.yaml"
    cfg.write_text(TRAIN.replace("models: [cnn]", "models: [integral]").replace("detectors: [oracle]", "detectors: []"))
    run = tmp_path / "run"
    assert run_cli("run", "-c", cfg, "--out", run, pythonpath=plug, env=env).returncode == 0
    onnx = tmp_path / "m.onnx"
    assert run_cli("export", "--model", run, "--out", onnx, pythonpath=plug, env=env).returncode == 0
    for model, out in ((run, tmp_path / "by_run"), (onnx, tmp_path / "by_onnx")):
        r = run_cli("predict", photos, "--model", model, "--detector", "oracle", "--out", out,
                    *(["--overlay"] if model == onnx else []), pythonpath=plug, env=env)
        assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "by_onnx" / "predictions.json").read_text())["model"] == str(onnx)
    worst = 0.0
    for item in known.values():
        name = item["file"].rsplit("/", 1)[-1][:-4]
        (a,), (b,) = (json.loads((tmp_path / d / f"{name}.json").read_text())["faces"] for d in ("by_run", "by_onnx"))
        assert b["box"] == a["box"] == pytest.approx(list(points_box(np.asarray(item["points"], np.float32), 0.2)),
                                                     abs=0.02)
        diff = np.array(list(a["keypoints"].values())) - np.array(list(b["keypoints"].values()))
        worst = max(worst, float(np.abs(diff).max()))
        assert (tmp_path / "by_onnx" / f"{name}.jpg").is_file()  # the overlay, asked for
        assert not (tmp_path / "by_run" / f"{name}.jpg").exists()  # none by default: the keypoints' files only
    print(f"max |run - onnx| over {len(known)} photos: {worst:.4f} px")
    assert worst <= 0.011

    # One line when the sidecar is missing or ONNX Runtime is not installed.
    lone = tmp_path / "lone.onnx"
    lone.write_bytes(onnx.read_bytes())
    r = run_cli("predict", photos, "--model", lone, "--detector", "oracle", "--out", tmp_path / "x",
                pythonpath=plug, env=env)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "no lone.onnx.json beside it" in r.stderr
    # ... when the file is not ONNX, or its sidecar not JSON.
    (tmp_path / "lone.onnx.json").write_text((tmp_path / f"{onnx.name}.json").read_text())
    lone.write_text("not a graph")
    with pytest.raises(KpbenchError, match="ONNX Runtime cannot load it: .*INVALID_PROTOBUF"):
        load_onnx(lone)
    (tmp_path / "lone.onnx.json").write_text("{bad")
    with pytest.raises(KpbenchError, match="lone.onnx.json: damaged or unreadable"):
        load_onnx(lone)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(KpbenchError, match=r"needs onnxruntime: pip install 'kpbench\[onnx\]'"):
        load_onnx(onnx)

def test_read_image_16_bit_and_palette(tmp_path):
    from PIL import Image

    from kpbench.data import read_image

    ramp = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)  # 0 .. 65520
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    got = read_image(tmp_path / "deep.png")
    assert got.shape == (64, 64, 3) and got.dtype == np.uint8
    np.testing.assert_allclose(got[..., 0].astype(float), ramp / 65535 * 255, atol=1.0)  # not clipped white
    pal = Image.fromarray(np.tile(np.arange(0, 256, 4, dtype=np.uint8), (64, 1))).convert("P")
    pal.save(tmp_path / "pal.png")
    np.testing.assert_array_equal(read_image(tmp_path / "pal.png"), np.asarray(pal.convert("RGB")))


class BiasedDetector:
    """Finds the annotated face box, but as a detector would: 1.25x too big and off-centre,
    with a seeded scatter, unless calibrated through scale/shift_x/shift_y."""

    def __init__(self, margin=0.0, scale=1.0, shift_x=0.0, shift_y=0.0):
        self.margin, self.scale, self.shift_x, self.shift_y = margin, scale, shift_x, shift_y
        self.rng = np.random.default_rng(0)

    def __call__(self, image, points):
        from kpbench.data import points_box

        x0, y0, side = points_box(np.asarray(points, np.float64), 0.0)
        raw = side * 1.25 * np.exp(self.rng.normal(0, 0.05))
        cx = x0 + side / 2 - 0.1 * raw + self.rng.normal(0, 0.02) * raw
        cy = y0 + side / 2 + 0.05 * raw
        face = raw * self.scale
        cx, cy = cx + self.shift_x * raw, cy + self.shift_y * raw
        crop = face * (1 + 2 * self.margin)
        return (cx - crop / 2, cy - crop / 2, crop)


def test_calibrate_recovers_a_detectors_bias_and_spread():
    from kpbench.calibrate import IDENTITY, calibratable, measure, summarize
    from kpbench.registry import DatasetSpec  # noqa: F401  (the dataset below is a plain list)
    from kpbench_plugins.synthetic import SyntheticFaces

    assert calibratable(BiasedDetector) and not calibratable(lambda margin=0.1: None)
    data = SyntheticFaces(n=300, size=48, seed=2)
    result = summarize(measure(BiasedDetector(**IDENTITY), data, range(len(data))), calibrated=True)
    opts = result["options"]
    assert opts["scale"] == pytest.approx(0.8, abs=0.02)
    assert opts["shift_x"] == pytest.approx(0.1, abs=0.01) and opts["shift_y"] == pytest.approx(-0.05, abs=0.01)
    assert result["spread"]["log_side"] == pytest.approx(0.05, abs=0.012)
    assert result["spread"]["shift_x"] == pytest.approx(0.02 / 0.8, abs=0.006)
    assert result["spread"]["shift_y"] < 0.002
    # Calibrated with those options, the detector's crops sit on the annotated box.
    again = summarize(measure(BiasedDetector(**opts), data, range(len(data))), calibrated=True)
    assert again["median"]["side_ratio"] == pytest.approx(1.0, abs=0.02)
    assert abs(again["median"]["dx"]) < 0.01 and abs(again["median"]["dy"]) < 0.01


def test_box_cache_runs_a_detector_once_per_image(tmp_path, monkeypatch):
    from kpbench.boxcache import CachedDetector

    monkeypatch.setenv("KPBENCH_CACHE_DIR", str(tmp_path))
    calls = []

    def slow(image, points):
        calls.append(1)
        return None if image.mean() > 0.5 else (1.0, 2.0, 3.0)

    images = [np.zeros((8, 8), np.float32), np.ones((8, 8), np.float32)]
    pts = np.zeros((2, 2), np.float32)
    det = CachedDetector(slow, "slow", {"margin": 0.1})
    assert [det(im, pts) for im in images * 2] == [(1.0, 2.0, 3.0), None] * 2
    assert len(calls) == 2
    det.flush()
    again = CachedDetector(slow, "slow", {"margin": 0.1})
    assert [again(im, pts) for im in images] == [(1.0, 2.0, 3.0), None] and len(calls) == 2
    other = CachedDetector(slow, "slow", {"margin": 0.2})  # other options: another cache
    other(images[0], pts)
    assert len(calls) == 3


def test_calibrate_command_measures_and_never_overwrites(tmp_path, oracle_env):
    plug, env, photos, known = oracle_env
    out = tmp_path / "cal.json"
    r = run_cli("calibrate", "--detector", "oracle", "--dataset", "oracle-photos", "--out", out,
                pythonpath=plug, env=env)
    assert r.returncode == 0, r.stderr
    result = json.loads(out.read_text())
    # The ideal detector's face box (its crop less its margin) is the annotated one exactly.
    assert result["faces"] == len(known) and result["misses"] == 0
    assert result["median"] == {"side_ratio": 1.0, "dx": 0.0, "dy": 0.0}
    assert "options" not in result  # it takes no scale/shift options: measured, nothing to suggest
    assert "box_jitter" in r.stdout
    r = run_cli("calibrate", "--detector", "oracle", "--dataset", "oracle-photos", "--out", out,
                pythonpath=plug, env=env)
    assert r.returncode == 2 and "exists" in r.stderr


def test_roll_aligned_crops_put_points_where_their_pixels_go_and_back():
    from kpbench.data import crop_resize, to_crop, to_image_pixels

    rng = np.random.default_rng(0)
    pts = rng.uniform(0, 200, (5, 7, 2))
    boxes = np.c_[rng.uniform(0, 50, (5, 2)), rng.uniform(50, 150, 5), rng.uniform(-40, 40, 5)]
    np.testing.assert_allclose(to_image_pixels(to_crop(pts, boxes), boxes), pts, atol=1e-9)
    flat = boxes.copy()
    flat[:, 3] = 0
    np.testing.assert_allclose(to_crop(pts, flat), to_crop(pts, boxes[:, :3]), atol=1e-12)
    # A blob at (col 60, row 120) shows up in a crop turned by 30 degrees where to_crop says.
    img = np.zeros((200, 200), np.float32)
    img[119:122, 59:62] = 1
    box = np.array([[30.0, 70.0, 100.0, 30.0]])
    crop = crop_resize(img, box[0], 100)
    row, col = np.unravel_index(crop.argmax(), crop.shape)
    want = to_crop(np.array([[[60.0, 120.0]]]), box)[0, 0] * 100 - 0.5
    assert abs(col - want[0]) <= 1 and abs(row - want[1]) <= 1
    assert np.hypot(*(want - [30.0, 50.0])) > 5  # where the unturned crop has it: the turn really moved it


def test_align_turns_the_crop_with_the_eye_line():
    from kpbench.data import crop_resize, to_crop
    from kpbench.keypoints import KAGGLE15, eye_line_angle
    from kpbench_plugins.detectors import GtBox
    from kpbench.geometry import eye_angle
    from kpbench_plugins.synthetic import render

    image, pts = render(0, 3, 96)
    pts = np.asarray(pts, np.float64)
    c = pts.mean(0)
    for roll in (-25.0, 0.0, 20.0):  # the face turned by `roll` degrees on screen (clockwise)
        a = np.radians(roll)
        rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
        turned = (pts - c) @ rot.T + c
        assert eye_line_angle(turned) == pytest.approx(eye_line_angle(pts) + roll, abs=1e-6)
        box = GtBox(margin=0.2, align=True)(image, turned)
        assert len(box) == 4 and box[3] == pytest.approx(eye_line_angle(turned))
        upright = to_crop(turned[None], np.array([box]))[0]
        left, right = upright[KAGGLE15.points.index("right_eye_center")], upright[KAGGLE15.points.index(
            "left_eye_center")]
        assert abs(right[1] - left[1]) < 1e-6  # eyes level in the aligned crop
        assert GtBox(margin=0.2)(image, turned)[:3] == pytest.approx(box[:3])  # same box, no angle
        assert crop_resize(image.astype(np.float32) / 255, box, 32).shape == (32, 32)
    # MTCNN's eye landmarks, in either order: the image-left eye first.
    assert eye_angle(np.array([[10.0, 10.0], [20.0, 20.0], [0, 0]])) == pytest.approx(45.0)
    assert eye_angle(np.array([[20.0, 20.0], [10.0, 10.0], [0, 0]])) == pytest.approx(45.0)


# A test plugin: a reference model that finds faces on the whole photo itself. It knows each photo's
# annotated points (keyed by the sha1 of its pixels, from $SEER_POINTS): on even-numbered photos it
# returns a decoy face elsewhere and the annotated face shifted by (1, 2) px; on odd ones nothing.
SEER = '''
import hashlib, json, os
import numpy as np
import torch
import kpbench


class Seer(torch.nn.Module):
    absolute_output = True

    def __init__(self, num_keypoints, input_size, in_chans=1):
        super().__init__()
        self.known = json.loads(open(os.environ["SEER_POINTS"]).read())

    def forward(self, x):
        return torch.full((x.shape[0], 30), 0.5)

    def photo_keypoints(self, image):
        entry = self.known[hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest()]
        if entry["index"] % 2:
            return []
        pts = np.asarray(entry["points"], np.float32)
        return [pts * 0.3 + 500.0, pts + np.float32([1, 2])]


@kpbench.hookimpl
def kpbench_models():
    return [kpbench.ModelSpec("seer", Seer, "finds faces itself")]
'''


def test_match_face_picks_the_overlapping_face_or_none():
    from kpbench.evaluate import match_face

    true = np.array([[10, 10], [30, 10], [20, 30]], np.float32)
    assert match_face([true + 200, true + 1, true * 0.5], true) == 1
    assert match_face([true + 15], true) is None  # IoU about 0.2 < 0.3
    assert match_face([], true) is None


def test_a_reference_that_finds_faces_itself_is_scored_on_the_whole_photo(tmp_path):
    from kpbench.geometry import rgb_uint8
    from kpbench_plugins.synthetic import SyntheticFaces

    faces = SyntheticFaces(n=30, size=48, seed=1)
    known = {hashlib.sha1(rgb_uint8(faces[i].image).tobytes()).hexdigest():
             {"index": i, "points": faces[i].points.tolist()} for i in range(len(faces))}
    (tmp_path / "known.json").write_text(json.dumps(known))
    (tmp_path / "plug").mkdir()
    (tmp_path / "plug" / "kpbench_seer.py").write_text(SEER)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({
        "run": {"name": "own", "seed": 0}, "models": ["seer", "mean-shape"],
        "data": {"dataset": "synthetic", "options": {"n": 30, "size": 48, "seed": 1}, "input_size": 32,
                 "detector": "gt-box", "split": [0.5, 0.1, 0.4]},
        "train": {"epochs": 1, "batch_size": 8}, "eval": {"latency": False, "metrics": ["nme", "fr10"]}}))
    r = run_cli("run", "--config", cfg, "--out", tmp_path / "run", pythonpath=tmp_path / "plug",
                env={"SEER_POINTS": str(tmp_path / "known.json"), "KPBENCH_PLUGINS": "kpbench_seer"})
    assert r.returncode == 0, r.stderr

    run = tmp_path / "run"
    main = np.load(run / "models" / "seer" / "predictions.npz")
    own = np.load(run / "models" / "seer" / "paths" / "own-detector" / "predictions.npz")
    index = np.array([int(str(i).rsplit("-", 1)[-1]) for i in own["ids"]])
    found = index % 2 == 0
    assert found.any() and (~found).any()
    np.testing.assert_array_equal(own["missed"], ~found)
    np.testing.assert_allclose(own["pred"][found], own["true"][found] + [1, 2], atol=1e-3)  # the matched face
    np.testing.assert_allclose(own["pred"][~found], main["pred"][~found], atol=1e-4)  # a miss: its crop prediction

    row = json.loads((run / "models" / "seer" / "result.json").read_text())
    assert row["miss_rate@own-detector"] == pytest.approx((~found).mean(), abs=1e-4)
    assert row["nme@own-detector"] < row["nme"]
    assert "nme@own-detector" not in json.loads((run / "models" / "mean-shape" / "result.json").read_text())
    paths = pd.read_csv(run / "leaderboard_by_path.csv")
    assert set(paths[paths["model"] == "seer"]["path"]) == {"gt-box", "own-detector"}
    assert set(paths[paths["model"] == "mean-shape"]["path"]) == {"gt-box"}
