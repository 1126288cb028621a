"""The optional mediapipe reference model (plugins/mediapipe_ref.py): its 468 -> 68 table,
registration, the no-parameter module and its no-face fallback, and, where the shared data exists,
real predictions on HELEN photos. Skips cleanly without mediapipe or without ../shared/data."""

import os
from importlib.metadata import entry_points
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("mediapipe")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import kpbench  # noqa: E402
import kpbench_plugins.mediapipe_ref as mpref  # noqa: E402
from kpbench.keypoints import IBUG68, convert  # noqa: E402
from kpbench.plugins import Plugins  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# pytest resets warning filters per test; the plugin silences this mediapipe/protobuf warning itself
pytestmark = pytest.mark.filterwarnings("ignore:SymbolDatabase.GetPrototype")


def _helen_dir():
    for d in (ROOT.parent / "shared" / "data", Path("/work/shared/data")):
        if (d / "300w-helen-train" / "trainset").is_dir():
            return d / "300w-helen-train" / "trainset"
    return None


def _helen(n: int, step: int = 20):
    """Up to n HELEN photos (RGB uint8) with their 68 annotated points, every step-th photo."""
    from PIL import Image

    from kpbench_plugins.datasets import read_pts

    photos = sorted(_helen_dir().glob("*.jpg"))[::step][:n]
    out = []
    for f in photos:
        with Image.open(f) as im:
            out.append((np.asarray(im.convert("RGB")), read_pts(f.with_suffix(".pts"))))
    return out


def _nearest(faces, truth):
    """The face whose 68 points are nearest the annotation (photos may hold other faces)."""
    assert faces, "Face Mesh found no face"
    return min(faces, key=lambda p: np.linalg.norm(p - truth, axis=1).mean())


needs_helen = pytest.mark.skipif(_helen_dir() is None, reason="no ../shared/data/300w-helen-train (real HELEN photos)")


def test_table_has_68_distinct_mesh_vertices():
    table = mpref.MESH_TO_IBUG68
    assert len(table) == 68 and len(set(table)) == 68
    assert all(isinstance(i, int) and 0 <= i < 468 for i in table)
    assert mpref.MEAN_SHAPE68.shape == (68, 2)


def test_registered_through_entry_points(monkeypatch):
    eps = {ep.name: ep.value for ep in entry_points(group="kpbench")}
    assert eps.get("kpbench-mediapipe") == "kpbench_plugins.mediapipe_ref", "reinstall kpbench: pip install -e ."
    spec = Plugins().models.get("mediapipe")
    assert spec.plugin == "kpbench-mediapipe" and spec.factory is mpref.factory
    assert "does not train" in spec.description
    monkeypatch.setattr(mpref.importlib.util, "find_spec", lambda name: None)
    assert mpref.kpbench_models() == []


def test_module_has_no_parameters_and_builds_on_meta():
    with torch.device("meta"):  # as `kpbench list` builds it: no Face Mesh graph is created
        net = mpref.factory(15, 96, 1)
    assert sum(p.numel() for p in net.parameters()) == 0
    assert net.absolute_output is True and net.flip_test is False
    assert (net.images, net.fallbacks) == (0, 0)
    with pytest.raises(kpbench.KpbenchError, match="cannot output 5 points"):
        mpref.factory(5, 96, 1)
    with pytest.raises(TypeError):  # kpbench reports an unknown option as a bad option of the model
        mpref.factory(15, 96, 1, min_sise=100)


def test_blank_crop_gives_the_fallback_and_counts_a_miss():
    x = torch.zeros(2, 1, 96, 96)
    net = mpref.factory(68, 96, 1, margin=0.25)
    with torch.inference_mode():
        out = net(x)
    assert out.shape == (2, 136) and (net.images, net.fallbacks) == (2, 2)
    expected = (mpref.MEAN_SHAPE68 + 0.25) / 1.5  # the mean face inside a gt-box crop with margin 0.25
    np.testing.assert_allclose(out.view(2, 68, 2).numpy(), np.stack([expected] * 2), atol=1e-6)
    net15 = mpref.factory(15, 96, 1, margin=0.25)
    with torch.inference_mode():
        out15 = net15(x[:1])
    np.testing.assert_allclose(out15.view(15, 2).numpy(), convert(expected, "ibug68", "kaggle15"), atol=1e-6)
    assert net15.fallbacks == 1
    net15.reset_stats()
    assert (net15.images, net15.fallbacks) == (0, 0)


@needs_helen
def test_mirrored_photo_swaps_points_as_the_flip_pairs_say():
    """MediaPipe's own vertex mirror is not available; instead: Face Mesh on a horizontally mirrored
    photo, mirrored back, must give each iBUG point where the unmirrored photo has its flip partner."""
    perm = list(IBUG68.flip_permutation)
    for image, truth in _helen(3, step=100):
        w = image.shape[1]
        a = _nearest(mpref.photo_landmarks68(image), truth)
        b = [p * (-1, 1) + (w - 1, 0) for p in mpref.photo_landmarks68(image[:, ::-1])]  # mirrored back
        b = _nearest(b, truth[perm])  # the mirrored face's points, still in the mirrored photo's order
        inter_ocular = np.linalg.norm(truth[36] - truth[45])
        swapped = np.linalg.norm(b[perm] - a, axis=1) / inter_ocular
        unswapped = np.linalg.norm(b - a, axis=1) / inter_ocular
        assert swapped.mean() < 0.05 and swapped.max() < 0.1, np.round(swapped, 3)
        assert unswapped.mean() > 0.3


@needs_helen
def test_photo_landmarks_find_the_annotated_face():
    for image, truth in _helen(3, step=100):
        faces = mpref.photo_landmarks68(image)
        assert faces and all(f.shape == (68, 2) and f.dtype == np.float32 for f in faces)
        best = _nearest(faces, truth)
        err = np.linalg.norm(best - truth, axis=1).mean() / np.linalg.norm(truth[36] - truth[45])
        assert err < 0.12, err


@needs_helen
def test_real_helen_crops_nme():
    from kpbench.data import crop_resize, points_box, to_gray, to_image_pixels
    from kpbench.regressor import Regressor

    boxes, crops, truth = [], [], []
    for image, pts in _helen(20):
        box = points_box(pts, 0.15)
        boxes.append(box)
        crops.append(crop_resize(to_gray(image), box, 128))
        truth.append(convert(pts, "ibug68", "kaggle15"))
    x = torch.from_numpy(np.stack(crops).astype(np.float32))[:, None]
    net = mpref.factory(15, 128, 1, margin=0.15)
    reg = Regressor(net, torch.full((15, 2), 0.5)).eval()  # as kpbench wraps it: the mean is not added
    with torch.inference_mode():
        pred = reg(x).numpy()
    pred_px, true = to_image_pixels(pred, np.array(boxes, dtype=np.float32)), np.stack(truth)
    inter_ocular = np.linalg.norm(true[:, 3] - true[:, 5], axis=-1)
    nme = np.linalg.norm(pred_px - true, axis=-1).mean(1) / inter_ocular
    print(f"mediapipe NME (15 points, inter-ocular) on {len(x)} HELEN gt-box crops: {nme.mean():.4f},"
          f" misses {net.fallbacks}/{net.images}")
    assert nme.mean() < 0.12, nme
    assert net.images == len(x) and net.fallbacks <= 2


@needs_helen
def test_photo_keypoints_in_the_run_schema_match_the_annotated_face():
    """The own-detector path: the module on a whole photo gives the annotated face among its faces,
    in the run's schema (15 points mapped from its 68)."""
    from kpbench.evaluate import match_face

    net = mpref.factory(15, 128, 1)
    for image, truth in _helen(3, step=100):
        faces = net.photo_keypoints(image)
        true15 = convert(truth, "ibug68", "kaggle15")
        k = match_face(faces, true15)
        assert k is not None and faces[k].shape == (15, 2)
        assert np.linalg.norm(faces[k] - true15, axis=1).mean() / np.linalg.norm(true15[3] - true15[5]) < 0.1
