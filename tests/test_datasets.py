"""Real-data dataset plugins, on small files the tests write (and on ../shared/data when present)."""

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


def test_folder68_reads_csv_rows_and_groups_people(tmp_path):
    (tmp_path / "training").mkdir()
    names = ["Ann_Lee_01.jpg", "Ann_Lee_12.jpg", "Bob_K_3.jpg"]
    lines = ["," + ",".join(map(str, range(136)))]
    for i, n in enumerate(names):
        _write_image(tmp_path / "training" / n)
        lines.append(n + "," + ",".join(f"{v}" for v in _points(i).ravel()))
    (tmp_path / "keypoints.csv").write_text("\n".join(lines) + "\n")
    ds = get_plugins().datasets.get("folder68").factory(str(tmp_path))
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


@pytest.mark.skipif(not (SHARED / "youtube-faces-68").is_dir(), reason="../shared/data is not present")
def test_shared_youtube_split_is_person_disjoint():
    ds = get_plugins().datasets.get("folder68").factory(str(SHARED / "youtube-faces-68"))
    assert len(ds) == 3462
    parts = split_indices(len(ds), [0.7, 0.15, 0.15], 0, ds.groups)
    people = [{ds.groups[i] for i in part} for part in parts]
    assert not (people[0] & people[1] or people[0] & people[2] or people[1] & people[2])
