"""The ``mtcnn`` detector plugin: helpers, face matching, MTCNN output conversion, and (when the
shared data is present) real detections on YouTube Faces frames. No network: facenet-pytorch
ships MTCNN's weights inside the package."""

import csv
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("facenet_pytorch")

from kpbench_plugins import mtcnn  # noqa: E402
from kpbench.faces import match_face  # noqa: E402
from kpbench.geometry import iou, points_rect, square_box  # noqa: E402
from kpbench.geometry import rgb_uint8 as to_rgb_uint8  # noqa: E402
from kpbench_plugins.mtcnn import MTCNNDetector, as_float_array  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NAN = float("nan")


def face(raw, score=0.99):
    return {"box": square_box(raw, 0.0), "raw_box": tuple(float(v) for v in raw), "score": score, "landmarks": None}


def rect_points(x1, y1, x2, y2, n=10):
    """Points whose edge-coordinate bounding box is exactly (x1, y1, x2, y2)."""
    t = np.linspace(0, 1, n)
    xs, ys = x1 + (x2 - x1) * t - 0.5, y1 + (y2 - y1) * t - 0.5
    return np.stack([xs, ys], axis=1).astype(np.float32)


# ---------------------------------------------------------------- plain helpers


def test_square_box_margin_math():
    # w = 40, h = 80: side from the longer side, centered on the raw box's center
    assert square_box((10, 20, 50, 100), 0.0) == pytest.approx((-10, 20, 80))
    assert square_box((10, 20, 50, 100), 0.25) == pytest.approx((30 - 60, 60 - 60, 120))
    # shift moves the center by shift * the longer side (+y down); scale scales the face box first
    assert square_box((10, 20, 50, 100), 0.25, shift_y=0.1) == pytest.approx((-30, 8, 120))
    assert square_box((10, 20, 50, 100), 0.25, shift_x=-0.1) == pytest.approx((-38, 0, 120))
    assert square_box((10, 20, 50, 100), 0.25, scale=0.5) == pytest.approx((0, 30, 60))
    # a wide box: the side follows the width
    x0, y0, side = square_box((0, 0, 100, 50), 0.1)
    assert side == pytest.approx(120) and (x0 + side / 2, y0 + side / 2) == pytest.approx((50, 25))


def test_detector_box_uses_its_margin_and_shift(monkeypatch):
    det = MTCNNDetector(margin=0.2, scale=1.0, shift_x=0.0, shift_y=0.0)
    monkeypatch.setattr(det, "_mtcnn", lambda: FakeNet([[10, 20, 50, 100]], [0.99]))
    (f,) = det.detect_all(np.zeros((200, 200, 3), np.uint8))
    assert f["box"] == pytest.approx((30 - 56, 60 - 56, 112))
    assert f["raw_box"] == pytest.approx((10, 20, 50, 100))


def test_points_rect_and_iou():
    pts = np.array([[10, 20], [30, 5], [NAN, NAN], [NAN, 3.0]], np.float32)
    assert points_rect(pts) == pytest.approx((10.5, 5.5, 30.5, 20.5))
    assert points_rect(np.full((5, 2), NAN)) is None
    assert iou((0, 0, 10, 10), (0, 0, 10, 10)) == pytest.approx(1.0)
    assert iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert iou((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0
    assert iou((0, 0, 0, 0), (0, 0, 0, 0)) == 0.0


def test_as_float_array_none_object_and_float():
    assert as_float_array(None, (4,)).shape == (0, 4)
    assert as_float_array(np.array([None], dtype=object)).shape == (0,)
    assert as_float_array(np.array([None, None], dtype=object), (5, 2)).shape == (0, 5, 2)
    boxes = np.array([[1, 2, 3, 4], [5, 6, 7, 8]], np.float32)
    # what facenet-pytorch builds with numpy 2: np.array([boxes], dtype=object)[0]
    wrapped = np.array([boxes], dtype=object)[0]
    assert wrapped.dtype == object
    out = as_float_array(wrapped, (4,))
    assert out.dtype == np.float64 and out.shape == (2, 4) and np.array_equal(out, boxes)
    ragged = np.empty(2, dtype=object)
    ragged[0], ragged[1] = boxes[0], boxes[1]
    assert np.array_equal(as_float_array(ragged, (4,)), boxes)
    assert np.array_equal(as_float_array(boxes, (4,)), boxes)
    assert np.array_equal(as_float_array(np.array([0.9, 0.8], dtype=object)), [0.9, 0.8])
    assert np.array_equal(as_float_array([0.5]), [0.5])
    marks = np.arange(20, dtype=np.float32).reshape(2, 5, 2)
    assert as_float_array(np.array([marks], dtype=object)[0], (5, 2)).shape == (2, 5, 2)
    assert as_float_array(np.zeros((0, 4)), (4,)).shape == (0, 4)
    with pytest.raises(ValueError):
        as_float_array(np.zeros(7), (4,))


def test_to_rgb_uint8():
    gray = np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)
    rgb = to_rgb_uint8(gray)
    assert rgb.shape == (3, 4, 3) and rgb.dtype == np.uint8
    assert rgb[0, 0].tolist() == [0, 0, 0] and rgb[-1, -1].tolist() == [255, 255, 255]
    assert np.array_equal(to_rgb_uint8(np.full((2, 2, 4), 7, np.uint8)), np.full((2, 2, 3), 7, np.uint8))
    assert to_rgb_uint8(np.zeros((5, 6, 1), np.uint8)).shape == (5, 6, 3)
    assert to_rgb_uint8(np.full((2, 2, 3), 2.0)).max() == 255  # out-of-range floats are clipped


# ---------------------------------------------------------------- matching


def test_match_face_chooses_the_annotated_face():
    left, right, big = face((0, 0, 40, 40), 0.999), face((100, 10, 150, 60), 0.95), face((90, 0, 170, 80), 0.91)
    faces = [left, right, big]
    assert match_face(faces, rect_points(102, 12, 148, 58), 0.3) is right
    assert match_face(faces, rect_points(92, 2, 168, 78), 0.3) is big
    assert match_face(faces, rect_points(2, 2, 38, 38), 0.3) is left
    # order of the list does not matter, only the IoU
    assert match_face(faces[::-1], rect_points(102, 12, 148, 58), 0.3) is right


def test_match_face_misses_and_fallbacks():
    a, b = face((0, 0, 40, 40), 0.99), face((100, 100, 140, 140), 0.95)
    far = rect_points(300, 300, 340, 340)
    assert match_face([], far, 0.3) is None
    assert match_face([a, b], far, 0.3) is None  # IoU 0 < min_iou
    # IoU 1/3 with a: a hit at min_iou 0.3, a miss at 0.34
    pts = rect_points(20, 0, 60, 40)
    assert iou(a["raw_box"], points_rect(pts)) == pytest.approx(1 / 3)
    assert match_face([a, b], pts, 0.3) is a
    assert match_face([a, b], pts, 0.34) is None
    # no visible point: the best-scoring (first) face
    assert match_face([a, b], np.full((68, 2), NAN, np.float32), 0.3) is a
    # one visible point (no area): the face that contains it
    one = np.full((68, 2), NAN, np.float32)
    one[30] = (120, 120)
    assert match_face([a, b], one, 0.3) is b
    one[30] = (500, 500)
    assert match_face([a, b], one, 0.3) is None


class FakeNet:
    """Stands in for facenet_pytorch.MTCNN: returns what its detect() returns with numpy 2."""

    def __init__(self, boxes, probs, marks=None):
        self.boxes, self.probs, self.marks = boxes, probs, marks
        self.seen = None

    def detect(self, img, landmarks=False):
        self.seen = img
        if not self.boxes:
            return None, np.array([None], dtype=object), None
        boxes = np.array([np.asarray(self.boxes, np.float32)], dtype=object)[0]
        probs = np.array([np.asarray(self.probs, np.float32)], dtype=object)[0]
        marks = self.marks if self.marks is not None else np.zeros((len(self.boxes), 5, 2), np.float32)
        return boxes, probs, np.array([marks], dtype=object)[0]


def test_detect_all_converts_sorts_and_filters(monkeypatch):
    det = MTCNNDetector(min_score=0.9)
    net = FakeNet([[0, 0, 40, 40], [100, 10, 150, 60], [50, 50, 60, 60]], [0.95, 0.999, 0.5])
    monkeypatch.setattr(det, "_mtcnn", lambda: net)
    faces = det.detect_all(np.full((200, 200), 0.5, np.float32))
    assert net.seen.shape == (200, 200, 3) and net.seen.dtype == np.uint8
    assert [f["score"] for f in faces] == pytest.approx([0.999, 0.95])  # sorted, 0.5 dropped
    assert faces[0]["raw_box"] == pytest.approx((100, 10, 150, 60))
    assert faces[0]["landmarks"].shape == (5, 2)
    assert isinstance(faces[0]["score"], float) and all(isinstance(v, float) for v in faces[0]["box"])
    box = det(np.zeros((200, 200, 3), np.uint8), rect_points(1, 1, 39, 39))
    assert box == pytest.approx(faces[1]["box"])
    assert det(np.zeros((200, 200, 3), np.uint8), rect_points(300, 300, 340, 340)) is None


def test_detect_all_no_face_from_fake(monkeypatch):
    det = MTCNNDetector()
    monkeypatch.setattr(det, "_mtcnn", lambda: FakeNet([], []))
    assert det.detect_all(np.zeros((100, 100, 3), np.uint8)) == []
    assert det(np.zeros((100, 100, 3), np.uint8), rect_points(10, 10, 50, 50)) is None


# ---------------------------------------------------------------- real MTCNN (weights in the package)


@pytest.fixture(scope="module")
def real_detector():
    return MTCNNDetector(threads=1)


def test_blank_images_have_no_face(real_detector):
    import torch

    before = torch.get_num_threads()
    assert real_detector.detect_all(np.zeros((120, 160, 3), np.uint8)) == []
    assert real_detector.detect_all(np.full((96, 96), 0.5, np.float32)) == []
    assert real_detector(np.zeros((120, 160), np.uint8), rect_points(30, 30, 90, 90)) is None
    assert real_detector(np.zeros((120, 160), np.uint8), np.full((68, 2), NAN, np.float32)) is None
    assert torch.get_num_threads() == before  # the threads option did not leak
    assert real_detector._net is not None  # built lazily, then kept


def test_image_smaller_than_min_face_size(real_detector):
    assert real_detector.detect_all(np.zeros((10, 30, 3), np.uint8)) == []


def test_registered_as_a_detector():
    from kpbench.plugins import get_plugins

    spec = get_plugins(("kpbench_plugins.mtcnn",)).detectors.get("mtcnn")
    det = spec.factory(margin=0.1, min_iou=0.5)
    assert isinstance(det, MTCNNDetector) and det.margin == 0.1 and det.min_iou == 0.5
    assert det._net is None  # nothing built until the first detection
    assert spec.plugin  # the registry filled in the plugin name


def _youtube_dir():
    for d in (ROOT.parent / "shared" / "data", Path("/work/shared/data")):
        if (d / "youtube-faces-68" / "training_frames_keypoints.csv").is_file():
            return d / "youtube-faces-68"
    return None


@pytest.mark.skipif(_youtube_dir() is None, reason="shared data (../shared/data) not present")
def test_real_faces_match_their_annotation(real_detector):
    from PIL import Image

    root = _youtube_dir()
    with (root / "training_frames_keypoints.csv").open(newline="") as fh:
        rows = [r for r in csv.reader(fh) if r and r[0].lower().endswith(".jpg")][:3]
    assert len(rows) == 3
    for row in rows:
        with Image.open(root / "training" / row[0]) as im:
            image = np.asarray(im.convert("RGB"))
        points = np.asarray(row[1:], dtype=np.float32).reshape(68, 2)
        faces = real_detector.detect_all(image)
        assert faces, row[0]
        box = real_detector(image, points)
        assert box is not None, row[0]
        best = match_face(faces, points, 0.5)
        assert best is not None and iou(best["raw_box"], points_rect(points)) > 0.5, row[0]
        assert box == best["box"]
        x0, y0, side = box
        # the crop is close to the gt-box (margin 0.15) crop
        lo, hi = np.nanmin(points, 0) + 0.5, np.nanmax(points, 0) + 0.5
        gt_side = float((hi - lo).max() * 1.3)
        assert 0.75 < side / gt_side < 1.3, row[0]
        center_offset = np.hypot(x0 + side / 2 - (lo[0] + hi[0]) / 2, y0 + side / 2 - (lo[1] + hi[1]) / 2)
        assert center_offset < 0.15 * gt_side, row[0]
        assert faces[0]["landmarks"].shape == (5, 2)
        # the same face is found in the grayscale float image kpbench.data.prepare works on
        gray = image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32) / 255.0
        assert real_detector(gray, points) is not None, row[0]


def test_module_docs_name_the_defaults():
    det = MTCNNDetector()
    assert (det.margin, det.min_iou, det.min_score) == (0.15, 0.2, 0.9)
    assert (det.scale, det.shift_x, det.shift_y) == tuple(mtcnn.CALIBRATION[k] for k in ("scale", "shift_x", "shift_y"))
    assert mtcnn.MTCNNDetector.__doc__ and "gt-box" in mtcnn.MTCNNDetector.__doc__
    assert "kpbench calibrate" in mtcnn.MTCNNDetector.__doc__
