"""Fast unit tests of kpbench's building blocks: schemas, geometry, splits, metrics, config, registry,
the synthetic dataset and the oracle detectors. No model is trained here.

Expected values are derived by hand in each test (see the comments), never copied from a run.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import kpbench
from kpbench import config as kcfg
from kpbench.data import Prepared, crop_from_image, crop_resize, split_indices, to_crop, to_gray, to_image_pixels
from kpbench.evaluate import MetricContext, aggregate, score
from kpbench.keypoints import IBUG68, KAGGLE15, convert, get_schema
from kpbench.plugins import get_plugins
from kpbench.registry import DatasetSpec, MetricSpec, ModelSpec, Registry
from kpbench.train import flip_batch, masked_mse


@pytest.fixture(scope="module")
def plugins():
    return get_plugins()


def _swap_side(name: str) -> str:
    return name.replace("left", "\0").replace("right", "left").replace("\0", "right")


# --------------------------------------------------------------------------------------------------
# 1. keypoints
# --------------------------------------------------------------------------------------------------


def test_kaggle15_has_15_named_points_and_outer_corner_norm_pair():
    assert KAGGLE15.num_points == 15 == len(set(KAGGLE15.points))
    a, b = KAGGLE15.norm_pair
    assert {KAGGLE15.points[a], KAGGLE15.points[b]} == {"left_eye_outer_corner", "right_eye_outer_corner"}
    (right,), (left,) = KAGGLE15.eyes
    assert (KAGGLE15.points[right], KAGGLE15.points[left]) == ("right_eye_center", "left_eye_center")
    assert [IBUG68.points[i] for i in (*IBUG68.eyes[0][:1], *IBUG68.eyes[1][:1])] == ["p36", "p42"]
    assert get_schema("kaggle15") is KAGGLE15 and get_schema("ibug68") is IBUG68


def test_a_98_point_layout_that_declares_its_eyes_gets_flip_alignment_and_inter_pupil_distance():
    import kpbench
    from kpbench.keypoints import SCHEMAS, eye_line_angle, register_schema
    from kpbench_plugins.metrics import inter_pupil

    # WFLW's layout: the subject's right eye 60-67, left eye 68-75; the jaw 0-32 mirrors about 16
    pairs = tuple((i, 32 - i) for i in range(16)) + tuple((60 + i, 72 - i if i <= 4 else 80 - i) for i in range(8))
    wflw = kpbench.Schema("wflw98", tuple(f"w{i}" for i in range(98)), pairs, norm_pair=(60, 72),
                          eyes=(tuple(range(60, 68)), tuple(range(68, 76))))
    register_schema(kpbench.SchemaSpec("wflw98", lambda: wflw, "98 points"))
    try:
        perm = wflw.flip_permutation
        assert perm[0] == 32 and perm[60] == 72 and all(perm[perm[i]] == i for i in range(98))
        pts = np.zeros((98, 2))
        pts[60:68] = [10.0, 20.0]  # the subject's right eye, on the image's left
        pts[68:76] = [30.0, 40.0]
        assert eye_line_angle(pts) == pytest.approx(45.0)  # found by its point count
        assert eye_line_angle(pts, wflw) == pytest.approx(45.0)
        assert inter_pupil(pts[None], wflw)[0] == pytest.approx(np.hypot(20, 20))
        with pytest.raises(kpbench.KpbenchError, match="point index 98 out of range"):
            register_schema(kpbench.SchemaSpec("bad", lambda: kpbench.Schema("bad", wflw.points, (), (0, 1),
                                                                               eyes=((98,), (1,))), "bad"))
        with pytest.raises(kpbench.KpbenchError, match="point 1 is in more than one flip pair"):
            register_schema(kpbench.SchemaSpec("bad", lambda: kpbench.Schema("bad", wflw.points, ((0, 1), (1, 2)),
                                                                               (0, 1)), "bad"))
        assert "bad" not in SCHEMAS
    finally:
        SCHEMAS.pop("wflw98", None)


@pytest.mark.parametrize("schema", [KAGGLE15, IBUG68], ids=lambda s: s.name)
def test_flip_permutation_is_an_involution(schema):
    perm = schema.flip_permutation
    assert sorted(perm) == list(range(schema.num_points))  # a permutation
    assert all(perm[perm[i]] == i for i in range(schema.num_points))


def test_kaggle15_flip_swaps_every_left_point_with_its_right_twin():
    names = KAGGLE15.points
    perm = KAGGLE15.flip_permutation
    for i, name in enumerate(names):
        # left_eye_center <-> right_eye_center, mouth_left_corner <-> mouth_right_corner, ...;
        # nose_tip and the lip centers have no side and map to themselves.
        assert names[perm[i]] == _swap_side(name), name
    assert perm[names.index("left_eye_center")] == names.index("right_eye_center")
    assert perm[names.index("nose_tip")] == names.index("nose_tip")


def test_ibug68_flip_pairs_cover_each_index_at_most_once():
    flat = [i for pair in IBUG68.flip_pairs for i in pair]
    assert len(flat) == len(set(flat))
    assert all(0 <= i < 68 for i in flat)
    assert all(a != b for a, b in IBUG68.flip_pairs)
    # The midline points (chin 8, nose bridge 27-30, nose bottom 33, lip centers 51, 57, 62, 66)
    # are their own mirror images.
    for i in (8, 27, 28, 29, 30, 33, 51, 57, 62, 66):
        assert IBUG68.flip_permutation[i] == i


def _hand_made_68() -> np.ndarray:
    # point i = (i, 3 i + 1): every expected value below is then easy to compute by hand.
    i = np.arange(68, dtype=np.float64)
    return np.stack([i, 3 * i + 1], axis=1)


def test_convert_ibug68_to_kaggle15_picks_the_right_points():
    p = _hand_made_68()
    out = convert(p, "ibug68", "kaggle15")
    assert out.shape == (15, 2) and out.dtype == np.float32
    k = {name: out[j] for j, name in enumerate(KAGGLE15.points)}
    # mean of 42..47 -> x = 44.5, y = 3 * 44.5 + 1 = 134.5; mean of 36..41 -> 38.5, 116.5
    np.testing.assert_allclose(k["left_eye_center"], [44.5, 134.5])
    np.testing.assert_allclose(k["right_eye_center"], [38.5, 116.5])
    expected_direct = {
        "nose_tip": 30, "mouth_left_corner": 54, "mouth_right_corner": 48,
        "mouth_center_top_lip": 51, "mouth_center_bottom_lip": 57,
        "left_eye_outer_corner": 45, "right_eye_outer_corner": 36,
        "left_eye_inner_corner": 42, "right_eye_inner_corner": 39,
        "left_eyebrow_inner_end": 22, "left_eyebrow_outer_end": 26,
        "right_eyebrow_inner_end": 21, "right_eyebrow_outer_end": 17,
    }
    for name, src in expected_direct.items():
        np.testing.assert_allclose(k[name], [src, 3 * src + 1], err_msg=name)


def test_convert_works_on_batches():
    p = np.stack([_hand_made_68(), _hand_made_68() + 10])
    out = convert(p, "ibug68", "kaggle15")
    assert out.shape == (2, 15, 2)
    np.testing.assert_allclose(out[1], out[0] + 10)
    np.testing.assert_allclose(out[1, 10], [40, 101])  # nose tip = point 30 shifted by 10


def test_convert_commutes_with_mirroring():
    # Mirroring a 68-point face then converting must equal converting then mirroring: this checks
    # that both schemas and the mapping agree on which side is "left".
    rng = np.random.default_rng(0)
    p = rng.uniform(0, 100, (68, 2))
    width = 100

    def mirror(pts, schema):
        out = pts[list(schema.flip_permutation)].copy()
        out[:, 0] = width - 1 - out[:, 0]
        return out

    a = convert(mirror(p, IBUG68), "ibug68", "kaggle15")
    b = mirror(convert(p, "ibug68", "kaggle15"), KAGGLE15)
    np.testing.assert_allclose(a, b, atol=1e-4)


def test_convert_keeps_nan_as_nan():
    p = _hand_made_68()
    p[43] = np.nan  # one point of the left eye
    p[30] = np.nan  # the nose tip
    out = convert(p, "ibug68", "kaggle15")
    assert np.isnan(out[0]).all()  # left eye center: mean including a NaN
    assert np.isnan(out[10]).all()  # nose tip
    nan_rows = {0, 10}
    assert np.isfinite(np.delete(out, list(nan_rows), axis=0)).all()


def test_convert_same_schema_is_identity_and_unknown_mapping_raises():
    p15 = np.arange(30, dtype=np.float64).reshape(15, 2)
    np.testing.assert_array_equal(convert(p15, "kaggle15", "kaggle15"), p15)
    with pytest.raises(kpbench.KpbenchError, match="kaggle15.*ibug68"):
        convert(p15, "kaggle15", "ibug68")
    with pytest.raises(kpbench.KpbenchError, match="nope"):
        get_schema("nope")


# --------------------------------------------------------------------------------------------------
# 2. data: geometry, crops, flips, splits
# --------------------------------------------------------------------------------------------------


def test_to_crop_and_to_image_pixels_are_inverses():
    rng = np.random.default_rng(1)
    pts = rng.uniform(-20, 120, (5, 15, 2))
    boxes = np.column_stack([rng.uniform(-10, 30, 5), rng.uniform(-10, 30, 5), rng.uniform(20, 90, 5)])
    np.testing.assert_allclose(to_image_pixels(to_crop(pts, boxes), boxes), pts, atol=1e-9)
    crop = rng.uniform(0, 1, (5, 15, 2))
    np.testing.assert_allclose(to_crop(to_image_pixels(crop, boxes), boxes), crop, atol=1e-12)


def test_to_crop_maps_box_edges_to_zero_and_one():
    # Pixel centers are integers, so the box's left edge x0 is the pixel coordinate x0 - 0.5.
    boxes = np.array([[8.0, 4.0, 32.0]])
    pts = np.array([[[7.5, 3.5], [39.5, 35.5], [23.5, 19.5]]])
    np.testing.assert_allclose(to_crop(pts, boxes)[0], [[0, 0], [1, 1], [0.5, 0.5]])


def _centroid(img: np.ndarray) -> np.ndarray:
    yy, xx = np.mgrid[0:img.shape[0], 0:img.shape[1]]
    m = img.sum()
    return np.array([(xx * img).sum() / m, (yy * img).sum() / m])


@pytest.mark.parametrize(
    "box, size",
    [((8.0, 8.0, 32.0), 64),  # zoom in by 2
     ((-16.0, -16.0, 96.0), 32)],  # zoom out by 3 (the antialiased path)
)
def test_crop_resize_puts_a_bright_pixel_where_to_crop_maps_it(box, size):
    img = np.zeros((64, 64), dtype=np.float32)
    x, y = 20, 24
    img[y, x] = 1.0
    out = crop_resize(img, box, size)
    assert out.shape == (size, size)
    # where to_crop says the point is, in the output crop's pixels (centers at integers)
    expected = to_crop(np.array([[[x, y]]], dtype=np.float64), np.array([box]))[0, 0] * size - 0.5
    # by hand for the first case: ((20 + 0.5 - 8) / 32 * 64 - 0.5, (24 + 0.5 - 8) / 32 * 64 - 0.5)
    if box == (8.0, 8.0, 32.0):
        np.testing.assert_allclose(expected, [24.5, 32.5])
    got = _centroid(out)
    assert np.abs(got - expected).max() < 0.5, (got, expected)
    iy, ix = np.unravel_index(np.argmax(out), out.shape)
    assert abs(ix - expected[0]) <= 1 and abs(iy - expected[1]) <= 1


def test_crop_resize_pads_outside_the_image_with_zeros():
    img = np.ones((32, 32), dtype=np.float32)
    out = crop_resize(img, (100.0, 100.0, 16.0), 16)
    assert out.shape == (16, 16) and np.all(out == 0)
    # half outside on the right: left half of the crop is image (1), right half is padding (0)
    out = crop_resize(img, (16.0, 0.0, 32.0), 32)
    assert np.allclose(out[:, :15], 1) and np.allclose(out[:, 17:], 0)


def _torch_sample(gray, box, size, angle=0.0):
    """Bilinear samples of ``gray`` at the pixel centres of a ``size`` crop of ``box`` turned by
    ``angle`` degrees, zeros off the image (F.affine_grid + F.grid_sample)."""
    import torch.nn.functional as F

    h, w = gray.shape
    x0, y0, side = box
    c, s = np.cos(np.radians(angle)), np.sin(np.radians(angle))
    theta = torch.tensor([[[side / w * c, -side / w * s, (2 * x0 + side) / w - 1],
                           [side / h * s, side / h * c, (2 * y0 + side) / h - 1]]], dtype=torch.float32)
    grid = F.affine_grid(theta, [1, 1, size, size], align_corners=False)
    return F.grid_sample(torch.from_numpy(gray)[None, None], grid, mode="bilinear", padding_mode="zeros",
                         align_corners=False)


def test_crop_resize_enlarging_is_bilinear_at_the_crop_s_pixel_centres():
    # an upright crop no larger than its output: plain bilinear interpolation, zeros off the image
    rng = np.random.default_rng(3)
    for _ in range(200):
        h, w = (int(v) for v in rng.integers(1, 120, 2))
        gray = rng.random((h, w), dtype=np.float32)
        size = int(rng.choice([8, 32, 64]))
        side = float(rng.uniform(1, size))
        box = (float(rng.uniform(-side, w)), float(rng.uniform(-side, h)), side)  # inside, over an edge, off
        got = crop_resize(gray, box, size)
        assert got.shape == (size, size) and got.dtype == np.float32
        np.testing.assert_allclose(got, _torch_sample(gray, box, size)[0, 0].numpy(), atol=1e-4,
                                   err_msg=str((h, w, size, box)))


def test_crop_resize_shrinking_is_the_antialiased_resize_of_the_box():
    # a box on whole pixels, shrunk: torch's antialiased bilinear resize of those pixels (PIL's
    # triangle filter widened by the factor), except within the filter's reach of the box's edge,
    # where the crop reads the image around the box (and zeros off the image), not a clamped edge
    import torch.nn.functional as F

    rng = np.random.default_rng(4)
    for _ in range(100):
        size = int(rng.choice([8, 16, 32]))
        factor = int(rng.integers(2, 6))
        side = size * factor
        gray = rng.random((side + 40, side + 40), dtype=np.float32)
        x0, y0 = (int(v) for v in rng.integers(0, 40, 2))
        got = crop_resize(gray, (float(x0), float(y0), float(side)), size)
        want = F.interpolate(torch.from_numpy(gray[y0:y0 + side, x0:x0 + side].copy())[None, None], size=(size, size),
                             mode="bilinear", antialias=True, align_corners=False)[0, 0].numpy()
        np.testing.assert_allclose(got[1:-1, 1:-1], want[1:-1, 1:-1], atol=1e-5, err_msg=str((size, factor, x0, y0)))
        assert np.abs(got - want).max() < 0.2  # the edge rows: the same filter, other pixels
    # over the image's edge the filter reads zeros: a white image's crop darkens towards it
    white = np.ones((64, 64), np.float32)
    edge = crop_resize(white, (-16.0, 8.0, 48.0), 12)  # 16 px of zeros on the left, then image (4 px a crop pixel)
    assert np.allclose(edge[:, 6:], 1, atol=1e-6) and (edge[:, :3] < 0.05).all() and 0 < edge[5, 4] < 1


def test_a_turned_crop_is_samples_at_its_pixel_centres_then_the_antialiased_shrink():
    import torch.nn.functional as F

    rng = np.random.default_rng(5)
    for _ in range(50):
        h, w = (int(v) for v in rng.integers(20, 200, 2))
        gray = rng.random((h, w), dtype=np.float32)
        size = int(rng.choice([8, 32]))
        side = float(rng.uniform(1, 1.5 * max(h, w)))
        box = (float(rng.uniform(-side / 2, w / 2)), float(rng.uniform(-side / 2, h / 2)), side)
        angle = float(rng.uniform(-40, 40))
        out = size if side / size <= 1.5 else int(round(side))
        want = _torch_sample(gray, box, out, angle)
        if out != size:
            want = F.interpolate(want, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        np.testing.assert_allclose(crop_resize(gray, (*box, angle), size), want[0, 0].numpy(), atol=1e-4)


def test_crop_from_image_is_crop_resize_of_its_gray():
    # the upright crop of 8-bit RGB goes through PIL whole; any other image through to_gray
    rng = np.random.default_rng(6)
    for _ in range(50):
        h, w = (int(v) for v in rng.integers(1, 200, 2))
        rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        side = float(rng.uniform(1, 1.5 * max(h, w)))
        box = (float(rng.uniform(-side, w)), float(rng.uniform(-side, h)), side)
        for b in (box, (*box, 17.0)):
            want = crop_resize(to_gray(rgb), b, 32)
            np.testing.assert_allclose(crop_from_image(rgb, b, 32), want, atol=1e-5, err_msg=str((h, w, b)))
            np.testing.assert_allclose(crop_from_image(rgb / 255.0, b, 32), want, atol=1e-5)


def test_to_gray_weights_rgb_and_scales_uint8():
    img = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 20, 30]]], dtype=np.uint8)
    np.testing.assert_allclose(to_gray(img), [[0.299, 0.587, 0.114, (2.99 + 11.74 + 3.42) / 255]], rtol=1e-6)
    np.testing.assert_allclose(to_gray(img.astype(np.float32) / 255), to_gray(img), rtol=1e-6)
    assert to_gray(img[..., 0]).dtype == np.float32 and to_gray(img[..., 0])[0, 0] == 1.0
    assert to_gray(img / 255.0).dtype == np.float32  # float64 in, float32 out
    np.testing.assert_allclose(to_gray(img / 255.0), to_gray(img), rtol=1e-6)


def test_crop_from_image_is_the_crop_of_the_whole_gray_image():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
    gray = to_gray(img)
    boxes = [(10.3, 5.7, 30.0), (-20.0, -10.0, 50.0), (60.0, 40.0, 45.0, 25.0), (5.0, 5.0, 140.0, -30.0),
             (79.5, 10.0, 20.0), (200.0, 200.0, 10.0)]  # zoom in, over an edge, turned, zoom out, off the image
    for box in boxes:
        np.testing.assert_allclose(crop_from_image(img, box, 24), crop_resize(gray, box, 24), atol=1e-4,
                                   err_msg=str(box))


def test_flip_batch_mirrors_image_and_points_consistently():
    S = 16
    perm = list(KAGGLE15.flip_permutation)
    rng = np.random.default_rng(2)
    y = torch.from_numpy(rng.uniform(0.1, 0.9, (2, 15, 2)).astype(np.float32))
    x = torch.zeros(2, 1, S, S)
    col, row = 3, 5
    x[0, 0, row, col] = 1.0  # a bright pixel under point 0 (the subject's left eye) of image 0
    y[0, 0] = torch.tensor([(col + 0.5) / S, (row + 0.5) / S])
    y[0, 7] = float("nan")  # a missing point travels with its label
    x[1] = torch.rand(1, S, S)
    which = torch.tensor([True, False])

    fx, fy = flip_batch(x, y, which, perm)

    # image 0: mirrored, the bright pixel is now in column S - 1 - col
    assert fx[0, 0, row, S - 1 - col] == 1 and fx[0].sum() == 1
    # the subject's left eye of the mirrored face is the old right eye: the bright pixel is now
    # under point perm[0] == 1 (its new name), at crop x = 1 - (col + 0.5) / S
    assert perm[0] == 1
    px = fy[0, 1].numpy() * S - 0.5  # back to the crop's pixel coordinates
    np.testing.assert_allclose(px, [S - 1 - col, row], atol=1e-5)
    assert fx[0, 0, int(round(px[1])), int(round(px[0]))] == 1
    # every point: label swapped by the permutation, x mirrored, y unchanged
    for k in range(15):
        src = y[0, perm[k]]
        if torch.isnan(src).any():
            assert torch.isnan(fy[0, k]).all()
            continue
        np.testing.assert_allclose(fy[0, k].numpy(), [1 - src[0].item(), src[1].item()], atol=1e-6)
    assert torch.isnan(fy[0, perm[7]]).all()  # NaN moved to the mirrored label (right brow outer end)
    # image 1 was not selected: untouched
    assert torch.equal(fx[1], x[1]) and torch.equal(fy[1], y[1])
    # flipping twice is the identity
    gx, gy = flip_batch(fx, fy, which, perm)
    assert torch.equal(gx, x)
    np.testing.assert_allclose(gy.numpy(), y.numpy(), atol=1e-6)  # NaN compares equal to NaN here


def test_split_indices_is_deterministic_disjoint_complete_and_sized():
    parts = split_indices(100, [0.7, 0.15, 0.15], seed=5)
    again = split_indices(100, [0.7, 0.15, 0.15], seed=5)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    assert [len(p) for p in parts] == [70, 15, 15]
    allidx = np.concatenate(parts)
    assert sorted(allidx.tolist()) == list(range(100))  # disjoint and complete
    other = split_indices(100, [0.7, 0.15, 0.15], seed=6)
    assert not np.array_equal(parts[0], other[0])
    assert [len(p) for p in split_indices(10, [0.5, 0.5, 0.0], seed=0)] == [5, 5, 0]


def test_split_indices_keeps_groups_apart():
    groups = [f"person{i // 5}" for i in range(100)]  # 20 people, 5 images each
    parts = split_indices(100, [0.7, 0.15, 0.15], seed=3, groups=groups)
    assert sorted(np.concatenate(parts).tolist()) == list(range(100))
    seen = [{groups[i] for i in p} for p in parts]
    assert not (seen[0] & seen[1]) and not (seen[0] & seen[2]) and not (seen[1] & seen[2])
    # 20 groups * (0.7, 0.15, 0.15) = 14, 3, 3 groups of 5 images
    assert [len(s) for s in seen] == [14, 3, 3]
    assert [len(p) for p in parts] == [70, 15, 15]
    again = split_indices(100, [0.7, 0.15, 0.15], seed=3, groups=groups)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))


@pytest.mark.parametrize("fractions", [[0.5, 0.5], [0.8, 0.3, -0.1], [0.5, 0.3, 0.1], [0.25] * 4])
def test_split_indices_rejects_bad_fractions(fractions):
    with pytest.raises(kpbench.KpbenchError, match="data.split"):
        split_indices(10, fractions, seed=0)


# --------------------------------------------------------------------------------------------------
# 3. metrics
# --------------------------------------------------------------------------------------------------


def _metric_example():
    """Two images, 15 points, with offsets chosen so every error is a small integer."""
    true = np.zeros((2, 15, 2))
    true[:, :, 0] = np.arange(15) * 2.0 + 5
    true[:, :, 1] = np.arange(15) * 1.0 + 7
    # image 0: outer eye corners (3 and 5) 20 px apart
    true[0, 3], true[0, 5] = [30, 20], [10, 20]
    # image 1: outer eye corners 26 px apart (24, 10, 26 triangle); points 7 and 8 missing
    true[1, 3], true[1, 5] = [50, 40], [26, 30]
    pred = true.copy()
    pred[0, 0] += [3, 4]  # distance 5
    pred[0, 1] += [3, 4]  # distance 5
    pred[0, 10] += [0, -6]  # distance 6
    pred[1, 2] += [-6, 8]  # distance 10
    pred[1, 14] += [1, 0]  # distance 1
    pred[1, 7] = [1000, 1000]  # predicted where the truth is missing: must not count
    pred[1, 8] = [-500, 3]
    true[1, 7] = np.nan
    true[1, 8] = np.nan
    # by hand -- image 0: 30 coordinates, 15 points; image 1: 26 coordinates, 13 points
    mse = [(9 + 16 + 9 + 16 + 0 + 36) / 30, (36 + 64 + 1) / 26]
    mae = [(3 + 4 + 3 + 4 + 0 + 6) / 30, (6 + 8 + 1) / 26]
    nme = [(5 + 5 + 6) / 15 / 20, (10 + 1) / 13 / 26]
    return pred, true, {"mse": mse, "mae": mae, "rmse": mse, "nme": nme}


def test_metric_plugins_per_image_values(plugins):
    pred, true, expected = _metric_example()
    ctx = MetricContext(schema=KAGGLE15, boxes=np.array([[0, 0, 64], [0, 0, 64]], dtype=float))
    for name in ("mse", "mae", "rmse", "nme"):
        fn = plugins.metrics.get(name)
        got = np.asarray(fn(pred, true, ctx), dtype=float)
        assert got.shape == (2,)
        np.testing.assert_allclose(got, expected[name], rtol=1e-12, err_msg=name)


def test_a_metric_spec_holds_its_function_and_the_old_factory_form_warns(plugins):
    pred, true, expected = _metric_example()
    ctx = MetricContext(schema=KAGGLE15, boxes=np.array([[0, 0, 64], [0, 0, 64]], dtype=float))

    def worst(p, t, c):
        return np.nanmax(np.linalg.norm(p - t, axis=-1), axis=1)

    spec = MetricSpec("worst", worst, "largest point error, px")
    assert spec.fn is worst
    np.testing.assert_allclose(spec(pred, true, ctx), worst(pred, true, ctx))
    with pytest.warns(DeprecationWarning, match="takes the metric function itself"):
        old = MetricSpec("worst", lambda: worst, "the kpbench 0.1 form")
    assert old.fn is worst
    nme = plugins.metrics.get("nme")
    np.testing.assert_allclose(nme(pred, true, ctx), expected["nme"], rtol=1e-12)


def test_metric_aggregation_and_specs(plugins):
    pred, true, expected = _metric_example()
    m = plugins.metrics
    assert m.get("rmse").aggregate == "sqrt_mean"
    assert m.get("mse").aggregate == m.get("mae").aggregate == m.get("nme").aggregate == "mean"
    assert not any(m.get(n).higher_is_better for n in ("mse", "mae", "rmse", "nme"))
    mse = expected["mse"]
    assert aggregate(np.array(mse), "mean") == pytest.approx((mse[0] + mse[1]) / 2)
    assert aggregate(np.array(mse), "sqrt_mean") == pytest.approx(math.sqrt((mse[0] + mse[1]) / 2))
    # an image whose metric is undefined (NaN) is left out of the average
    assert aggregate(np.array([1.0, np.nan, 3.0]), "mean") == pytest.approx(2.0)
    assert math.isnan(aggregate(np.array([np.nan, np.nan]), "mean"))
    with pytest.raises(ValueError):
        aggregate(np.array([1.0]), "median")


def test_score_maps_crop_predictions_back_and_aggregates(plugins):
    pred, true, expected = _metric_example()
    boxes = np.array([[-2.0, 4.0, 80.0], [10.0, 0.0, 50.0]])
    # crop coordinates by hand: (p + 0.5 - (x0, y0)) / side
    pred_crop = (pred + 0.5 - boxes[:, None, :2]) / boxes[:, None, 2:3]
    data = Prepared(images=torch.zeros(2, 1, 4, 4), targets=torch.zeros(2, 15, 2), points=true,
                    boxes=boxes, ids=["a", "b"])
    specs = [plugins.metrics.get(n) for n in ("nme", "rmse", "mae", "mse")]
    pred_px, values, per_image = score(pred_crop, data, KAGGLE15, specs)
    np.testing.assert_allclose(pred_px, pred, atol=1e-9)
    for name in ("nme", "mae", "mse"):
        np.testing.assert_allclose(per_image[name], expected[name], rtol=1e-9)
        assert values[name] == pytest.approx(sum(expected[name]) / 2, rel=1e-9)
    assert values["rmse"] == pytest.approx(math.sqrt(sum(expected["mse"]) / 2), rel=1e-9)


def test_nme_is_undefined_without_both_outer_eye_corners(plugins):
    pred, true, _ = _metric_example()
    true[0, 5] = np.nan  # right outer corner missing: no inter-ocular distance for image 0
    fn = plugins.metrics.get("nme")
    got = fn(pred, true, MetricContext(schema=KAGGLE15, boxes=np.zeros((2, 3))))
    assert math.isnan(got[0])
    assert got[1] == pytest.approx(11 / 13 / 26)


def test_nme_normalizes_by_outer_eye_corners_not_pupils(plugins):
    pred, true, _ = _metric_example()
    fn = plugins.metrics.get("nme")
    ctx = MetricContext(schema=KAGGLE15, boxes=np.zeros((2, 3)))
    base = fn(pred, true, ctx)
    # move the eye centers (pupils) in both truth and prediction: errors and the norm are unchanged
    pred2, true2 = pred.copy(), true.copy()
    pred2[:, :2] += 7
    true2[:, :2] += 7
    np.testing.assert_allclose(fn(pred2, true2, ctx), base)
    # double the outer-corner distance of image 0 (keeping those points exact): NME halves
    pred3, true3 = pred.copy(), true.copy()
    true3[0, 3] = pred3[0, 3] = [50, 20]  # corners now (50, 20) and (10, 20): 40 px
    assert fn(pred3, true3, ctx)[0] == pytest.approx(base[0] / 2)


def test_masked_mse_ignores_nan_targets():
    pred = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]], requires_grad=True)
    target = torch.tensor([[[0.0, float("nan")], [3.0, 6.0]]])
    loss = masked_mse(pred, target)
    # known coordinates: (1-0)^2, (3-3)^2, (4-6)^2 -> (1 + 0 + 4) / 3
    assert loss.item() == pytest.approx(5 / 3)
    loss.backward()
    assert torch.isfinite(pred.grad).all()
    assert pred.grad[0, 0, 1] == 0  # the missing coordinate gets no gradient
    # d/dp of (p - t)^2 / 3 = 2 (p - t) / 3
    assert pred.grad[0, 0, 0].item() == pytest.approx(2 / 3)
    assert pred.grad[0, 1, 1].item() == pytest.approx(-4 / 3)
    assert masked_mse(torch.ones(1, 2, 2), torch.full((1, 2, 2), float("nan"))).item() == 0


# --------------------------------------------------------------------------------------------------
# 4. config
# --------------------------------------------------------------------------------------------------


def test_config_unknown_key_names_file_line_and_suggestion(tmp_path):
    p = tmp_path / "exp.yaml"
    p.write_text("run:\n  seed: 1\ntrain:\n  epoch: 3\n")  # `epoch` is on line 4
    with pytest.raises(kpbench.KpbenchError) as exc:
        kcfg.load(p)
    msg = str(exc.value)
    assert f"{p}:4" in msg
    assert "train.epoch" in msg and "did you mean 'epochs'" in msg


def _load_error(tmp_path, name: str, text: str) -> tuple[str, str]:
    p = tmp_path / name
    p.write_text(text)
    with pytest.raises(kpbench.KpbenchError) as exc:
        kcfg.load(p)
    return str(p), str(exc.value)


def test_config_unknown_key_in_flow_mapping(tmp_path):
    p, msg = _load_error(tmp_path, "flow.yaml", "# comment\ntrain: {epoch: 3}\n")
    assert "flow.yaml" in msg and f"{p}:2" in msg and "did you mean 'epochs'" in msg


def test_config_unknown_top_level_key(tmp_path):
    p = tmp_path / "top.yaml"
    p.write_text("trian:\n  epochs: 3\n")
    with pytest.raises(kpbench.KpbenchError, match=r"top\.yaml:1.*did you mean 'train'"):
        kcfg.load(p)


def test_config_wrong_type_names_key_and_expected_type(tmp_path):
    _, msg = _load_error(tmp_path, "typ.yaml", "train: {epochs: ten}\n")
    assert "train.epochs" in msg and "int" in msg and "ten" in msg and "typ.yaml:1" in msg


@pytest.mark.parametrize("text", ["train: {epochs: true}", "train: {epochs: 2.5}", "train: {flip: 1}",
                                  "models: cnn", "data: {split: 0.5}", "train: 3"])
def test_config_rejects_other_wrong_types(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text + "\n")
    with pytest.raises(kpbench.KpbenchError, match="must be"):
        kcfg.load(p)


def test_config_int_for_float_is_accepted_and_merged_over_defaults(tmp_path):
    p = tmp_path / "ok.yaml"
    p.write_text("train:\n  lr: 1\n  epochs: 3\n")
    cfg = kcfg.load(p)
    assert cfg["train"]["lr"] == 1 and cfg["train"]["epochs"] == 3
    # keys the file does not mention keep their defaults
    assert cfg["train"]["batch_size"] == kcfg.DEFAULTS["train"]["batch_size"]
    assert cfg["eval"] == kcfg.DEFAULTS["eval"]


def test_config_missing_file_and_none(tmp_path):
    assert kcfg.load(None) == kcfg.DEFAULTS
    with pytest.raises(kpbench.KpbenchError, match="not found"):
        kcfg.load(tmp_path / "nope.yaml")


def test_config_override():
    cfg = kcfg.load(None)
    new = kcfg.override(cfg, "train.lr=0.01")
    assert new["train"]["lr"] == 0.01
    assert new["train"]["epochs"] == cfg["train"]["epochs"]  # siblings kept
    assert cfg["train"]["lr"] == kcfg.DEFAULTS["train"]["lr"]  # input not mutated
    assert kcfg.override(cfg, "models=[cnn, integral]")["models"] == ["cnn", "integral"]
    with pytest.raises(kpbench.KpbenchError, match="train.nope"):
        kcfg.override(cfg, "train.nope=1")
    with pytest.raises(kpbench.KpbenchError, match="train.epochs"):
        kcfg.override(cfg, "train.epochs=ten")
    with pytest.raises(kpbench.KpbenchError, match="KEY=VALUE"):
        kcfg.override(cfg, "train.lr")


def test_config_accepts_exponent_notation_floats(tmp_path):
    p = tmp_path / "lr.yaml"
    p.write_text("train:\n  lr: 3e-4\n")
    assert kcfg.load(p)["train"]["lr"] == pytest.approx(3e-4)
    assert kcfg.override(kcfg.load(None), "train.lr=3e-4")["train"]["lr"] == pytest.approx(3e-4)


def test_gt_box_with_coincident_points_falls_back_to_whole_image():
    from kpbench_plugins.detectors import GtBox as gt_box
    pts = np.full((15, 2), np.nan, dtype=np.float32)
    pts[:3] = 10.0
    x0, y0, side = gt_box()(np.zeros((40, 60), np.float32), pts)
    assert side == 60 and y0 == -10 and x0 == 0


# --------------------------------------------------------------------------------------------------
# 5. registry
# --------------------------------------------------------------------------------------------------


def _factory(*args, **kwargs):
    return None


@pytest.fixture
def model_registry():
    reg = Registry("model")
    for name in ("mobilenetv2", "mobilevit", "resnet18", "cnn"):
        reg.add(ModelSpec(name, _factory), plugin="pkg-a")
    return reg


def test_registry_get_typo_suggests_and_lists_known(model_registry):
    assert model_registry.get("cnn").name == "cnn"
    assert model_registry.get("cnn").plugin == "pkg-a"
    with pytest.raises(kpbench.KpbenchError) as exc:
        model_registry.get("resnet81", where="--models")
    msg = str(exc.value)
    assert msg.startswith("--models: ")
    assert "unknown model 'resnet81'" in msg and "did you mean 'resnet18'" in msg
    for name in ("mobilenetv2", "mobilevit", "resnet18", "cnn"):
        assert name in msg
    with pytest.raises(kpbench.KpbenchError) as exc:
        model_registry.get("zzzzzzzzzz")
    assert "did you mean" not in str(exc.value) and "cnn" in str(exc.value)


def test_registry_list_filters_with_wildcards(model_registry):
    assert [s.name for s in model_registry.list("mobile*")] == ["mobilenetv2", "mobilevit"]
    assert [s.name for s in model_registry.list("*18")] == ["resnet18"]
    assert [s.name for s in model_registry.list("res?et*")] == ["resnet18"]
    assert [s.name for s in model_registry.list()] == ["cnn", "mobilenetv2", "mobilevit", "resnet18"]
    assert model_registry.list("nothing*") == []


def test_registry_duplicate_name_names_both_plugins(model_registry):
    with pytest.raises(kpbench.KpbenchError) as exc:
        model_registry.add(ModelSpec("cnn", _factory), plugin="pkg-b")
    msg = str(exc.value)
    assert "'cnn'" in msg and "pkg-a" in msg and "pkg-b" in msg
    assert model_registry.get("cnn").plugin == "pkg-a"  # the first registration is kept


def test_registry_rejects_a_spec_of_the_wrong_kind(model_registry):
    with pytest.raises(kpbench.KpbenchError, match="pkg-c.*ModelSpec"):
        model_registry.add(DatasetSpec("faces", _factory), plugin="pkg-c")
    assert "faces" not in model_registry


def test_builtin_registries(plugins):
    assert [s.name for s in plugins.models.list("mobile*")] == ["mobilenetv2"]
    assert set(plugins.metrics.names()) >= {"mse", "mae", "rmse", "nme"}
    assert all(isinstance(s, MetricSpec) for s in plugins.metrics.list())
    with pytest.raises(kpbench.KpbenchError, match="did you mean 'nme'"):
        plugins.metrics.get("nmee")


# --------------------------------------------------------------------------------------------------
# 6. synthetic dataset
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def synthetic_cls(plugins):
    return plugins.datasets.get("synthetic").factory


def test_synthetic_same_seed_same_faces_different_seed_different(synthetic_cls):
    a, b = synthetic_cls(n=4, size=64, seed=0), synthetic_cls(n=4, size=64, seed=0)
    c = synthetic_cls(n=4, size=64, seed=1)
    assert len(a) == 4 and a.schema == "kaggle15"
    for i in (0, 3):
        sa, sb, sc = a[i], b[i], c[i]
        assert np.array_equal(sa.image, sb.image) and np.array_equal(sa.points, sb.points)
        assert sa.id == sb.id != sc.id
        assert not np.array_equal(sa.image, sc.image)
        assert not np.allclose(sa.points, sc.points)
    assert not np.array_equal(a[0].image, a[1].image)  # different index, different face


def test_synthetic_points_are_float32_finite_and_inside(synthetic_cls):
    ds = synthetic_cls(n=4, size=64)
    for i in range(len(ds)):
        s = ds[i]
        assert s.image.shape == (64, 64) and s.image.dtype == np.uint8
        assert s.image.std() > 0  # not a blank image
        assert s.points.shape == (15, 2) and s.points.dtype == np.float32
        assert np.isfinite(s.points).all()
        # The face (half-width at most 0.30 * 64 px) sits within 8% of the center, so every point
        # is within about 24 px of the center: all points are inside the image.
        inside = ((s.points >= -0.5) & (s.points <= 63.5)).all(axis=1)
        assert inside.mean() == 1.0, s.points


def test_synthetic_subjects_left_eye_is_on_the_image_right(synthetic_cls):
    ds = synthetic_cls(n=4, size=64, seed=7)
    dx = np.array([ds[i].points[0, 0] - ds[i].points[1, 0] for i in range(len(ds))])
    # left_eye_center (index 0) minus right_eye_center (index 1): positive for an upright face
    assert dx.mean() > 0
    assert (dx > 0).all()  # in-plane rotation is at most 18 degrees: never flips the order


def test_synthetic_rejects_bad_arguments(synthetic_cls):
    with pytest.raises(kpbench.KpbenchError):
        synthetic_cls(n=2)
    with pytest.raises(kpbench.KpbenchError):
        synthetic_cls(n=4, size=16)
    with pytest.raises(kpbench.KpbenchError):
        synthetic_cls(path="somewhere", n=4)
    with pytest.raises(IndexError):
        synthetic_cls(n=4, size=32)[4]


# --------------------------------------------------------------------------------------------------
# 7. detectors
# --------------------------------------------------------------------------------------------------


def _inside(points: np.ndarray, box, tol: float = 1e-3) -> np.ndarray:
    # tol: with margin 0 the extreme points lie exactly on the box edge (up to float32 rounding)
    x0, y0, side = (float(v) for v in box)
    edge = points.astype(np.float64) + 0.5  # pixel center -> edge coordinates
    return ((edge[:, 0] >= x0 - tol) & (edge[:, 0] <= x0 + side + tol)
            & (edge[:, 1] >= y0 - tol) & (edge[:, 1] <= y0 + side + tol))


def test_gt_box_by_hand(plugins):
    detect = plugins.detectors.get("gt-box").factory()  # margin 0.25
    image = np.zeros((80, 100), dtype=np.float32)
    pts = np.array([[10, 20], [30, 25], [20, 60], [np.nan, np.nan]], dtype=np.float32)
    # visible extent in edge coordinates: x 10.5..30.5 (20), y 20.5..60.5 (40) -> side 40 * 1.5 = 60,
    # centered on (20.5, 40.5)
    np.testing.assert_allclose(detect(image, pts), (-9.5, 10.5, 60.0))


def test_gt_box_contains_all_visible_points(plugins):
    rng = np.random.default_rng(4)
    image = np.zeros((90, 120), dtype=np.float32)
    for margin in (0.0, 0.1, 0.25):
        detect = plugins.detectors.get("gt-box").factory(margin=margin)
        for _ in range(5):
            pts = rng.uniform(0, [119, 89], (15, 2)).astype(np.float32)
            pts[rng.integers(15)] = np.nan
            box = detect(image, pts)
            visible = pts[~np.isnan(pts).any(axis=1)]
            assert _inside(visible, box).all()
            crop = to_crop(visible[None].astype(np.float64), np.array([box], dtype=np.float64))
            assert (crop >= -1e-4).all() and (crop <= 1 + 1e-4).all()
            # the box is square and tight along the larger extent, plus the margin on each side
            extent = (visible.max(axis=0) - visible.min(axis=0)).max()
            assert box[2] == pytest.approx(extent * (1 + 2 * margin), rel=1e-5)


def test_gt_box_falls_back_to_whole_image_with_too_few_points(plugins):
    detect = plugins.detectors.get("gt-box").factory()
    image = np.zeros((40, 60))
    pts = np.full((15, 2), np.nan)
    pts[0] = [5, 5]
    assert tuple(detect(image, pts)) == (0.0, -10.0, 60.0)


@pytest.mark.parametrize("shape, expected", [((40, 60), (0.0, -10.0, 60.0)),
                                             ((60, 40), (-10.0, 0.0, 60.0)),
                                             ((50, 50, 3), (0.0, 0.0, 50.0))])
def test_none_detector_is_a_centered_square_covering_the_image(plugins, shape, expected):
    detect = plugins.detectors.get("none").factory()
    image = np.zeros(shape)
    box = detect(image, np.zeros((15, 2)))
    assert tuple(box) == expected
    x0, y0, side = box
    h, w = shape[:2]
    assert x0 <= 0 and y0 <= 0 and x0 + side >= w and y0 + side >= h
    assert side == max(h, w)
    # centered: same padding on both sides
    assert -x0 == pytest.approx(x0 + side - w) and -y0 == pytest.approx(y0 + side - h)


def test_a_reference_model_answers_in_the_runs_schema_from_its_68_points():
    from kpbench.keypoints import convert
    from kpbench.reference import ReferenceModel

    class Still(ReferenceModel):
        name = "still"

        def points68(self, images, gray):
            assert images.dtype == np.uint8 and images.shape[1:] == (64, 64)  # 32 px crops upscaled to min_size
            return np.tile(np.linspace(0.1, 0.9, 136, dtype=np.float32).reshape(1, 68, 2), (len(images), 1, 1))

    x = torch.rand(3, 1, 32, 32)
    p68 = np.linspace(0.1, 0.9, 136, dtype=np.float32).reshape(68, 2)
    assert Still(68, 64)(x).shape == (3, 136)
    np.testing.assert_allclose(Still(15, 64)(x)[0].numpy().reshape(15, 2), convert(p68, "ibug68", "kaggle15"), atol=1e-6)
    model = Still(15, 64)
    model(x)
    assert (model.images, Still.absolute_output, Still.flip_test) == (3, True, False)
    with pytest.raises(kpbench.KpbenchError, match="model 'still' predicts the 68 iBUG points"):
        Still(5, 64)


def test_read_ahead_gives_the_photos_in_order_and_each_error_at_its_turn(tmp_path):
    from PIL import Image

    from kpbench.photos import read_ahead

    paths = []
    for i in range(4):
        paths.append(tmp_path / f"p{i}.png")
        Image.fromarray(np.full((8, 8, 3), i * 40, np.uint8)).save(paths[-1])
    (tmp_path / "bad.jpg").write_bytes(b"not a photo")
    (tmp_path / "clip.mp4").write_bytes(b"")
    paths[2:2] = [tmp_path / "bad.jpg", tmp_path / "clip.mp4"]
    seen = []
    with read_ahead(paths) as photos:
        for path, read in photos:
            if path.name == "bad.jpg":
                with pytest.raises(kpbench.KpbenchError, match="bad.jpg"):
                    read()
                continue
            image = read()
            seen.append((path.name, None if image is None else int(image[0, 0, 0])))
    assert seen == [("p0.png", 0), ("p1.png", 40), ("clip.mp4", None), ("p2.png", 80), ("p3.png", 120)]


def test_a_trained_model_numbers_its_points_as_its_annotations_and_a_reference_as_itself():
    from kpbench.reference import ReferenceModel
    from kpbench.train import reported_origin

    data = Prepared(images=torch.zeros(2, 1, 4, 4), targets=torch.zeros(2, 15, 2), points=np.zeros((2, 15, 2)),
                    boxes=np.ones((2, 3), np.float32), ids=["a", "b"], origin=np.array([1.0, 0.0], np.float32))
    assert reported_origin(torch.nn.Linear(1, 1), data) == 0.5  # the mean over the training faces
    assert reported_origin(ReferenceModel(15, 32), data) == 0.0  # dlib's and MediaPipe's points are their own


def test_a_sigterm_sent_during_an_atomic_write_from_another_thread_waits_until_the_file_is_whole(tmp_path):
    """The kernel may hand a process's SIGTERM to any thread; the write still finishes, then the
    signal is delivered (once) to the handler that was there before."""
    import os
    import signal
    import threading
    import time

    from kpbench.io import _atomic

    seen = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
    try:
        def write(f):
            threading.Thread(target=os.kill, args=(os.getpid(), signal.SIGTERM)).start()
            for _ in range(20):
                time.sleep(0.01)  # bytecodes run meanwhile: an unheld handler would run here
                assert not seen, "the signal's handler ran in the middle of the write"
                f.write(b"x" * 100)

        _atomic(tmp_path / "out.bin", write)
        assert (tmp_path / "out.bin").read_bytes() == b"x" * 2000
        time.sleep(0.05)
        assert seen == [signal.SIGTERM]  # delivered after the block, once
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_strict_json_writes_nan_and_infinity_as_null_and_numpy_floats_as_numbers():
    import json

    from kpbench.io import strict_json

    doc = {"a": [1.5, float("nan"), (2, float("-inf"))], "b": {"c": np.float32(0.25), "d": None, "e": "x"}}
    text = strict_json(doc, indent=1)
    assert json.loads(text, parse_constant=pytest.fail) == {"a": [1.5, None, [2, None]],
                                                            "b": {"c": 0.25, "d": None, "e": "x"}}
    # ``default`` turns what JSON cannot hold into text, but a numpy float is still a number
    assert json.loads(strict_json({"f": np.float64(3.0), "p": kpbench}, default=str))["f"] == 3.0
    plain = {"frame": 3, "time": 0.1, "faces": [{"box": [1.0, 2.0, 3.0], "confidence": None}]}
    assert strict_json(plain) == json.dumps(plain)  # a plain document is encoded as it is
