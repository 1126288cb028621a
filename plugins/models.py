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
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(3), nn.Flatten())
        self.head = nn.Sequential(nn.Linear(c * 9, 256), nn.ReLU(inplace=True), nn.Dropout(dropout),
                                  nn.Linear(256, num_keypoints * 2))

    def forward(self, x):
        return self.head(self.features(x))


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
        kpbench.ModelSpec("mean-shape", MeanShape, "Reference floor: predicts the training mean shape"),
    ]
