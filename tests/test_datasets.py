"""Real-data dataset plugins, on small files the tests write (and on ../shared/data when present)."""

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kpbench import KpbenchError
from kpbench.data import split_indices
from kpbench.plugins import get_plugins

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def _write_image(path: Path, w=40, h=30):
    Image.fromarray(np.full((h, w, 3), 128, np.uint8)).save(path)


def _points(seed):
    return np.random.default_rng(seed).uniform(5, 25, (68, 2)).round(1)


def _folder68(tmp_path, names):
    (tmp_path / "training").mkdir()
    lines = ["," + ",".join(map(str, range(136)))]
    for i, name in enumerate(names):
        _write_image(tmp_path / "training" / name)
        lines.append(name + "," + ",".join(f"{v}" for v in _points(i).ravel()))
    (tmp_path / "keypoints.csv").write_text("\n".join(lines) + "\n")
    return get_plugins().datasets.get("folder68").factory(str(tmp_path)), names


def test_folder68_reads_csv_rows_and_groups_people(tmp_path):
    ds, _ = _folder68(tmp_path, ["Ann_Lee_01.jpg", "Ann_Lee_12.jpg", "Bob_K_3.jpg"])
    assert len(ds) == 3 and ds.schema == "ibug68"
    s = ds[1]
    assert s.image.shape == (30, 40, 3) and s.id == "Ann_Lee_12.jpg" and s.group == "Ann_Lee"
    np.testing.assert_allclose(s.points, _points(1).astype(np.float32))
    assert ds.groups == ["Ann_Lee", "Ann_Lee", "Bob_K"]


def test_folder68_bad_row_names_file_and_line(tmp_path):
    _write_image(tmp_path / "a.jpg")
    (tmp_path / "k.csv").write_text("a.jpg," + ",".join(["1"] * 136) + "\na.jpg,1,2,3\n")
    with pytest.raises(KpbenchError, match=r"k\.csv:2: expected a file name and 136 numbers, got 4"):
        get_plugins().datasets.get("folder68").factory(str(tmp_path / "k.csv"))
    (tmp_path / "k.csv").write_text("b.jpg," + ",".join(["1"] * 136) + "\n")
    with pytest.raises(KpbenchError, match="'b.jpg' not found"):
        get_plugins().datasets.get("folder68").factory(str(tmp_path / "k.csv"))


def test_ibug_reads_pts_and_rejects_malformed(tmp_path):
    pts = _points(7)
    _write_image(tmp_path / "face.jpg")
    body = "\n".join(f"{x} {y}" for x, y in pts)
    (tmp_path / "face.pts").write_text(f"version: 1\nn_points:  68\n{{\n{body}\n}}\n")
    ds = get_plugins().datasets.get("ibug").factory(str(tmp_path))
    assert len(ds) == 1
    np.testing.assert_allclose(ds[0].points, pts.astype(np.float32))
    (tmp_path / "face.pts").write_text("version: 1\n{\n1 2\n3\n}\n")
    with pytest.raises(KpbenchError, match=r"face\.pts:4: expected 'x y'"):
        get_plugins().datasets.get("ibug").factory(str(tmp_path))



def test_datasets_say_how_their_format_numbers_pixels(tmp_path):
    """Points stay as annotated; Sample.origin says where pixel centres are in their numbering
    (1 for .pts files and the YouTube Faces CSV, as the option says otherwise); a bad value is one line."""
    (tmp_path / "csv").mkdir()
    _folder68(tmp_path / "csv", ["Ann_01.jpg"])
    (tmp_path / "pts").mkdir()
    _write_image(tmp_path / "pts" / "face.jpg")
    (tmp_path / "pts" / "face.pts").write_text("version: 1\n{\n" + "\n".join(f"{x} {y}" for x, y in _points(7)) + "\n}\n")
    for kind, where in (("folder68", tmp_path / "csv"), ("ibug", tmp_path / "pts")):
        factory = get_plugins().datasets.get(kind).factory
        assert factory(str(where))[0].origin == 1.0
        zero = factory(str(where), origin=0)[0]
        assert zero.origin == 0.0 and np.isfinite(zero.points).all()
        with pytest.raises(KpbenchError, match=rf"{kind}: origin must be a number of pixels .* got 'one'"):
            factory(str(where), origin="one")

@pytest.mark.skipif(not (SHARED / "youtube-faces-68").is_dir(), reason="../shared/data is not present")
def test_shared_youtube_split_is_person_disjoint():
    ds = get_plugins().datasets.get("folder68").factory(str(SHARED / "youtube-faces-68"))
    assert len(ds) == 3462
    parts = split_indices(len(ds), [0.7, 0.15, 0.15], 0, ds.groups)
    people = [{ds.groups[i] for i in part} for part in parts]
    assert not (people[0] & people[1] or people[0] & people[2] or people[1] & people[2])


def _kaggle_csv(path: Path, n: int = 5, labels: bool = True) -> tuple[np.ndarray, np.ndarray]:
    from kpbench.keypoints import KAGGLE15

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 96, 96), dtype=np.uint8)
    points = rng.uniform(10, 80, (n, 15, 2)).round(2).astype(np.float32)
    points[1, 2:] = np.nan  # like most Kaggle rows: only some points annotated
    cols = [f"{p}_{a}" for p in KAGGLE15.points for a in "xy"]
    rows = []
    for i in range(n):
        vals = ["" if np.isnan(v) else f"{v}" for v in points[i].ravel()] if labels else [str(i + 1)]
        rows.append(",".join(vals + [" ".join(map(str, images[i].ravel()))]))
    header = ",".join(cols + ["Image"]) if labels else "ImageId,Image"
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
    return images, points


def test_kaggle_csv_parses_pixels_points_and_missing_values(tmp_path):
    images, points = _kaggle_csv(tmp_path / "training.csv")
    ds = get_plugins().datasets.get("kaggle").factory(str(tmp_path / "training.csv"))
    assert len(ds) == 5 and ds.schema == "kaggle15"
    np.testing.assert_array_equal(ds[3].image, images[3])
    np.testing.assert_allclose(ds[1].points, points[1])  # NaN where missing
    assert np.isnan(ds[1].points[5]).all()
    # The parse is cached next to the file, and the cache gives the same arrays.
    assert list(tmp_path.glob(".training.csv.kpbench-*.npz"))
    again = get_plugins().datasets.get("kaggle").factory(str(tmp_path / "training.csv"))
    np.testing.assert_array_equal(again[4].image, images[4])
    only = get_plugins().datasets.get("kaggle").factory(str(tmp_path / "training.csv"), complete_only=True)
    assert len(only) == 4


def test_kaggle_test_csv_has_ids_and_no_labels(tmp_path):
    _kaggle_csv(tmp_path / "test.csv", n=2, labels=False)
    ds = get_plugins().datasets.get("kaggle").factory(str(tmp_path / "test.csv"), cache=False)
    assert ds[1].id == "2" and np.isnan(ds[1].points).all()


def test_kaggle_short_image_row_names_the_line(tmp_path):
    (tmp_path / "t.csv").write_text("ImageId,Image\n1," + " ".join(["0"] * 9216) + "\n2,1 2 3\n")
    with pytest.raises(KpbenchError, match=r"t\.csv:3: 'Image' has 3 values, expected 9216"):
        get_plugins().datasets.get("kaggle").factory(str(tmp_path / "t.csv"), cache=False)


@pytest.mark.parametrize("value, message", [
    ("256", "'Image' value '256' is not an integer 0-255"),
    ("1000", "'Image' value '1000' is not an integer 0-255"),
    ("-3", "'Image' value '-3' is not an integer 0-255"),
    ("12.5", "'Image' value '12.5' is not an integer 0-255"),
])
def test_kaggle_bad_pixel_value_names_the_line_and_value(tmp_path, value, message):
    row = ["7"] * 9216
    row[500] = value
    (tmp_path / "t.csv").write_text("ImageId,Image\n1," + " ".join(["0"] * 9216) + "\n\n2," + " ".join(row) + "\n")
    with pytest.raises(KpbenchError, match=rf"t\.csv:4: {re.escape(message)}"):
        get_plugins().datasets.get("kaggle").factory(str(tmp_path / "t.csv"), cache=False)


def test_kaggle_pixels_of_every_width_crlf_and_quotes_parse_exactly(tmp_path):
    """Every value 0-255 at every position width (1-3 digits), CRLF line ends, a quoted Image
    field, a blank line and more rows than one parse chunk (128)."""
    from kpbench_plugins.datasets import parse_kaggle_csv

    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (300, 96, 96), dtype=np.uint8)
    images[0].flat[:256] = np.arange(256)
    lines = ["ImageId,Image"]
    for i, image in enumerate(images):
        text = " ".join(map(str, image.ravel()))
        lines.append(f'{i + 1},"{text}"' if i % 2 else f"{i + 1},{text}")
        if i == 150:
            lines.append("")
    (tmp_path / "test.csv").write_bytes(("\r\n".join(lines) + "\r\n").encode())
    parsed, points, ids = parse_kaggle_csv(tmp_path / "test.csv")
    np.testing.assert_array_equal(parsed, images)
    assert ids[:3] == ["1", "2", "3"] and len(ids) == 300 and np.isnan(points).all()


def test_kaggle_image_must_be_the_last_column(tmp_path):
    (tmp_path / "t.csv").write_text("Image,ImageId\n" + " ".join(["0"] * 9216) + ",1\n")
    with pytest.raises(KpbenchError, match=r"t\.csv: the last column must be 'Image'"):
        get_plugins().datasets.get("kaggle").factory(str(tmp_path / "t.csv"), cache=False)


def test_unreadable_image_names_the_file_or_is_skipped(tmp_path):
    from kpbench.data import prepare

    ds, names = _folder68(tmp_path, [f"P{i}_0{i}.jpg" for i in range(4)])
    (tmp_path / "training" / names[2]).write_bytes(b"not a jpeg")
    detect = get_plugins().detectors.get("gt-box").factory()
    with pytest.raises(KpbenchError, match=names[2] + ": cannot read image"):
        prepare(ds, range(4), detect, 32, "kaggle15")
    data = prepare(ds, range(4), detect, 32, "kaggle15", skip_bad=True)
    assert len(data) == 3 and names[2] not in data.ids
    assert len(data.skipped) == 1 and names[2] in data.skipped[0]


class _Bad:
    schema = "kaggle15"

    def __init__(self, image, points):
        self.image, self.points = image, points

    def __len__(self):
        return 1

    def __getitem__(self, i):
        from kpbench.data import Sample

        return Sample(self.image, self.points, "row 7", self.schema)


@pytest.mark.parametrize("image, points, message", [
    (np.full((20, 20), np.nan, np.float32), np.full((15, 2), 10.0), "row 7: image has 400 NaN"),
    (np.zeros((20, 20), np.float32), np.r_[np.full((14, 2), 10.0), [[500.0, 10.0]]], "row 7: point 14 at \\(500.0"),
    (np.zeros((20, 20), np.float32), np.full((15, 3), 10.0), "row 7: points have shape"),
])
def test_corrupt_samples_give_one_line_errors(image, points, message):
    from kpbench.data import prepare

    detect = get_plugins().detectors.get("none").factory()
    with pytest.raises(KpbenchError, match=message):
        prepare(_Bad(image, points), [0], detect, 16, "kaggle15")
    with pytest.raises(KpbenchError, match="a data split is empty"):  # skipped, and then nothing is left
        prepare(_Bad(image, points), [0], detect, 16, "kaggle15", skip_bad=True)


def test_datasets_combine_for_training_and_keep_their_groups(tmp_path):
    from kpbench.plugins import get_plugins
    from kpbench.components import load_dataset

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    _folder68(tmp_path / "a", ["Ann_01.jpg", "Ann_02.jpg"])
    _folder68(tmp_path / "b", ["Bob_01.jpg"])
    both = load_dataset(get_plugins(), [f"folder68:{tmp_path / 'a'}", f"folder68:{tmp_path / 'b'}"], {})
    assert len(both) == 3 and [both[i].id for i in range(3)] == ["a/Ann_01.jpg", "a/Ann_02.jpg", "b/Bob_01.jpg"]
    assert both.groups == ["0:Ann", "0:Ann", "1:Bob"]
    with pytest.raises(KpbenchError, match="2 option mappings for 3 datasets"):
        load_dataset(get_plugins(), ["synthetic"] * 3, [{}, {}])


def test_a_combined_dataset_splits_as_its_parts_do():
    """Splitting YouTube + HELEN gives each part exactly the split a run on it alone would."""
    from kpbench.data import Concat, split_dataset, split_indices

    class Part:
        schema = "kaggle15"

        def __init__(self, n, groups=None):
            self.n, self.groups = n, groups

        def __len__(self):
            return self.n

    people = [f"p{i // 3}" for i in range(60)]
    a, b = Part(60, people), Part(40)
    both = Concat([a, b], ["a", "b"])
    combined = split_dataset(both, [0.7, 0.15, 0.15], 5)
    for k, (alone_a, alone_b) in enumerate(zip(split_indices(60, [0.7, 0.15, 0.15], 5, people),
                                               split_indices(40, [0.7, 0.15, 0.15], 5))):
        np.testing.assert_array_equal(combined[k], np.concatenate([alone_a, alone_b + 60]))


def test_a_second_input_size_reuses_the_boxes_of_the_kept_samples(tmp_path):
    from kpbench.data import prepare

    ds, names = _folder68(tmp_path, [f"P{i}_0{i}.jpg" for i in range(4)])
    (tmp_path / "training" / names[1]).write_bytes(b"not a jpeg")
    detect = get_plugins().detectors.get("gt-box").factory()
    small = prepare(ds, range(4), detect, 16, "kaggle15", skip_bad=True)
    large = prepare(ds, range(4), None, 32, "kaggle15", like=small, skip_bad=True)
    assert large.ids == small.ids and len(large) == 3
    np.testing.assert_array_equal(large.boxes, small.boxes)
    np.testing.assert_allclose(large.targets, small.targets, atol=1e-6)


def test_ibug_splits_keep_each_photograph_together(tmp_path):
    """Faces cut from one photo (``NAME_K``) and re-uploads of one photograph (rescaled and
    recompressed) share a group; different photos do not."""
    from PIL import Image

    from kpbench_plugins.datasets import photo_groups

    rng = np.random.default_rng(0)
    base = (rng.random((60, 80)) * 255).astype(np.uint8)
    base = np.asarray(Image.fromarray(base).resize((160, 120), Image.BILINEAR))  # smooth structure
    other = np.asarray(Image.fromarray((rng.random((60, 80)) * 255).astype(np.uint8)).resize((160, 120)))
    Image.fromarray(base).save(tmp_path / "image_0001.jpg", quality=95)
    Image.fromarray(base).resize((120, 90)).save(tmp_path / "image_0002.jpg", quality=60)  # a re-upload
    Image.fromarray(other).save(tmp_path / "image_0003.jpg")
    Image.fromarray(other[:, ::-1]).save(tmp_path / "4242_1.jpg")
    Image.fromarray(np.ascontiguousarray(other[::-1])).save(tmp_path / "4242_2.jpg")  # another face of photo 4242
    files = sorted(tmp_path.glob("*.jpg"))
    groups = dict(zip((f.stem for f in files), photo_groups(files)))
    assert groups["image_0001"] == groups["image_0002"]
    assert groups["image_0003"] != groups["image_0001"]
    assert groups["4242_1"] == groups["4242_2"] != groups["image_0003"]
