"""Metric plugins and kpbench.stats against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from kpbench import stats
from kpbench.evaluate import MetricContext, aggregate
from kpbench.keypoints import Schema, get_schema
from kpbench.plugins import get_plugins

K15 = get_schema("kaggle15")
IBUG = get_schema("ibug68")

# One kaggle15 face, symmetric about x = 55. Outer eye corners (3, 5): x 80 and 30 -> 50 px apart;
# eye centers (0, 1): x 70 and 40 -> 30 px; visible bounding box 90 x 40 -> sqrt(w*h) = 60.
XS = np.array([70, 40, 60, 80, 50, 30, 60, 100, 50, 10, 55, 70, 40, 55, 55], dtype=float)
YS = np.array([40, 40, 40, 40, 40, 40, 25, 25, 25, 25, 50, 60, 60, 55, 65], dtype=float)
FACE = np.stack([XS, YS], axis=-1)


def metric(name):
    return get_plugins().metrics.get(name)


def compute(name, pred, true, boxes=None, schema=K15):
    boxes = np.tile([0.5, 0.5, 100.0], (len(true), 1)) if boxes is None else np.asarray(boxes, float)
    out = np.asarray(metric(name)(pred, true, MetricContext(schema=schema, boxes=boxes)), dtype=float)
    assert out.shape == (len(true),), name
    return out


@pytest.fixture
def two_faces():
    """Image 0: FACE, every point shifted by (3, 4) -> distance 5. Image 1: FACE scaled by 2, every
    point shifted by (-6, 8) -> distance 10; its inter-ocular distance is 100, inter-pupil 60, box
    sqrt(180 * 80) = 120."""
    true = np.stack([FACE, 2 * FACE])
    pred = true + np.array([[[3.0, 4.0]], [[-6.0, 8.0]]])
    boxes = np.array([[0.5, 0.5, 100.0], [-19.5, 0.5, 200.0]])
    return pred, true, boxes


def test_two_images_every_metric_by_hand(two_faces):
    pred, true, boxes = two_faces
    # image 0: (9 + 16) / 2, (3 + 4) / 2; image 1: (36 + 64) / 2, (6 + 8) / 2
    mse, mae = [12.5, 50.0], [3.5, 7.0]
    # |error| / |true| per coordinate; image 1 is image 0 with errors and coordinates both doubled
    mape0 = 100 * np.mean(np.r_[3 / XS, 4 / YS])
    # crop coordinates: image 0 (t + 0.5 - 0.5) / 100; image 1 (t + 0.5 + 19.5) / 200 in x
    mape1_norm = 100 * np.mean(np.r_[6 / (2 * XS + 20), 8 / (2 * YS)])
    expected = {
        "mse": mse, "mae": mae, "rmse": mse,
        "mape": [mape0, mape0],
        "mse_norm": [12.5 / 100**2, 50 / 200**2],
        "mae_norm": [3.5 / 100, 7 / 200],
        "rmse_norm": [12.5 / 100**2, 50 / 200**2],
        "mape_norm": [mape0, mape1_norm],  # image 0's box puts crop coordinates at t / 100
        "nme": [5 / 50, 10 / 100],
        "nme_ip": [5 / 30, 10 / 60],
        "nme_box": [5 / 60, 10 / 120],
        "fr10": [0.0, 0.0],  # NME exactly 0.1 is not a failure
        "auc10": [0.0, 0.0],
    }
    for name, want in expected.items():
        np.testing.assert_allclose(compute(name, pred, true, boxes), want, rtol=1e-12, atol=1e-15, err_msg=name)
    assert mape0 == pytest.approx(100 * (3 * (2/70 + 2/40 + 2/60 + 1/80 + 2/50 + 1/30 + 1/100 + 1/10 + 3/55)
                                         + 4 * (6/40 + 4/25 + 1/50 + 2/60 + 1/55 + 1/65)) / 30)
    # aggregated over the two images, as kpbench.evaluate.score does
    specs = get_plugins().metrics
    agg = {n: aggregate(compute(n, pred, true, boxes), specs.get(n).aggregate) for n in expected}
    assert agg["rmse"] == pytest.approx(math.sqrt((12.5 + 50) / 2))
    assert agg["rmse_norm"] == pytest.approx(math.sqrt(12.5e-4))
    assert agg["nme_ip"] == pytest.approx(1 / 6)


def test_metric_specs():
    m = get_plugins().metrics
    assert set(m.names()) >= {"mse", "mae", "rmse", "nme", "mape", "mse_norm", "mae_norm", "rmse_norm",
                              "mape_norm", "nme_ip", "nme_box", "fr10", "auc10"}
    assert [n for n in m.names() if m.get(n).higher_is_better] == ["auc10"]
    assert {n for n in m.names() if m.get(n).aggregate == "sqrt_mean"} == {"rmse", "rmse_norm"}
    units = {n: m.get(n).unit for n in ("mse", "rmse", "mape", "mape_norm", "mae_norm", "nme_box", "fr10", "auc10")}
    assert units == {"mse": "px²", "rmse": "px", "mape": "%", "mape_norm": "%", "mae_norm": "", "nme_box": "",
                     "fr10": "", "auc10": ""}
    assert all(m.get(n).description for n in m.names())


def test_missing_points_are_excluded():
    true = FACE[None].copy()
    pred = true + [3.0, 4.0]
    pred[0, 10] = true[0, 10] + [6, 8]  # nose off by 10
    true[0, [7, 9]] = np.nan  # outer brow ends missing ...
    pred[0, [7, 9]] = [[1000.0, -1000.0], [5000.0, 3.0]]  # ... so these wild predictions don't count
    # 13 visible points, 26 coordinates; visible box: x 30..80, y 25..65 -> 50 x 40
    expected = {
        "mse": (12 * 25 + 100) / 26,
        "mae": (12 * 7 + 14) / 26,
        "nme": (12 * 5 + 10) / 13 / 50,
        "nme_ip": (12 * 5 + 10) / 13 / 30,
        "nme_box": (12 * 5 + 10) / 13 / math.sqrt(50 * 40),
        "mse_norm": (12 * 25 + 100) / 26 / 100**2,
    }
    for name, want in expected.items():
        assert compute(name, pred, true)[0] == pytest.approx(want, rel=1e-12), name
    err = np.tile([3.0, 4.0], (15, 1))
    err[10] = [6.0, 8.0]
    ratios = np.delete(err / FACE, [7, 9], axis=0)  # |error| / |true| of the 26 visible coordinates
    assert compute("mape", pred, true)[0] == pytest.approx(100 * ratios.mean(), rel=1e-12)


def test_mape_excludes_true_coordinates_near_zero():
    true = np.array([[[0.5, 10.0], [-0.99, 20.0], [-1.0, 40.0]]])
    pred = true + 2.0
    # x of points 0 and 1 are within 1 px of zero: left out. Left: 2/10, 2/20, 2/1, 2/40
    assert compute("mape", pred, true, schema=Schema("t3", ("a", "b", "c"), (), (0, 1)))[0] == \
        pytest.approx(100 * (0.2 + 0.1 + 2 + 0.05) / 4)
    # crop coordinates (t + 0.5 - 0.5) / 100: |x| < 0.01 is the same cut, values unchanged
    assert compute("mape_norm", pred, true, schema=Schema("t3", ("a", "b", "c"), (), (0, 1)))[0] == \
        pytest.approx(100 * (0.2 + 0.1 + 2 + 0.05) / 4)
    # every coordinate near zero: undefined
    assert np.isnan(compute("mape", np.full((1, 3, 2), 5.0), np.full((1, 3, 2), 0.2),
                            schema=Schema("t3", ("a", "b", "c"), (), (0, 1)))[0])


def test_image_with_all_points_missing_is_nan_and_left_out(two_faces):
    pred, true, boxes = two_faces
    true[1] = np.nan
    m = get_plugins().metrics
    for name in m.names():
        if m.get(name).plugin != "kpbench-metrics" or name == "jitter":  # jitter: NaN on photos (test_video.py)
            continue
        got = compute(name, pred, true, boxes)
        assert np.isnan(got[1]) and not np.isnan(got[0]), name
        assert aggregate(got, m.get(name).aggregate) == pytest.approx(
            aggregate(got[:1], m.get(name).aggregate)), name
    assert aggregate(compute("mae", pred, true, boxes), "mean") == 3.5


def test_left_right_swapped_prediction():
    """Predicting the truth with every left/right pair swapped: the face is symmetric about x = 55,
    so each swapped point is off by the x distance between the pair."""
    true = FACE[None]
    pred = true[:, list(K15.flip_permutation)]
    # pairs (0,1) 30, (2,4) 10, (3,5) 50, (6,8) 10, (7,9) 90, (11,12) 30; nose and lips unmoved
    total = 2 * (30 + 10 + 50 + 10 + 90 + 30)
    assert compute("nme", pred, true)[0] == pytest.approx(total / 15 / 50)
    assert compute("nme_ip", pred, true)[0] == pytest.approx(total / 15 / 30)
    assert compute("mae", pred, true)[0] == pytest.approx(total / 30)  # errors are all in x
    assert compute("fr10", pred, true)[0] == 1.0
    assert compute("auc10", pred, true)[0] == 0.0
    assert compute("nme", true.copy(), true)[0] == 0.0


def test_nme_ip_eye_centers_for_ibug68_and_nan_without_eyes():
    rng = np.random.default_rng(0)
    true = rng.uniform(0, 100, size=(1, 68, 2))
    true[0, 36:42] = [30, 40] + rng.normal(size=(6, 2))  # right eye
    true[0, 36:42] -= true[0, 36:42].mean(axis=0) - [30, 40]  # centered exactly at (30, 40)
    true[0, 42:48] = [80, 40] + rng.normal(size=(6, 2))
    true[0, 42:48] -= true[0, 42:48].mean(axis=0) - [80, 40]  # centered at (80, 40): 50 px apart
    pred = true + [3.0, 4.0]
    assert compute("nme_ip", pred, true, schema=IBUG)[0] == pytest.approx(5 / 50)
    true[0, 40] = np.nan  # an eye point missing: its center is unknown
    assert np.isnan(compute("nme_ip", pred, true, schema=IBUG)[0])
    eyeless = Schema("pair", ("a", "b"), (), (0, 1))
    t2 = np.array([[[0.0, 0.0], [10.0, 0.0]]])
    assert np.isnan(compute("nme_ip", t2 + 1, t2, schema=eyeless)[0])
    assert compute("nme", t2 + [3, 4], t2, schema=eyeless)[0] == pytest.approx(0.5)
    assert np.isnan(compute("nme_box", t2 + 1, t2, schema=eyeless)[0])  # zero-height box: undefined


def faces_with_nme(nmes):
    """One kaggle15 face per value, every point shifted so the inter-ocular NME is that value."""
    nmes = np.asarray(nmes, dtype=float)
    true = np.repeat(FACE[None], len(nmes), axis=0)
    d = 50 * nmes  # inter-ocular distance 50
    return true + np.stack([0.6 * d, 0.8 * d], axis=-1)[:, None, :], true


def test_failure_rate_and_auc_on_chosen_nme():
    pred, true = faces_with_nme([0.0, 0.05, 0.1, 0.15, 0.02])
    true[4] = np.nan
    np.testing.assert_allclose(compute("nme", pred, true), [0, 0.05, 0.1, 0.15, np.nan], atol=1e-12)
    fr, auc = compute("fr10", pred, true), compute("auc10", pred, true)
    np.testing.assert_array_equal(fr, [0, 0, 0, 1, np.nan])
    np.testing.assert_allclose(auc, [1, 0.5, 0, 0, np.nan], atol=1e-12)
    assert aggregate(fr, "mean") == 0.25
    assert aggregate(auc, "mean") == pytest.approx(0.375)


def test_auc_identity_against_numerically_integrated_ced():
    """(1/0.1) * integral_0^0.1 CED(t) dt = mean_i max(0, 1 - e_i / 0.1)."""
    rng = np.random.default_rng(1)
    nmes = rng.uniform(0, 0.16, size=200)
    pred, true = faces_with_nme(nmes)
    true[::17] = np.nan
    per_image = compute("nme", pred, true)
    auc = aggregate(compute("auc10", pred, true), "mean")
    t, frac = stats.ced(per_image, max_error=0.1, steps=20001)
    integral = float(np.sum((frac[1:] + frac[:-1]) / 2 * np.diff(t))) / 0.1
    assert auc == pytest.approx(integral, abs=1e-4)
    assert 0.2 < auc < 0.5
    # and the failure rate is 1 - CED at the threshold
    assert aggregate(compute("fr10", pred, true), "mean") == pytest.approx(1 - frac[-1])


def test_ced():
    t, f = stats.ced(np.array([0.0, 0.05, 0.1, np.nan, 0.2]), max_error=0.1, steps=3)
    np.testing.assert_allclose(t, [0, 0.05, 0.1])
    np.testing.assert_allclose(f, [1 / 4, 2 / 4, 3 / 4])
    t, f = stats.ced(np.array([np.nan]))
    assert t.shape == f.shape == (101,) and np.isnan(f).all()


def test_per_keypoint_error():
    true = np.zeros((2, 3, 2))
    pred = np.array([[[3, 4], [0, 1], [6, 8]], [[0, 0], [0, 3], [0, 0]]], dtype=float)
    true[1, 2] = np.nan  # point 2 annotated only in image 0
    np.testing.assert_allclose(stats.per_keypoint_error(pred, true), [2.5, 2.0, 10.0])
    np.testing.assert_allclose(stats.per_keypoint_error(pred, true, norm=np.array([5.0, 1.0])),
                               [0.5, (0.2 + 3) / 2, 2.0])
    # an image with an undefined normalizer is left out
    np.testing.assert_allclose(stats.per_keypoint_error(pred, true, norm=np.array([5.0, np.nan])),
                               [1.0, 0.2, 2.0])
    true[:, 0] = np.nan
    assert np.isnan(stats.per_keypoint_error(pred, true)[0])


def test_bootstrap_ci_contains_estimate_narrows_and_is_deterministic():
    rng = np.random.default_rng(2)
    small, large = rng.exponential(size=40), rng.exponential(size=4000)
    for how, est in (("mean", np.mean), ("sqrt_mean", lambda v: np.sqrt(np.mean(v)))):
        lo, hi = stats.bootstrap_ci(small, how=how)
        assert lo < est(small) < hi, how
        lo2, hi2 = stats.bootstrap_ci(large, how=how)
        assert lo2 < est(large) < hi2, how
        assert (hi2 - lo2) < (hi - lo) / 4, how  # ~10x narrower with 100x the data
    assert stats.bootstrap_ci(small) == stats.bootstrap_ci(small)
    assert stats.bootstrap_ci(small, seed=1) != stats.bootstrap_ci(small)
    # width close to the normal theory 2 * 1.96 * sd / sqrt(n)
    lo, hi = stats.bootstrap_ci(large, n_boot=2000)
    assert (hi - lo) == pytest.approx(2 * 1.96 * large.std() / math.sqrt(large.size), rel=0.15)
    # NaN dropped; nothing left -> NaN
    assert stats.bootstrap_ci(np.r_[small, np.nan, np.nan]) == stats.bootstrap_ci(small)
    assert all(math.isnan(x) for x in stats.bootstrap_ci([np.nan]))
    assert stats.bootstrap_ci(np.full(10, 3.0)) == (3.0, 3.0)
    with pytest.raises(ValueError):
        stats.bootstrap_ci(small, how="median")


def test_paired_bootstrap():
    rng = np.random.default_rng(3)
    b = rng.exponential(size=300)
    a = b + 0.1 + rng.normal(0, 0.05, size=300)  # a clearly worse than b on the same images
    r = stats.paired_bootstrap(a, b)
    assert r["diff"] == pytest.approx(a.mean() - b.mean())
    assert 0 < r["lo"] < r["diff"] < r["hi"]
    assert r["p"] == pytest.approx(2 / 2001)  # no resample reaches 0: the +1-corrected minimum
    assert stats.paired_bootstrap(b, a)["p"] == r["p"]
    same = stats.paired_bootstrap(b, b.copy())
    assert same["diff"] == same["lo"] == same["hi"] == 0 and same["p"] == 1.0
    # unrelated models of equal quality: no evidence of a difference
    c = rng.exponential(size=300)
    assert stats.paired_bootstrap(c, b[rng.permutation(300)] * (c.mean() / b.mean()))["p"] > 0.5
    # a pair with a NaN on either side is dropped
    a2, b2 = np.r_[a, np.nan, 5.0], np.r_[b, 1.0, np.nan]
    assert stats.paired_bootstrap(a2, b2) == r
    s = stats.paired_bootstrap(a, b, how="sqrt_mean")
    assert s["diff"] == pytest.approx(math.sqrt(a.mean()) - math.sqrt(b.mean()))
    assert s["lo"] < s["diff"] < s["hi"]
    assert math.isnan(stats.paired_bootstrap([np.nan], [1.0])["p"])


def test_wilcoxon_hand_computed():
    # d = 1, -2, 3, 4, -5: ranks of |d| 1..5, W+ = 1 + 3 + 4 = 8, W- = 7; n = 5
    r = stats.wilcoxon_signed_rank([1, 0, 3, 4, 0], [0, 2, 0, 0, 5])
    z = (8 - 5 * 6 / 4) / math.sqrt(5 * 6 * 11 / 24)
    assert r["statistic"] == 7 and r["n"] == 5
    assert r["z"] == pytest.approx(z) and r["p"] == pytest.approx(math.erfc(z / math.sqrt(2)))
    assert r["p"] == pytest.approx(0.8927, abs=1e-4)
    # zero dropped, ties: d = 0, 1, -1, 2, 2, 3 -> n = 5, ranks 1.5, 1.5, 3.5, 3.5, 5
    # W+ = 1.5 + 3.5 + 3.5 + 5 = 13.5, W- = 1.5; var = 5*6*11/24 - (6 + 6)/48 = 13.5
    r = stats.wilcoxon_signed_rank([5, 6, 4, 7, 7, 8, np.nan], [5, 5, 5, 5, 5, 5, 1])
    assert r["statistic"] == 1.5 and r["n"] == 5
    assert r["z"] == pytest.approx(6 / math.sqrt(13.5))
    assert r["p"] == pytest.approx(0.10247, abs=1e-5)


def test_wilcoxon_identical_and_clearly_different():
    rng = np.random.default_rng(4)
    a = rng.normal(size=30)
    assert stats.wilcoxon_signed_rank(a, a.copy()) == {"statistic": 0.0, "z": 0.0, "p": 1.0, "n": 0}
    r = stats.wilcoxon_signed_rank(a + 1 + rng.uniform(0, 0.1, 30), a)  # all 30 differences positive
    assert r["statistic"] == 0 and r["z"] == pytest.approx(232.5 / math.sqrt(30 * 31 * 61 / 24))
    assert r["p"] < 1e-5
    r2 = stats.wilcoxon_signed_rank(a, a + 1 + rng.uniform(0, 0.1, 30))
    assert r2["z"] == pytest.approx(-r["z"]) and r2["p"] == pytest.approx(r["p"])
    assert stats.wilcoxon_signed_rank(a, rng.normal(size=30))["p"] > 0.05


def test_mean_std():
    assert stats.mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)
    m, s = stats.mean_std([1.0, np.nan, 3.0])
    assert m == 2.0 and s == pytest.approx(math.sqrt(2))
    m, s = stats.mean_std([5.0])
    assert m == 5.0 and math.isnan(s)
    assert all(math.isnan(x) for x in stats.mean_std([]))


def test_roc_auc_counts_pairs_ranked_right_and_ties_half():
    from kpbench.formulas import roc_auc

    positive = np.array([True, True, False, False])
    assert roc_auc(np.array([0.9, 0.8, 0.1, 0.2]), positive) == 1.0
    assert roc_auc(np.array([0.1, 0.2, 0.9, 0.8]), positive) == 0.0
    assert roc_auc(np.array([0.5, 0.9, 0.5, 0.1]), positive) == pytest.approx((1 + 1 + 0.5 + 1) / 4)
    assert math.isnan(roc_auc(np.array([0.1, 0.2]), np.array([True, True])))


def test_confidence_check_on_confidences_that_rank_the_errors():
    from kpbench.formulas import confidence_check, point_errors

    true = np.zeros((20, 2, 2))
    true[:, 1, 0] = 10.0  # inter-ocular distance 10 (points 0 and 1)
    err = np.linspace(0.01, 0.4, 40).reshape(20, 2)  # normalized errors; faces 13.. fail (mean > 0.1)
    pred = true.copy()
    pred[..., 1] += err * 10
    errors = point_errors(pred, true, (0, 1))
    np.testing.assert_allclose(errors, err)
    sure = confidence_check(errors, 1 - err)  # the surer the point, the smaller its error
    assert sure["conf_err_low10"] == pytest.approx(err.ravel()[-4:].mean())
    assert sure["conf_err_high10"] == pytest.approx(err.ravel()[:4].mean())
    assert sure["fail_auroc"] == 1.0
    backwards = confidence_check(errors, err)
    assert backwards["conf_err_low10"] < backwards["conf_err_high10"] and backwards["fail_auroc"] == 0.0
    errors[0, 0] = np.nan  # an unannotated point is left out
    assert np.isfinite(list(confidence_check(errors, 1 - err).values())).all()
