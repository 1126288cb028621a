"""The optional dlib68 reference model (plugins/dlib68.py): registration, the no-parameter module,
the model-file lookup and its errors, and, where the model file and the shared data exist, real
predictions. Skips cleanly without dlib, without the .dat, or without ../shared/data."""

import bz2
import csv
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import kpbench
import kpbench_plugins.dlib68 as dlib68
from conftest import ROOT, run_cli
from kpbench.keypoints import convert
from kpbench.plugins import Plugins

HAS_DLIB = importlib.util.find_spec("dlib") is not None
SHARED = next((p for p in (Path("/work/shared/data"), ROOT.parent / "shared" / "data")
               if (p / "youtube-faces-68" / "training_frames_keypoints.csv").is_file()), None)


@pytest.fixture
def no_model_file(tmp_path, monkeypatch):
    """No model file anywhere: empty user cache, no system folder, no environment variable."""
    monkeypatch.delenv(dlib68.ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(dlib68, "SYSTEM_DIR", tmp_path / "usr-share-dlib")
    return tmp_path


@pytest.fixture(scope="module")
def predictor_path():
    pytest.importorskip("dlib")
    try:
        return dlib68.find_predictor()
    except kpbench.KpbenchError:
        pytest.skip("no shape_predictor_68_face_landmarks.dat (run bin/fetch-dlib-model)")


def test_registered_iff_dlib_importable(monkeypatch):
    plugins = Plugins(("kpbench_plugins.dlib68",))
    assert ("dlib68" in plugins.models) == HAS_DLIB
    if HAS_DLIB:
        spec = plugins.models.get("dlib68")
        assert "does not train" in spec.description and spec.factory is dlib68.factory
    monkeypatch.setattr(dlib68.importlib.util, "find_spec", lambda name: None)
    assert dlib68.kpbench_models() == []


def test_no_dlib_is_a_one_line_install_hint(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "dlib", None)  # makes `import dlib` fail
    with pytest.raises(kpbench.KpbenchError, match=r"pip install 'kpbench\[dlib\]'") as err:
        dlib68.factory(15, 96, 1)
    assert "\n" not in str(err.value)


def test_module_has_no_parameters_and_builds_on_meta(no_model_file):
    pytest.importorskip("dlib")
    with torch.device("meta"):  # as `kpbench list` builds it; the missing model file does not matter
        net = dlib68.factory(15, 96, 1)
    assert sum(p.numel() for p in net.parameters()) == 0
    assert net.absolute_output is True
    assert (net.images, net.fallbacks) == (0, 0)


def test_bad_options_are_kpbench_errors():
    pytest.importorskip("dlib")
    with pytest.raises(kpbench.KpbenchError, match="cannot output 5 points"):
        dlib68.factory(5, 96, 1)
    with pytest.raises(kpbench.KpbenchError, match="box must be"):
        dlib68.factory(15, 96, 1, box="haar")
    with pytest.raises(TypeError):  # kpbench reports an unknown option as a bad option of the model
        dlib68.factory(15, 96, 1, boxx="crop")


def test_missing_model_file_is_one_line_naming_the_paths(no_model_file, monkeypatch):
    pytest.importorskip("dlib")
    net = dlib68.factory(15, 96, 1)
    x = torch.rand(1, 1, 96, 96)
    with pytest.raises(kpbench.KpbenchError) as err:
        net(x)
    msg = str(err.value)
    assert "\n" not in msg
    assert str(dlib68.cache_path()) in msg and str(no_model_file / "usr-share-dlib") in msg
    assert "bin/fetch-dlib-model" in msg and "{dlib68: {predictor: PATH}}" in msg
    with pytest.raises(kpbench.KpbenchError, match="bin/fetch-dlib-model"):
        net.check()

    missing = no_model_file / "nowhere" / "sp68.dat"
    with pytest.raises(kpbench.KpbenchError) as err:
        dlib68.factory(15, 96, 1, predictor=str(missing))(x)
    assert str(missing) in str(err.value) and "\n" not in str(err.value)
    monkeypatch.setenv(dlib68.ENV_VAR, str(missing))
    with pytest.raises(kpbench.KpbenchError, match=f"{dlib68.ENV_VAR}.*{missing}"):
        net(x)


def test_model_file_lookup_order_and_bz2(no_model_file, monkeypatch):
    system = dlib68.SYSTEM_DIR
    system.mkdir()
    with bz2.open(system / (dlib68.FILENAME + ".bz2"), "wb") as fh:
        fh.write(b"model bytes")
    found = dlib68.find_predictor()  # only the system .bz2: decompressed into the user cache
    assert found == dlib68.cache_path() and found.read_bytes() == b"model bytes"
    (system / dlib68.FILENAME).write_bytes(b"system")
    assert dlib68.find_predictor() == dlib68.cache_path()  # the cache comes before the system folder
    dlib68.cache_path().unlink()
    assert dlib68.find_predictor() == system / dlib68.FILENAME
    env = no_model_file / "env.dat"
    env.write_bytes(b"env")
    monkeypatch.setenv(dlib68.ENV_VAR, str(env))
    assert dlib68.find_predictor() == env
    opt = no_model_file / "opt.dat"
    opt.write_bytes(b"opt")
    assert dlib68.find_predictor(str(opt)) == opt


def test_list_shows_dlib68_without_a_model_file(no_model_file):
    pytest.importorskip("dlib")
    env = {"XDG_CACHE_HOME": str(no_model_file / "cache"), dlib68.ENV_VAR: ""}
    r = run_cli("-p", "kpbench_plugins.dlib68", "list", "models", "dlib*", "--json", env=env)
    assert r.returncode == 0, r.stderr
    record = next(rec for rec in json.loads(r.stdout) if rec["name"] == "dlib68")
    assert (record["params"], record["trainable_params"]) == (0, 0), record


def _synthetic_faces(n: int, size: int) -> torch.Tensor:
    from kpbench_plugins.synthetic import render

    return torch.from_numpy(np.stack([render(1, i, size)[0] for i in range(n)]).astype(np.float32) / 255)[:, None]


@pytest.mark.parametrize("box", ["detector", "crop"])
def test_face_like_input_gives_finite_plausible_points(predictor_path, box):
    x = _synthetic_faces(3, 64)
    net = dlib68.factory(15, 64, 1, predictor=str(predictor_path), box=box)
    with torch.inference_mode():
        out = net(x)
    assert out.shape == (3, 30) and out.dtype == torch.float32
    assert torch.isfinite(out).all() and out.min() > -0.5 and out.max() < 1.5
    assert net.images == 3 and 0 <= net.fallbacks <= 3 and (box == "detector" or net.fallbacks == 0)
    net68 = dlib68.factory(68, 64, 1, predictor=str(predictor_path), box=box)
    with torch.inference_mode():
        out68 = net68(x)
    assert out68.shape == (3, 136)
    mapped = convert(out68.view(3, 68, 2).numpy(), "ibug68", "kaggle15")
    np.testing.assert_allclose(out.view(3, 15, 2).numpy(), mapped, atol=1e-6)
    # kpbench wraps it as it wraps any model: absolute output, the mean shape is not added
    from kpbench.regressor import Regressor

    reg = Regressor(net, torch.full((15, 2), 0.5))
    with torch.inference_mode():
        np.testing.assert_allclose(reg(x).numpy(), out.view(3, 15, 2).numpy(), atol=1e-6)


@pytest.mark.skipif(SHARED is None, reason="no ../shared/data (real YouTube Faces frames)")
@pytest.mark.parametrize("size", [64, 96])
def test_real_youtube_faces_nme(predictor_path, size):
    from kpbench.data import crop_resize, to_gray, to_image_pixels
    from PIL import Image

    rows = list(csv.reader((SHARED / "youtube-faces-68" / "training_frames_keypoints.csv").open()))[1:]
    margin, boxes, crops, truth = 0.25, [], [], []
    for row in rows[:500:100]:  # 5 frames of 5 people
        with Image.open(SHARED / "youtube-faces-68" / "training" / row[0]) as im:
            gray = to_gray(np.asarray(im.convert("RGB")))
        pts = np.asarray(row[1:], dtype=np.float32).reshape(68, 2)
        lo, hi = pts.min(0) + 0.5, pts.max(0) + 0.5  # kpbench's gt-box rule
        side = float((hi - lo).max() * (1 + 2 * margin))
        box = np.array([(lo[0] + hi[0] - side) / 2, (lo[1] + hi[1] - side) / 2, side], dtype=np.float32)
        boxes.append(box)
        crops.append(crop_resize(gray, box, size))
        truth.append(convert(pts, "ibug68", "kaggle15"))
    x = torch.from_numpy(np.stack(crops).astype(np.float32))[:, None]
    net = dlib68.factory(15, size, 1, predictor=str(predictor_path), margin=margin)
    with torch.inference_mode():
        pred = net(x).view(5, 15, 2).numpy()
    pred_px, true = to_image_pixels(pred, np.stack(boxes)), np.stack(truth)
    inter_ocular = np.linalg.norm(true[:, 3] - true[:, 5], axis=-1)
    nme = np.linalg.norm(pred_px - true, axis=-1).mean(1) / inter_ocular
    assert nme.mean() < 0.15, nme
    assert net.fallbacks <= 2


def test_a_run_with_dlib68_and_no_model_file_fails_before_any_work(tmp_path, tiny_config):
    pytest.importorskip("dlib")
    out = tmp_path / "run"
    missing = tmp_path / "nowhere.dat"
    r = run_cli("run", "-c", tiny_config, "--models", "cnn,dlib68", "--out", out, env={dlib68.ENV_VAR: str(missing)})
    assert r.returncode == 2 and str(missing) in r.stderr and "fetch-dlib-model" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not out.exists()  # no run folder, no training


@pytest.mark.skipif(SHARED is None or not (SHARED / "300w-helen-train").is_dir(), reason="no ../shared/data")
def test_photo_keypoints_find_the_annotated_face_on_whole_photos(predictor_path):
    """The own-detector path: dlib's HOG detector and predictor on whole HELEN photos, as dlib's own
    example runs them; the annotated face is among the faces found, in the run's schema."""
    from PIL import Image

    from kpbench.evaluate import match_face
    from kpbench_plugins.datasets import read_pts

    net = dlib68.factory(15, 128, 1)
    for jpg in sorted((SHARED / "300w-helen-train" / "trainset").glob("*.jpg"))[::200][:3]:
        image = np.asarray(Image.open(jpg).convert("RGB"))
        true15 = convert(read_pts(jpg.with_suffix(".pts")), "ibug68", "kaggle15")
        faces = net.photo_keypoints(image)
        k = match_face(faces, true15)
        assert k is not None and faces[k].shape == (15, 2)
        assert np.linalg.norm(faces[k] - true15, axis=1).mean() / np.linalg.norm(true15[3] - true15[5]) < 0.1
