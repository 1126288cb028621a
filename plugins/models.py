"""Built-in trainable models: the paper's plain CNN baseline, timm-backbone regressors, and the
mean-shape reference (no parameters: it predicts the training set's mean face)."""

from __future__ import annotations

import timm
import torch
from torch import nn

import kpbench

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


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
        nn.init.zeros_(self.head[-1].weight)  # start from the mean shape
        nn.init.zeros_(self.head[-1].bias)

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
        self.k = num_keypoints

    def forward(self, x):
        h = self.body(x)  # (B, K, H', W')
        b, k, hh, ww = h.shape
        prob = h.flatten(2).softmax(-1).view(b, k, hh, ww)
        xs = (torch.arange(ww, device=x.device, dtype=h.dtype) + 0.5) / ww
        ys = (torch.arange(hh, device=x.device, dtype=h.dtype) + 0.5) / hh
        cx = (prob.sum(2) * xs).sum(-1)
        cy = (prob.sum(3) * ys).sum(-1)
        return torch.stack([cx, cy], -1).flatten(1)


class TimmRegressor(nn.Module):
    """A timm backbone (gray replicated to RGB, ImageNet-normalized) + a linear keypoint head."""

    def __init__(self, num_keypoints: int, input_size: int, in_chans: int = 1, backbone: str = "mobilenetv2_100",
                 weights: str = "none", dropout: float = 0.1):
        super().__init__()
        if weights != "none":
            raise kpbench.KpbenchError(
                f"model weights {weights!r}: only 'none' is supported by this version of kpbench"
            )
        self.backbone = timm.create_model(backbone, pretrained=False, num_classes=0)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(self.backbone.num_features, num_keypoints * 2))
        nn.init.zeros_(self.head[-1].weight)  # start from the mean shape
        nn.init.zeros_(self.head[-1].bias)

    def forward(self, x):
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return self.head(self.backbone((x - self.mean) / self.std))


class MeanShape(nn.Module):
    """Predicts the training set's mean shape for every face (kpbench adds it to a zero output)."""

    def __init__(self, num_keypoints: int, input_size: int, in_chans: int = 1):
        super().__init__()
        self.k = num_keypoints

    def forward(self, x):
        return x.new_zeros(x.shape[0], self.k * 2)


def _timm(backbone: str):
    def factory(num_keypoints, input_size, in_chans=1, **options):
        return TimmRegressor(num_keypoints, input_size, in_chans, backbone=backbone, **options)

    return factory


@kpbench.hookimpl
def kpbench_models():
    return [
        kpbench.ModelSpec("cnn", PlainCNN, "Plain convolutional regressor trained with MSE (paper's CNN baseline)"),
        kpbench.ModelSpec("mobilenetv2", _timm("mobilenetv2_100"),
                          "MobileNetV2 (timm mobilenetv2_100) + linear keypoint head"),
        kpbench.ModelSpec("resnet18", _timm("resnet18"), "ResNet-18 (timm resnet18) + linear keypoint head"),
        kpbench.ModelSpec("resnet10t", _timm("resnet10t"), "ResNet-10-T (timm resnet10t) + linear keypoint head"),
        kpbench.ModelSpec("integral", IntegralCNN,
                          "Small dilated CNN with heatmap soft-argmax (integral regression) head"),
        kpbench.ModelSpec("mean-shape", MeanShape, "Reference floor: predicts the training mean shape"),
    ]
