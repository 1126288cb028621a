"""Augmentation geometry: points must land where their pixels went (affine and horizontal flip)."""

import math

import pytest
import torch

from kpbench.augment import affine_batch, apply_affine
from kpbench.keypoints import get_schema
from kpbench.train import flip_batch

S = 64
BLOBS = [(22, 18), (40, 24), (26, 40), (42, 42)]  # (col, row) of each 3x3 blob's center pixel


def blob_batch(b=1):
    x = torch.zeros(b, 1, S, S)
    for col, row in BLOBS:
        x[:, 0, row - 1:row + 2, col - 1:col + 2] = 1.0
    y = torch.tensor([[(col + 0.5) / S, (row + 0.5) / S] for col, row in BLOBS]).expand(b, -1, -1).clone()
    return x, y


def centroid(img, near, radius=5):
    """Intensity-weighted centroid (pixel-edge coordinates) of ``img`` (H, W) in a window around ``near``."""
    cx, cy = (int(v) for v in near)
    r0, c0 = max(cy - radius, 0), max(cx - radius, 0)
    win = img[r0:cy + radius + 1, c0:cx + radius + 1]
    rows = torch.arange(win.shape[0], dtype=img.dtype)[:, None] + r0 + 0.5
    cols = torch.arange(win.shape[1], dtype=img.dtype)[None, :] + c0 + 0.5
    mass = win.sum()
    assert mass > 0.5, "blob not found near its mapped target"
    return torch.stack([(win * cols).sum() / mass, (win * rows).sum() / mass])


def assert_points_on_pixels(x, y, tol=0.5):
    for i in range(x.shape[0]):
        for k in range(y.shape[1]):
            want = y[i, k] * S
            got = centroid(x[i, 0], want)
            assert torch.dist(got, want) < tol, (i, k, got.tolist(), want.tolist())


def one(v):
    return torch.tensor([float(v)])


@pytest.mark.parametrize("angle", [30.0, -30.0, 45.0])
def test_rotation_points_follow_pixels(angle):
    x, y = blob_batch()
    nx, ny = apply_affine(x, y, one(angle), one(1.0), torch.zeros(1, 2))
    assert (ny - y).abs().max() > 0.05  # the points really moved
    assert_points_on_pixels(nx, ny)
    # Rotation about the crop center keeps the distance to the center.
    assert torch.allclose((ny - 0.5).norm(dim=-1), (y - 0.5).norm(dim=-1), atol=1e-6)


def test_rotation_sign_is_counter_clockwise_on_screen():
    y = torch.tensor([[[0.75, 0.5]]])  # right of center
    _, ny = apply_affine(torch.zeros(1, 1, S, S), y, one(90), one(1.0), torch.zeros(1, 2))
    assert torch.allclose(ny, torch.tensor([[[0.5, 0.25]]]), atol=1e-6)  # now above the center


def test_scale_and_translation_points_follow_pixels():
    x, y = blob_batch()
    nx, ny = apply_affine(x, y, one(0), one(1.2), torch.tensor([[0.1, -0.05]]))
    expected = (y - 0.5) * 1.2 + 0.5 + torch.tensor([0.1, -0.05])
    assert torch.allclose(ny, expected, atol=1e-6)
    assert_points_on_pixels(nx, ny)


def test_combined_transform_points_follow_pixels():
    x, y = blob_batch(2)
    nx, ny = apply_affine(x, y, torch.tensor([20.0, -35.0]), torch.tensor([0.9, 1.1]),
                          torch.tensor([[-0.05, 0.04], [0.03, 0.02]]))
    assert_points_on_pixels(nx, ny)


def test_rotation_90_matches_rot90_exactly():
    torch.manual_seed(0)
    x = torch.rand(1, 1, S, S)
    _, y = blob_batch()
    nx, ny = apply_affine(x, y, one(90), one(1.0), torch.zeros(1, 2))
    assert torch.allclose(nx, torch.rot90(x, 1, dims=(-2, -1)), atol=1e-5)
    # rot90 (counter-clockwise) sends pixel (row r, col c) to (row S-1-c, col r).
    bx, _ = blob_batch()
    rx = torch.rot90(bx, 1, dims=(-2, -1))
    for (col, row), p in zip(BLOBS, ny[0]):
        assert torch.allclose(p * S, torch.tensor([row + 0.5, S - 1 - col + 0.5]), atol=1e-4)
        assert rx[0, 0, S - 1 - col, row] == 1.0
    assert_points_on_pixels(rx, ny, tol=1e-4)


def test_affine_batch_random_draws_keep_points_on_pixels():
    x, y = blob_batch(6)
    gen = torch.Generator().manual_seed(1)
    nx, ny = affine_batch(x, y, gen, rotate=30, scale=0.1, translate=0.05)
    assert not torch.equal(ny[0], ny[1])  # each image gets its own transform
    assert_points_on_pixels(nx, ny)


def test_flip_points_follow_pixels():
    x, y = blob_batch(2)
    which = torch.tensor([True, False])
    fx, fy = flip_batch(x, y, which, list(range(len(BLOBS))))
    assert torch.equal(fy[0, :, 0], 1 - y[0, :, 0]) and torch.equal(fy[0, :, 1], y[0, :, 1])
    assert torch.equal(fy[1], y[1]) and torch.equal(fx[1], x[1])
    assert_points_on_pixels(fx, fy, tol=1e-4)


def test_flip_swaps_left_right_labels():
    schema = get_schema("kaggle15")
    names = list(schema.points)
    le, re = names.index("left_eye_center"), names.index("right_eye_center")
    y = torch.full((1, schema.num_points, 2), 0.5)
    y[0, :, 0] = torch.linspace(0.1, 0.9, schema.num_points)
    y[0, le] = torch.tensor([0.7, 0.4])  # the subject's left eye appears on the image's right
    y[0, re] = torch.tensor([0.3, 0.4])
    _, fy = flip_batch(torch.zeros(1, 1, S, S), y, torch.tensor([True]), list(schema.flip_permutation))
    assert fy[0, le, 0] > 0.5 and fy[0, re, 0] < 0.5  # labels still anatomically right after mirroring
    assert torch.allclose(fy[0, le], torch.tensor([0.7, 0.4])) and torch.allclose(fy[0, re], torch.tensor([0.3, 0.4]))
    for a, b in schema.flip_pairs:
        assert torch.allclose(fy[0, a], torch.stack([1 - y[0, b, 0], y[0, b, 1]]))
        assert torch.allclose(fy[0, b], torch.stack([1 - y[0, a, 0], y[0, a, 1]]))


def test_nan_targets_stay_nan():
    x, y = blob_batch(3)
    y[0, 1] = float("nan")
    y[2, :] = float("nan")
    _, ny = affine_batch(x, y, torch.Generator().manual_seed(0), rotate=20, scale=0.1, translate=0.1)
    assert torch.equal(torch.isnan(ny), torch.isnan(y))


def test_zero_magnitudes_return_inputs_and_draw_nothing():
    x, y = blob_batch(2)
    gen = torch.Generator().manual_seed(5)
    state = gen.get_state()
    nx, ny = affine_batch(x, y, gen)
    assert nx is x and ny is y
    assert torch.equal(gen.get_state(), state)


def test_same_seed_same_output():
    torch.manual_seed(0)
    x, y = torch.rand(4, 1, S, S), torch.rand(4, 5, 2)
    kw = dict(rotate=15, scale=0.1, translate=0.1, brightness=0.2, contrast=0.3, prob=0.7)
    a = affine_batch(x, y, torch.Generator().manual_seed(3), **kw)
    b = affine_batch(x, y, torch.Generator().manual_seed(3), **kw)
    c = affine_batch(x, y, torch.Generator().manual_seed(4), **kw)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_prob_zero_leaves_batch_unchanged():
    torch.manual_seed(0)
    x, y = torch.rand(4, 1, S, S), torch.rand(4, 5, 2)
    nx, ny = affine_batch(x, y, torch.Generator().manual_seed(0), rotate=30, brightness=0.3, prob=0.0)
    assert torch.equal(nx, x) and torch.equal(ny, y)


def test_brightness_contrast_in_range_and_targets_unchanged():
    torch.manual_seed(0)
    x, y = torch.rand(8, 1, S, S), torch.rand(8, 5, 2)
    nx, ny = affine_batch(x, y, torch.Generator().manual_seed(0), brightness=0.5, contrast=0.8)
    assert torch.equal(ny, y)
    assert nx.min() >= 0 and nx.max() <= 1
    assert not torch.equal(nx, x)
    assert (nx.mean(dim=(1, 2, 3)) - x.mean(dim=(1, 2, 3))).abs().max() > 0.01  # brightness moved


def test_adjust_intensity_formula():
    from kpbench.augment import adjust_intensity
    x = torch.tensor([0.2, 0.4, 0.6, 0.8]).view(1, 1, 2, 2)
    out = adjust_intensity(x, torch.tensor([2.0]), torch.tensor([0.1]))
    assert torch.allclose(out.flatten(), torch.tensor([0.0, 0.4, 0.8, 1.0]))  # (x-.5)*2+.5+.1, clamped


def test_points_leaving_the_image_are_kept():
    y = torch.tensor([[[0.95, 0.5]]])
    _, ny = apply_affine(torch.zeros(1, 1, S, S), y, one(0), one(1.0), torch.tensor([[0.2, 0.0]]))
    assert math.isclose(ny[0, 0, 0].item(), 1.15, abs_tol=1e-6)


def context_batch(b, pad):
    """The blob batch drawn into a canvas ``pad`` px larger on each side: its central S x S region
    is the nominal crop, as ``prepare(context=...)`` makes it."""
    x, y = blob_batch(b)
    ctx = torch.zeros(b, 1, S + 2 * pad, S + 2 * pad)
    ctx[:, :, pad:pad + S, pad:pad + S] = x
    ctx[:, :, :pad, :] = 0.3  # real surroundings above the crop: a jittered box must show them
    return ctx, y


def test_box_jitter_points_follow_pixels_and_show_the_context():
    from kpbench.augment import jitter_crops

    pad = 16
    ctx, y = context_batch(8, pad)
    gen = torch.Generator().manual_seed(0)
    x, ny = jitter_crops(ctx, y, S, gen, scale=0.1, shift=0.05, rotate=10.0)
    assert x.shape == (8, 1, S, S)
    assert (ny - y).abs().amax(dim=(1, 2)).min() > 0.005  # every crop's box really moved
    assert_points_on_pixels(x, ny, tol=0.6)
    # Boxes that moved up or grew see the grey surroundings, not black padding.
    assert (x[:, 0, :2, :] > 0.2).any()


def test_box_jitter_off_is_the_nominal_crop():
    from kpbench.augment import jitter_crops

    ctx, y = context_batch(2, 16)
    x, ny = jitter_crops(ctx, y, S, torch.Generator().manual_seed(0))
    assert torch.allclose(ny, y, atol=1e-6)
    assert torch.allclose(x, ctx[:, :, 16:16 + S, 16:16 + S], atol=1e-5)


def test_train_augment_prob_reaches_the_augmentation():
    """``train.augment.prob`` is what the training batches augment with: prob 0 leaves every
    training image as prepared (before the fix, every run augmented with probability 1)."""
    from kpbench.config import Settings
    from kpbench.data import Prepared
    from kpbench.regressor import Regressor
    from kpbench.train import Batches

    n, size = 6, 16
    data = Prepared(images=torch.rand(n, 1, size, size), targets=torch.rand(n, 15, 2) * 0.5 + 0.25,
                    points=torch.zeros(n, 15, 2).numpy(), boxes=torch.zeros(n, 3).numpy(), ids=[str(i) for i in range(n)])
    model = Regressor(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(size * size, 30)), torch.zeros(15, 2))
    idx = torch.arange(n)
    seen = {}
    for prob in (0.0, 1.0):
        cfg = Settings().replace(train={"flip": False, "augment": {"rotate": 30.0, "brightness": 0.3, "prob": prob}}).train
        batches = Batches(data, cfg, list(range(15)), 1.0)
        captured = []
        model.forward = lambda x, captured=captured: (captured.append(x), torch.zeros(len(x), 15, 2))[1]
        batches.inputs(model, idx, torch.Generator().manual_seed(0), None, "cpu")
        seen[prob] = captured[0]
    assert torch.equal(seen[0.0], data.images)
    assert not torch.allclose(seen[1.0], data.images)



def test_one_based_annotations_train_on_their_pixels_and_are_reported_as_annotated(tmp_path):
    """iBUG .pts files count pixels from 1: a point annotated at x marks 0-based pixel x - 1. Its
    crop target marks the pixel itself, so a flip moves it exactly (were it 1 px right of its pixel,
    a mirrored face would teach -1 px and the plain one +1 px, and the model learn neither), and a
    model trained on such faces reports its points as the annotators number them."""
    import numpy as np
    from PIL import Image

    from kpbench.data import prepare
    from kpbench.evaluate import score
    from kpbench.registry import MetricSpec
    from kpbench_plugins.datasets import ibug

    img = np.zeros((S, S), np.uint8)
    pts = np.full((68, 2), S / 2, np.float32)
    for k, (col, row) in enumerate(BLOBS):
        img[row - 1:row + 2, col - 1:col + 2] = 255
        pts[k] = (col + 1, row + 1)  # as a .pts file writes the centre of pixel (col, row)
    Image.fromarray(img).save(tmp_path / "face.png")
    (tmp_path / "face.pts").write_text("version: 1\nn_points: 68\n{\n"
                                       + "".join(f"{x} {y}\n" for x, y in pts) + "}\n")
    data = prepare(ibug(str(tmp_path)), [0], lambda image, points: (0.0, 0.0, float(S)), S, "ibug68")
    assert data.mean_origin() == 1.0
    n = len(BLOBS)
    y = data.targets[:, :n]
    assert_points_on_pixels(data.images, y, tol=1e-4)
    fx, fy = flip_batch(data.images, y, torch.tensor([True]), list(range(n)))
    assert_points_on_pixels(fx, fy, tol=1e-4)
    # A perfect prediction of the targets, reported from origin 1, lands on the annotation; from 0, 1 px off.
    err = MetricSpec("err", lambda pred, true, ctx: np.abs(pred - true)[:, :n].max(axis=(1, 2)), "", aggregate="mean")
    assert score(data.targets.numpy(), data, get_schema("ibug68"), [err], origin=1.0)[1]["err"] < 1e-4
    assert abs(score(data.targets.numpy(), data, get_schema("ibug68"), [err])[1]["err"] - 1.0) < 1e-4

