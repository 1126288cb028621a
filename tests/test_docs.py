"""The documentation as a reader meets it: every Python block of README.md, docs/plugins.md and
docs/python-api.md runs (those that need the shipped model where it is in the checkout), the
README is a short front door that links to docs pages that exist, the links between pages
resolve, and the pages speak of the software and its measurements only."""

import os
import re
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import ROOT, readme_plugin_example, run_cli

DOCS = ROOT / "docs"
README = ROOT / "README.md"
PAGES = [README, *sorted(DOCS.glob("*.md"))]
SHIPPED = ROOT / "kpbench" / "shipped" / "wild"
RUN_PAGES = [README, DOCS / "plugins.md", DOCS / "python-api.md"]  # whose Python blocks must run


def without_code(text: str) -> str:
    """The text with fenced code blocks blanked out (their lines kept, so that headings in code,
    such as a shell comment, are not taken for headings)."""
    out, fenced = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
            out.append("")
        else:
            out.append("" if fenced else line)
    return "\n".join(out)


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", path.read_text(), re.S | re.M)


def module_block(path: Path, module: str) -> str:
    """The Python block of ``path`` that starts with ``# <module>.py``."""
    found = [b for b in python_blocks(path) if b.startswith(f"# {module}.py\n")]
    assert len(found) == 1, f"{path.name}: expected one block for {module}.py, found {len(found)}"
    return found[0]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in without_code(path.read_text()).splitlines():
        m = re.match(r"#{1,6} (.+)", line)
        if m:
            base = slug(m.group(1))
            n = seen.get(base, 0)
            seen[base] = n + 1
            out.add(base if n == 0 else f"{base}-{n}")
    return out


def links(path: Path) -> list[str]:
    return re.findall(r"\]\(([^)\s]+)\)", without_code(path.read_text()))


def check_link(page: Path, target: str) -> str | None:
    """Why a relative link from ``page`` is broken, or None."""
    if re.match(r"[a-z]+:", target):  # https:, mailto:
        return None
    file, _, anchor = target.partition("#")
    dest = (page.parent / file).resolve() if file else page
    if not dest.exists():
        return f"{page.name}: {target}: no such file"
    if anchor and dest.suffix == ".md" and anchor not in anchors(dest):
        return f"{page.name}: {target}: no heading #{anchor} in {dest.name}"
    return None


# --- the pages --------------------------------------------------------------------------------


def test_readme_is_a_short_front_door_linking_to_every_docs_page():
    lines = README.read_text().splitlines()
    assert len(lines) <= 260, f"README.md has {len(lines)} lines"
    targets = links(README)
    for target in targets:
        assert re.fullmatch(r"docs/[\w-]+\.md(#[\w-]+)?", target), f"README links to {target}, not a docs page"
        assert check_link(README, target) is None, check_link(README, target)
    linked = {t.partition("#")[0] for t in targets}
    missing = [p.name for p in DOCS.glob("*.md") if f"docs/{p.name}" not in linked]
    assert not missing, f"README links to no {missing}"


def test_links_between_pages_resolve():
    broken = [why for page in PAGES for target in links(page) if (why := check_link(page, target))]
    assert not broken, "\n".join(broken)


def test_no_page_speaks_of_how_the_work_was_organised():
    for page in PAGES:
        hits = re.findall(r"\b(?:issues?|sessions?)\b", page.read_text(), re.I)
        assert not hits, f"{page.relative_to(ROOT)}: {hits}"


def test_every_docs_page_opens_with_what_its_reader_will_be_able_to_do():
    for page in DOCS.glob("*.md"):
        text = page.read_text()
        assert text.startswith("# "), page.name
        first = text.split("\n\n")[1]
        assert first.startswith("After reading this page you will"), f"{page.name}: {first[:80]!r}"


def test_headline_table_has_every_tool_on_every_set_with_measured_figures():
    text = README.read_text()
    assert "<!-- headline: benchmarks/photo_path.py" in text
    table = text.split("<!-- headline:", 1)[1].split("\n\n", 1)[0]
    rows = [r for r in table.splitlines() if r.startswith("| ") and "---" not in r][1:]
    sets = {r.split("|")[1].strip().split(" (")[0] for r in rows}
    assert sets == {"YouTube frames", "HELEN photos", "LFPW photos", "AFW photos"}
    assert len(rows) == 16 and "TBD" not in table
    for r in rows:  # NME, miss rate, two times and the ratio: all numbers
        cells = [c.strip().rstrip("*% ").strip() for c in r.split("|")[3:8]]
        assert all(re.fullmatch(r"\d+\.\d+", c) for c in cells), r


def test_configs_page_lists_the_defaults_and_a_config_that_validates():
    from kpbench.config import DEFAULTS, Settings, check, merge, validate

    text = (DOCS / "configs.md").read_text()
    blocks = re.findall(r"^```yaml\n(.*?)^```", text, re.S | re.M)
    assert len(blocks) == 2
    mine, defaults = (yaml.safe_load(b) for b in blocks)
    assert defaults == DEFAULTS, "docs/configs.md's defaults differ from kpbench/config.py's"
    validate(mine, "docs/configs.md")
    check(Settings.from_dict(merge(DEFAULTS, mine)))


# --- the Python blocks ------------------------------------------------------------------------

PLUGIN_MODULES = ("kpbench_tiny", "kpbench_centre", "kpbench_csvfaces", "kpbench_worst")


def test_every_python_block_is_run_by_a_test():
    """A block is the README's model plugin (run by tests/test_plugins.py), a plugin module of
    docs/plugins.md (run below), the schema example (run below) or a Predictor program (run below
    on the shipped model)."""
    assert "readme_plugin_example()" in (ROOT / "tests" / "test_plugins.py").read_text()
    for page in RUN_PAGES:
        for block in python_blocks(page):
            known = (block == readme_plugin_example() or "from kpbench import Predictor" in block
                     or any(block.startswith(f"# {m}.py\n") for m in PLUGIN_MODULES)
                     or block.startswith("import kpbench\n\nFIVE = "))
            assert known, f"{page.name}: no test runs this block:\n{block}"


def predictor_blocks() -> list:
    return [pytest.param(b, id=f"{p.stem}-{i}") for p in RUN_PAGES
            for i, b in enumerate(python_blocks(p)) if "from kpbench import Predictor" in b]


def photo(path: Path) -> None:
    """A synthetic face in a larger canvas, as a photo: both face detectors find it."""
    from PIL import Image

    from kpbench_plugins.synthetic import render

    face, _ = render(1, 0, 256)
    canvas = np.full((384, 384), 128, np.uint8)
    canvas[64:320, 64:320] = face
    Image.fromarray(canvas).convert("RGB").save(path)


@pytest.mark.parametrize("block", predictor_blocks())
def test_predictor_blocks_run_on_the_shipped_model(block, tmp_path):
    if not (SHIPPED / "card.json").is_file():
        pytest.skip("no shipped model in this checkout")
    photo(tmp_path / "photo.jpg")
    if "results/wild" in block:
        shutil.copytree(SHIPPED, tmp_path / "results" / "wild")  # the shipped model is laid out as a run
    if "model.onnx" in block:
        pytest.importorskip("onnx")
        pytest.importorskip("onnxruntime")
        r = run_cli("export", "--out", tmp_path / "model.onnx")
        assert r.returncode == 0, r.stderr
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-c", block], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip(), "the block printed nothing: no face found?"


def test_the_plugins_page_repeats_the_readme_model_plugin():
    assert module_block(DOCS / "plugins.md", "kpbench_tiny") == readme_plugin_example()


def write_module(tmp_path: Path, name: str) -> dict:
    (tmp_path / f"{name}.py").write_text(module_block(DOCS / "plugins.md", name))
    return runpy.run_path(str(tmp_path / f"{name}.py"))


def test_the_detector_plugin_example_gets_the_crop_convention(tmp_path):
    from kpbench.geometry import square_box

    mod = write_module(tmp_path, "kpbench_centre")
    (spec,) = mod["kpbench_detectors"]()
    det = spec.factory(margin=0.1)
    image = np.zeros((100, 200, 3), np.uint8)
    (face,) = det.detect_all(image)
    assert face["raw_box"] == (75.0, 25.0, 125.0, 75.0) and face["score"] == 0.9
    assert face["box"] == pytest.approx(square_box((75, 25, 125, 75), 0.1, 1.0, 0.0, 0.0))
    assert det(image) == face["box"]
    r = run_cli("-p", "kpbench_centre", "list", "detectors", "centre", pythonpath=tmp_path)
    assert r.returncode == 0 and "│ centre " in r.stdout, r.stderr


def test_the_dataset_plugin_example_reads_images_and_points(tmp_path):
    from PIL import Image

    mod = write_module(tmp_path, "kpbench_csvfaces")
    faces = tmp_path / "faces"
    faces.mkdir()
    rows = []
    for k in range(2):
        Image.fromarray(np.full((40, 50, 3), 60 * k, np.uint8)).save(faces / f"f{k}.png")
        values = [str(float(v)) for v in range(30)]
        if k == 1:
            values[20] = values[21] = ""  # nose_tip missing
        rows.append(",".join([f"f{k}.png", *values]))
    (faces / "points.csv").write_text("\n".join(rows) + "\n")
    (spec,) = mod["kpbench_datasets"]()
    ds = spec.factory(str(faces))
    assert len(ds) == 2 and ds.schema == "kaggle15"
    s = ds[1]
    assert s.image.shape == (40, 50) and s.points.shape == (15, 2) and s.id == "f1.png"
    assert np.isnan(s.points[10]).all() and np.isfinite(np.delete(s.points, 10, axis=0)).all()
    r = run_cli("-p", "kpbench_csvfaces", "list", "datasets", "csvfaces", pythonpath=tmp_path)
    assert r.returncode == 0 and "│ csvfaces " in r.stdout, r.stderr


def test_the_metric_plugin_example_gives_one_value_per_image(tmp_path):
    mod = write_module(tmp_path, "kpbench_worst")
    (spec,) = mod["kpbench_metrics"]()
    true = np.zeros((3, 2, 2))
    pred = np.array([[[3.0, 4.0], [0.0, 1.0]], [[0.0, 0.0], [0.0, 0.0]], [[1.0, 1.0], [1.0, 1.0]]])
    true[2] = np.nan  # nothing annotated
    values = spec(pred, true, None)
    assert values[:2].tolist() == [5.0, 0.0] and np.isnan(values[2])
    assert spec.name == "worst" and spec.unit == "px"


def test_the_schema_example_defines_a_layout(tmp_path):
    (block,) = [b for b in python_blocks(DOCS / "plugins.md") if b.startswith("import kpbench\n\nFIVE = ")]
    (tmp_path / "kpbench_five.py").write_text(block)
    mod = runpy.run_path(str(tmp_path / "kpbench_five.py"))
    (spec,) = mod["kpbench_schemas"]()
    schema = spec.factory()
    assert spec.name == schema.name == "five" and schema.num_points == 5
    assert schema.flip_permutation == (1, 0, 2, 4, 3)
