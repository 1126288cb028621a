import base64
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

matplotlib = pytest.importorskip("matplotlib")
from matplotlib.image import imread  # noqa: E402

from kpbench import html as kphtml  # noqa: E402
from kpbench import plots  # noqa: E402
from kpbench.formulas import auc_and_failure_rate  # noqa: E402

PNG = b"\x89PNG\r\n\x1a\n"
MODELS = ["cnn", "resnet", "<b>x</b>"]
K, N, S = 15, 12, 32
NAMES = [f"point_{i}" for i in range(K)]


@pytest.fixture(scope="module")
def fake():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:S, :S]
    images = np.stack([((np.sin(xx / (2 + i % 3)) + np.cos(yy / 3)) * 60 + 128 + rng.normal(0, 10, (S, S)))
                       .clip(0, 255).astype(np.uint8) for i in range(N)])
    true = rng.uniform(4, S - 4, (N, K, 2))
    true[0, 3] = np.nan  # a missing point
    preds = {m: true + rng.normal(0, 1 + i, true.shape) for i, m in enumerate(MODELS)}
    for m in MODELS:
        preds[m][np.isnan(preds[m])] = 10.0
    histories = {}
    for i, m in enumerate(MODELS):
        ep = np.arange(4)
        histories[m] = pd.DataFrame({
            "epoch": ep, "train_loss": np.r_[np.nan, 1.0 / (ep[1:] + i + 1)], "val_loss": 1.2 / (ep + i + 1),
            "val_nme": 0.2 / (ep + 1) + 0.01 * i, "val_mae": 3.0 / (ep + 1) + i, "val_rmse": 4.0 / (ep + 1) + i,
            "lr": 1e-3, "seconds": 1.0})
    histories[MODELS[2]] = histories[MODELS[2]].drop(columns=["val_rmse"])
    nme = {m: np.abs(rng.normal(0.03 * (i + 1), 0.02, N)) for i, m in enumerate(MODELS)}
    nme[MODELS[0]][1] = np.nan
    errors = {m: rng.uniform(0.5, 3, K) * (i + 1) for i, m in enumerate(MODELS)}
    board = pd.DataFrame({"model": MODELS, "nme": [0.0312345, 0.0456, np.nan], "params": [12345678, 2048, 150000],
                          "gmacs": [0.5, 0.05, 1.2], "latency_ms": [np.nan, np.nan, np.nan]})
    return dict(images=images, true=true, preds=preds, histories=histories, nme=nme, errors=errors, board=board)


def render_all(fake, out: Path) -> dict[str, Path]:
    return {
        "training curves": plots.training_curves(fake["histories"], out / "curves.png",
                                                 metrics=("nme", "mae", "rmse", "mape")),
        "keypoint overlays": plots.keypoint_overlays(fake["images"], fake["preds"], fake["true"],
                                                     out / "overlays.png", n=8, point_names=NAMES),
        "CED": plots.ced_curves(fake["nme"], out / "ced.png", max_error=0.1),
        "per keypoint": plots.per_keypoint_errors(fake["errors"], NAMES, out / "per_kp.png"),
        "accuracy vs cost": plots.accuracy_vs_cost(fake["board"], out / "cost.png"),
    }


@pytest.fixture(scope="module")
def rendered(fake, tmp_path_factory):
    return render_all(fake, tmp_path_factory.mktemp("a"))


def test_every_plot_is_a_real_png(rendered):
    for name, p in rendered.items():
        assert p.exists() and p.read_bytes().startswith(PNG), name
        assert p.stat().st_size > 5_000, name
        img = imread(p)
        h, w = img.shape[:2]
        assert 200 < h < 3000 and 300 < w < 3000, (name, img.shape)
        flat = img[..., :3].reshape(-1, 3)
        assert flat.std(axis=0).max() > 0.05, f"{name} is nearly a single color"
        assert len(np.unique(flat[:: max(1, len(flat) // 20000)], axis=0)) > 20, name
    assert not list(rendered["CED"].parent.glob(".*.tmp")), "temp files left behind"


def test_layouts(rendered):
    h, w = imread(rendered["keypoint overlays"]).shape[:2]
    assert w > 1.8 * h  # 3 rows x 8 columns
    h, w = imread(rendered["training curves"]).shape[:2]
    assert h > w  # loss + nme + mae + rmse rows stacked (mape absent)


def test_overlay_draws_true_green_and_pred_red(fake, tmp_path):
    img = imread(plots.keypoint_overlays(fake["images"], fake["preds"], fake["true"], tmp_path / "o.png", n=2))
    rgb = img[..., :3]
    red = (rgb[..., 0] > 0.7) & (rgb[..., 1] < 0.35) & (rgb[..., 2] < 0.35)
    green = (rgb[..., 1] > 0.5) & (rgb[..., 0] < 0.35) & (rgb[..., 2] < 0.35)
    assert red.sum() > 50 and green.sum() > 50


def test_rendering_is_byte_identical(fake, rendered, tmp_path):
    again = render_all(fake, tmp_path)
    for name, p in rendered.items():
        assert again[name].read_bytes() == p.read_bytes(), name


def test_model_colors_fixed_and_ordered():
    c = plots.model_colors(["b", "a", "c"])
    assert list(c) == ["b", "a", "c"]
    assert c["b"] == plots.model_colors(["b"])["b"] == "#1f77b4"
    assert len(set(c.values())) == 3
    many = plots.model_colors([str(i) for i in range(20)])
    assert len(set(many.values())) == 20


def test_pareto_front_hand_made():
    x = [1, 2, 3, 2, 4, np.nan, 5, 1, 0.5]
    y = [5, 3, 4, 3, 1, 0.0, 1, 6, np.nan]
    # (1,5) front; (2,3) twice, identical -> both kept; (3,4) dominated by (2,3); (4,1) front;
    # NaN rows never; (5,1) ties (4,1) on y but costs more -> dominated; (1,6) ties x with (1,5) -> dominated
    expected = [True, True, False, True, True, False, False, False, False]
    assert plots.pareto_front(x, y).tolist() == expected
    assert plots.pareto_front([], []).tolist() == []
    assert plots.pareto_front([1.0], [1.0]).tolist() == [True]


def test_ced_stats_exact():
    e = np.array([0.0, 0.05, 0.1, 0.2, np.nan])
    auc, fr = auc_and_failure_rate(e, 0.1)
    assert auc == pytest.approx((1 + 0.5 + 0 + 0) / 4)
    assert fr == pytest.approx(1 / 4)


def test_cost_falls_back_when_latency_missing(fake, tmp_path):
    board = fake["board"].drop(columns=["gmacs"])
    p = plots.accuracy_vs_cost(board, tmp_path / "c.png")  # latency all NaN, no gmacs -> params, log
    assert p.read_bytes().startswith(PNG)
    p2 = plots.accuracy_vs_cost(board[["model", "nme"]], tmp_path / "c2.png")  # nothing to plot: no crash
    assert p2.read_bytes().startswith(PNG)


class Collector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.stack, self.rows, self.imgs, self.text = [], [], {}, [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag == "table":
            self.stack.append(dict(attrs).get("class"))
            self.rows[self.stack[-1]] = 0
        if tag == "tr":
            self.rows[self.stack[-1]] += 1
        if tag == "img":
            self.imgs.append(dict(attrs))

    def handle_endtag(self, tag):
        if tag == "table":
            self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def make_page(fake, rendered):
    meta = {"dataset": "synthetic", "device": "cpu", "torch": "2.4", "kpbench": "0.1.0", "seed": 0,
            "splits": {"train": 40, "val": 10, "test": 12}, "started": "2024-01-01T00:00:00"}
    return kphtml.page("kpbench <run>", meta, fake["board"], rendered, notes=["a & b"])


def test_html_page_self_contained_and_escaped(fake, rendered):
    text = make_page(fake, rendered)
    assert text.startswith("<!DOCTYPE html>")
    p = Collector()
    p.feed(text)
    p.close()
    tags = [t for t, _ in p.tags]
    assert ("meta", {"charset": "utf-8"}) in p.tags and "title" in tags
    assert p.rows["board"] == len(MODELS) + 1
    assert len(p.imgs) == len(rendered) == tags.count("figure") == tags.count("figcaption")
    for img in p.imgs:
        assert img["src"].startswith("data:image/png;base64,")
        assert base64.b64decode(img["src"].split(",", 1)[1], validate=True).startswith(PNG)
    assert "http://" not in text and "https://" not in text
    assert text.count('src="') == text.count('src="data:image/png;base64,') == len(rendered)
    assert not any(t in ("link", "script", "iframe") for t in tags)
    assert "&lt;b&gt;x&lt;/b&gt;" in text and "<b>x</b>" not in text
    assert "kpbench &lt;run&gt;" in text and "a &amp; b" in text
    joined = "".join(p.text)
    assert "12,345,678" in joined and "150,000" in joined and "2048" in joined and "0.03123" in joined
    assert "train=40" in joined
    tds = [(t, a) for t, a in p.tags if t == "td" and a.get("class") == "num"]
    assert len(tds) >= 4 * len(MODELS)
    assert text == make_page(fake, rendered)


def test_fmt():
    assert kphtml.fmt(float("nan")) == "-" and kphtml.fmt(None) == "-"
    assert kphtml.fmt(np.int64(123456)) == "123,456" and kphtml.fmt(9999) == "9999"
    assert kphtml.fmt(0.123456) == "0.1235" and kphtml.fmt(np.float32(2.5)) == "2.5"
    assert kphtml.fmt(True) == "True" and kphtml.fmt("a") == "a"


def test_write_is_atomic_and_utf8(tmp_path):
    p = kphtml.write(tmp_path / "sub" / "r.html", "é")
    assert p.read_bytes() == "é".encode() and [f.name for f in p.parent.iterdir()] == ["r.html"]
    assert p.stat().st_mode & 0o777 == 0o666 & ~_umask()


@pytest.mark.skipif(not Path("/usr/bin/chromium").exists(), reason="no /usr/bin/chromium")
def test_chromium_renders_page(fake, rendered, tmp_path):
    page = kphtml.write(tmp_path / "r.html", make_page(fake, rendered))
    shot = tmp_path / "shot.png"
    subprocess.run([shutil.which("chromium") or "/usr/bin/chromium", "--headless", "--disable-gpu", "--no-sandbox",
                    f"--screenshot={shot}", "--window-size=1200,2000", page.as_uri()],
                   capture_output=True, timeout=120)
    assert shot.exists() and shot.read_bytes().startswith(PNG)


def test_labels_are_plain_text_and_files_readable(fake, tmp_path):
    odd = {r"m$\notacommand$": v for v in fake["nme"].values()}  # would be invalid mathtext if parsed
    p = plots.ced_curves(odd, tmp_path / "odd.png")
    assert p.read_bytes().startswith(PNG)
    assert p.stat().st_mode & 0o044 == 0o044 & ~_umask()


def _umask():
    import os
    m = os.umask(0o022)
    os.umask(m)
    return m
