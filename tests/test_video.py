"""Video: `kpbench predict` on a clip (one CSV row per frame, strict JSON, a playable annotated .mp4),
the `jitter` metric by hand, and the One-Euro filter."""

import csv
import json
import math
import sys

import numpy as np
import pytest

from conftest import run_cli

# ---- the One-Euro filter ----------------------------------------------------------------------


def _filtered(signal, fps=30.0, **options):
    from kpbench.video import OneEuro

    f = OneEuro(**options)
    return np.array([f(x, k / fps) for k, x in enumerate(signal)])


def test_one_euro_keeps_a_constant_follows_a_step_with_lag_and_reduces_noise():
    from kpbench.video import SMOOTH, OneEuro

    assert np.array_equal(_filtered(np.full(40, 5.0), **SMOOTH), np.full(40, 5.0))

    # beta 0 is a plain low-pass: with cutoff 1 Hz and dt = 1 / (2 pi) s, alpha = 1 / (1 + 1) = 0.5.
    f = OneEuro(min_cutoff=1.0, beta=0.0)
    assert f(0.0, 0.0) == 0.0 and f(1.0, 1 / (2 * math.pi)) == pytest.approx(0.5)

    step = _filtered(np.r_[np.zeros(30), np.ones(60)], **SMOOTH)
    after = step[30:]
    assert np.all(step[:30] == 0) and 0 < after[0] < 1  # lags behind the step ...
    assert np.all(np.diff(after) >= 0) and after[15] > 0.95  # ... and catches up within half a second
    # a larger beta follows faster (less lag), a smaller one slower
    assert _filtered(np.r_[0, np.ones(5)], beta=50.0)[1] > _filtered(np.r_[0, np.ones(5)], beta=1.0)[1]

    noise = np.random.default_rng(0).normal(0, 0.01, 300)
    smooth = _filtered(noise, **SMOOTH)
    assert smooth[30:].std() < 0.5 * noise[30:].std()


def test_shape_filter_lets_motion_and_zoom_through_and_smooths_the_shape():
    from kpbench.video import SMOOTH, ShapeFilter

    rng = np.random.default_rng(0)
    shape = rng.normal(0, 1, (15, 2))
    # a face that moves fast and zooms, its shape unchanged: the points come out as they went in
    moving = [shape * (20 + k) + [5.0 * k, -3.0 * k] for k in range(30)]
    f = ShapeFilter(SMOOTH)
    assert np.allclose(np.stack([f(p, k / 30) for k, p in enumerate(moving)]), moving)
    # a still face whose shape flickers: the flicker shrinks, the face stays where it is
    noisy = [shape * 20 + rng.normal(0, 0.5, shape.shape) for _ in range(120)]
    f = ShapeFilter(SMOOTH)
    out = np.stack([f(p, k / 30) for k, p in enumerate(noisy)])
    step_in, step_out = np.abs(np.diff(noisy, axis=0)).mean(), np.abs(np.diff(out, axis=0)).mean()
    assert step_out < 0.5 * step_in
    assert np.allclose(out.mean(axis=(0, 1)), np.mean(noisy, axis=(0, 1)), atol=0.05)
    # a frame with a missing point passes as it is, and the next frames are filtered again
    gap = np.array(noisy[0])
    gap[3] = np.nan
    assert np.array_equal(f(gap, 5.0), gap, equal_nan=True) and np.isfinite(f(noisy[1], 5.1)).all()


def test_smoothing_options_are_checked():
    from kpbench.errors import KpbenchError
    from kpbench.video import SMOOTH, smoothing

    assert smoothing({}) == SMOOTH and smoothing({"beta": 0})["beta"] == 0.0
    with pytest.raises(KpbenchError, match="unknown option 'cutoff'"):
        smoothing({"cutoff": 1})
    with pytest.raises(KpbenchError, match="min_cutoff: -1 is not a positive number"):
        smoothing({"min_cutoff": -1})


def test_face_tracks_keep_numbers_of_faces_that_stay():
    from kpbench.video import FaceTracks

    t = FaceTracks()
    assert t.follow(np.array([[0, 0, 10], [100, 0, 10.]])) == [0, 1]
    assert t.follow(np.array([[101, 2, 10], [3, 0, 10.]])) == [1, 0]  # moved a little, order swapped
    assert t.follow(np.array([[50, 50, 10.]])) == [2]  # far from both: a new face
    assert t.follow(np.zeros((0, 3))) == []


def test_training_crops_record_where_they_sat_around_their_points():
    import torch

    from kpbench.components import CropConvention
    from kpbench.data import Prepared

    square = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1.]])  # spread sqrt(2)
    points = np.stack([square * 10 + 100, square * 10 + 100, square * 20 + 50, square * 5, square * 10])
    points[4, 0] = np.nan  # a point not annotated: left out
    boxes = np.array([[90, 80, 40.], [94, 84, 40.], [50, 30, 80.], [0, 0, 1.], [0, 0, 1.]])
    missed = np.array([False, False, False, True, False])  # a detector miss: left out
    prepared = Prepared(torch.zeros(5, 1, 4, 4), torch.zeros(5, 4, 2), points, boxes, [str(i) for i in range(5)],
                        missed=missed)
    dx, dy, side = prepared.crop_from_points()
    r2 = math.sqrt(2)
    # (crop centre - centroid) / spread and side / spread of the three kept faces: (10, 0) / 10r2, (14, 4) / 10r2,
    # (40, 20) / 20r2 and 40 / 10r2 twice, 80 / 20r2: their medians
    np.testing.assert_allclose([dx, dy, side], [14 / (10 * r2), 4 / (10 * r2), 4 / r2], atol=1e-4)

    convention = CropConvention("gt-box", {"margin": 0.15}, 0.15, False, (dx, dy, side))
    assert CropConvention.from_mapping(json.loads(json.dumps(convention.to_mapping()))) == convention
    older = {k: v for k, v in convention.to_mapping().items() if k != "crop_from_points"}
    assert CropConvention.from_mapping(older).crop_from_points is None


def test_a_track_places_its_crop_between_the_detector_s_place_and_the_training_crops():
    from types import SimpleNamespace

    from kpbench.predictor import PRIOR_WEIGHT, FaceTracker

    square = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1.]])
    frame = np.zeros((200, 200, 3), np.uint8)
    seen = []

    def predict_arrays(image, found=None):  # the face's points stay at (100, 100), spread 10 * sqrt(2)
        found = [{"box": (70.0, 80.0, 60.0), "score": 0.9}] if found is None else found
        seen.append(found[0]["box"])
        return found, np.array([f["box"] for f in found]), (square * 10 + 100)[None], None

    prior = (0.0, -0.5, 4.0)
    predictor = SimpleNamespace(detector=SimpleNamespace(), predict_arrays=predict_arrays,
                                trained=SimpleNamespace(convention=SimpleNamespace(crop_from_points=prior)))
    track = FaceTracker(predictor)
    track(frame), track(frame)
    spread = 10 * math.sqrt(2)
    detected = np.array([0.0, 10.0, 60.0]) / spread  # the detector's box: centre (100, 110), side 60
    want = (1 - PRIOR_WEIGHT) * detected + PRIOR_WEIGHT * np.array(prior)
    side = want[2] * spread
    centre = 100 + want[:2] * spread
    np.testing.assert_allclose(seen[1], [centre[0] - side / 2, centre[1] - side / 2, side], atol=1e-9)
    predictor.trained.convention.crop_from_points = None  # a model whose run did not record it
    seen.clear()
    track = FaceTracker(predictor)
    track(frame), track(frame)
    np.testing.assert_allclose(seen[1], seen[0], atol=1e-9)  # the detector's place, kept


# ---- the jitter metric, by hand ---------------------------------------------------------------


def test_jitter_is_the_frame_to_frame_change_of_the_error_by_hand():
    from kpbench.evaluate import MetricContext
    from kpbench.keypoints import KAGGLE15
    from kpbench_plugins.datasets import clip_frame
    from kpbench_plugins.metrics import jitter

    assert clip_frame("Luis_Fonsi_21.jpg") == ("Luis_Fonsi_2", 1) and clip_frame("x.png") == ("x", 0)
    a, b = KAGGLE15.norm_pair  # the outer eye corners
    K = KAGGLE15.num_points  # 15

    def face(iod, shift):
        """True points: all at `shift`, but the two eye corners `iod` pixels apart."""
        p = np.zeros((K, 2)) + shift
        p[a, 0] -= iod / 2
        p[b, 0] += iod / 2
        return p

    # clip "a", frames 0, 1, 2 (the face moves 50 px a frame: true motion must not count), clip "b"
    # with one frame, and a photo; given in shuffled order.
    t0, t1, t2 = face(10, 0), face(20, 50), face(20, 100)
    e0 = np.tile([1.0, 0.0], (K, 1))  # error pred - true of every point
    e1 = np.tile([1.0, 3.0], (K, 1))  # changed by (0, 3): 3 px for every point
    e2 = e1.copy()
    e2[:10] += [3.0, 4.0]  # 10 points change by (3, 4) = 5 px, the other 5 by nothing
    t1_missing = t1.copy()
    t1_missing[7] = np.nan  # a point missing in a1's annotation: left out of its pairs
    true = np.stack([t2, t0, face(10, 0), t1_missing, face(10, 0)])
    pred = np.stack([t2 + e2, t0 + e0, face(10, 0) + 9, t1 + e1, face(10, 0) + 1])
    frames = [("a", 2), ("a", 0), ("b", 0), ("a", 1), None]
    ctx = MetricContext(schema=KAGGLE15, boxes=np.zeros((5, 3)), frames=frames)
    got = jitter(pred, true, ctx)
    # a2 after a1: mean change over the 14 points visible in both = (9 * 5 + 5 * 0) / 14 (point 7 is
    #   one of the 10 that moved), divided by the mean inter-ocular distance (20 + 20) / 2 = 20
    # a0, b0 (first frames) and the photo: NaN
    # a1 after a0: every point changed by 3 px (14 visible), divided by (10 + 20) / 2 = 15: 0.2
    want = [(9 * 5 / 14) / 20, np.nan, np.nan, 3 / 15, np.nan]
    np.testing.assert_allclose(got, want, rtol=1e-12)
    # without frames (photos) it is undefined everywhere
    assert np.isnan(jitter(pred, true, MetricContext(schema=KAGGLE15, boxes=np.zeros((5, 3))))).all()


# ---- kpbench predict on a video ---------------------------------------------------------------


def _write_clip(path, frames, fps=10):
    import av

    with av.open(str(path), "w", format="mp4") as c:
        s = c.add_stream("mpeg4", rate=fps)
        s.width, s.height, s.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        for f in frames:
            for packet in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(packet)
        for packet in s.encode():
            c.mux(packet)


def _count_frames(path) -> int:
    import av

    with av.open(str(path)) as c:
        return sum(1 for _ in c.decode(video=0))


def _strict_json(path):
    def refuse(name):
        raise ValueError(f"{path}: {name} is not strict JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_predict_on_a_video_writes_a_row_per_frame_and_a_playable_video(tmp_path, tiny_config):
    pytest.importorskip("av")
    from PIL import Image

    from kpbench_plugins.synthetic import render

    run = tmp_path / "run"
    r = run_cli("run", "-c", tiny_config, "--out", run)
    assert r.returncode == 0, r.stderr
    n = 8  # synthetic faces as the frames of a clip, the face filling each frame (detector none)
    frames = [np.repeat(render(7, i, 48)[0][:, :, None], 3, axis=2) for i in range(n)]
    inputs = tmp_path / "in"
    inputs.mkdir()
    _write_clip(inputs / "clip.mp4", frames)
    Image.fromarray(frames[0]).save(inputs / "photo.png")  # photos and videos in one call
    (inputs / "broken.mp4").write_bytes(b"not a video")
    out = tmp_path / "out"
    r = run_cli("predict", inputs, "--model", run, "--detector", "none", "--out", out, "--overlay")  # smoothed by default
    assert r.returncode == 0, r.stderr
    assert "1 photo(s) (0 without a face), 1 video(s), 1 unreadable" in r.stdout and "broken.mp4" in r.stderr

    with (out / "clip.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(row["frame"]) for row in rows] == list(range(n))  # one face a frame: one row a frame
    assert {row["face"] for row in rows} == {"0"} and float(rows[1]["time"]) == pytest.approx(0.1)
    assert float(rows[0]["box_side"]) == 48 and "left_eye_center_x" in rows[0]
    doc = _strict_json(out / "clip.json")
    assert len(doc["frames"]) == n and doc["smooth"]["min_cutoff"] == 1.0
    assert doc["frames"][3]["faces"][0]["keypoints"]["nose_tip"] == [float(rows[3]["nose_tip_x"]),
                                                                      float(rows[3]["nose_tip_y"])]
    _a_video_cut_short_is_said(run, inputs / "clip.mp4", tmp_path / "cut", n)
    face = doc["frames"][3]["faces"][0]  # the confidences, as in the JSON (empty cells for a model without them)
    assert rows[3]["nose_tip_confidence"] == ("" if face["confidence"] is None else str(face["confidence"]["nose_tip"]))
    assert rows[3]["face_confidence"] == ("" if face["face_confidence"] is None else str(face["face_confidence"]))
    assert _count_frames(out / "clip.mp4") == n  # the annotated video decodes back, every frame
    summary = _strict_json(out / "predictions.json")
    assert [v["frames"] for v in summary["videos"]] == [n] and len(summary["images"]) == 1
    assert summary["detector"] == "none"  # the detector's name, as the command line gave it
    r = run_cli("predict", inputs / "clip.mp4", "--model", run, "--detector", "none", "--out", tmp_path / "o2",
                "--no-smooth", "--no-overlay")
    assert r.returncode == 0, r.stderr
    plain = _strict_json(tmp_path / "o2" / "clip.json")
    assert plain["smooth"] is None and len(plain["frames"]) == n
    assert sorted(p.name for p in (tmp_path / "o2").iterdir()) == ["clip.csv", "clip.json", "predictions.json"]
    assert summary["errors"][0]["video"].endswith("broken.mp4")
    assert (out / "photo.json").is_file() and (out / "photo.jpg").is_file()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary file left behind
    assert not (out / "broken.csv").exists()


def test_predict_without_pyav_is_one_line_naming_the_extra(monkeypatch):
    from kpbench.errors import KpbenchError
    from kpbench.video import require_av

    monkeypatch.setitem(sys.modules, "av", None)  # import av now fails
    with pytest.raises(KpbenchError, match=r"kpbench\[video\]"):
        require_av()


def test_a_frame_without_a_face_is_drawn_as_it_is():
    from kpbench.overlay import draw_faces

    frame = np.full((24, 32, 3), 90, np.uint8)
    drawn = np.asarray(draw_faces(frame, np.zeros((0, 15, 2)), np.zeros((0, 3), np.float32)))
    np.testing.assert_array_equal(drawn, frame)


def _a_video_cut_short_is_said(run, clip, out, n):
    """Fewer frames decode than the header declares (FFmpeg skips what it cannot decode): a warning
    names the file and both counts."""
    from unittest import mock

    import kpbench
    import kpbench.video as kv
    from kpbench.log import log
    from kpbench.photos import predict_video

    real = kv.frames

    def three(path, container, stream):
        for i, item in zip(range(3), real(path, container, stream)):
            yield item

    predictor = kpbench.Predictor.from_run(run, detector="none", runtime="torch")
    with mock.patch.object(kv, "frames", three), mock.patch.object(log, "warning") as warned:
        summary = predict_video(predictor, clip, out, "clip", overlays=False)
    assert summary["frames"] == 3
    assert any(f"3 of the {n} frames" in str(c.args[0]) and str(clip) in str(c.args[0]) for c in warned.call_args_list)


# ---- frames as the predictor takes them ---------------------------------------------------------


def _colour_scene(h=72, w=96):
    """Smooth colour gradients with a few blobs: what a face in a frame looks like to a codec."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    rgb = np.stack([60 + 120 * x / w, 50 + 140 * y / h, 180 - 100 * (x + y) / (w + h)], axis=-1)
    for cy, cx, r, colour in ((20, 30, 9, (200, 140, 120)), (50, 70, 12, (70, 90, 60))):
        rgb[(y - cy) ** 2 + (x - cx) ** 2 < r * r] = colour
    return rgb.clip(0, 255).astype(np.uint8)


@pytest.mark.parametrize("pix_fmt", ["yuv420p", "yuvj420p", "nv12", "rgb24"])
def test_a_frame_s_gray_from_its_luma_plane_is_the_gray_of_its_rgb(pix_fmt):
    """A decoded frame's gray read from its luma plane (limited or full range), or from its RGB where
    it has none, is the gray of the RGB pixels it gives, within a grey level or two; the crop cut
    from it is the crop cut from its RGB."""
    av = pytest.importorskip("av")
    from kpbench.data import crop_from_image, to_gray
    from kpbench.video import Frame

    frame = Frame(av.VideoFrame.from_ndarray(_colour_scene(), format="rgb24").reformat(format=pix_fmt))
    rgb = np.asarray(frame)
    assert frame.shape == rgb.shape == (72, 96, 3) and rgb.dtype == np.uint8
    assert np.asarray(frame) is rgb and not np.shares_memory(np.array(frame), rgb)  # converted once; copied when asked
    gray, want = frame.gray(10, 60, 20, 90), to_gray(rgb[10:60, 20:90])
    assert gray.shape == want.shape == (50, 70) and gray.dtype == np.float32
    assert np.abs(gray - want).mean() < 1.5 / 255 and np.abs(gray - want).max() < 5 / 255
    if pix_fmt == "rgb24":  # no luma plane: the gray of its RGB itself
        np.testing.assert_array_equal(gray, want)
    box = (48.0, 36.0, 40.0, 15.0)  # centre, side and angle
    np.testing.assert_allclose(crop_from_image(frame, box, 32), crop_from_image(rgb, box, 32), atol=5 / 255)


def test_read_ahead_keeps_order_raises_in_place_and_stops_when_closed():
    import threading
    import time

    from kpbench.video import read_ahead

    assert list(read_ahead(iter(range(50)), 2)) == list(range(50))

    def failing():
        yield from (1, 2)
        raise ValueError("frame 2 is broken")

    got = []
    with pytest.raises(ValueError, match="frame 2 is broken"):
        for item in read_ahead(failing(), 2):
            got.append(item)
    assert got == [1, 2]  # what came before the error, then the error where it happened

    made = []

    def counted():
        for i in range(1000):
            made.append(i)
            yield i

    ahead = read_ahead(counted(), 2)
    assert [next(ahead) for _ in range(3)] == [0, 1, 2]
    time.sleep(0.2)
    assert len(made) <= 3 + 2 + 1  # no more than `ahead` waiting (and one in hand)
    ahead.close()
    assert not [t for t in threading.enumerate() if t.name == "kpbench-read-ahead"]
    assert len(made) < 10
