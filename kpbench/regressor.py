"""The model wrapper every trainable model runs in: a plugin's network, the training mean shape
it predicts offsets from, its output unit, NHWC memory and test-time flip averaging; and the
fine-tuning helpers that find a network's pretrained backbones and their last stage. Training
(:mod:`kpbench.train`) and every use of a trained model (:mod:`kpbench.trained`) build it."""

from __future__ import annotations

import torch
from torch import nn


class Regressor(nn.Module):
    """A model plugin's network plus the training mean shape it predicts offsets from (unless the
    network says ``absolute_output = True``, as heatmap models do)."""

    def __init__(self, net: nn.Module, mean_shape: torch.Tensor, output_scale: float = 1.0, origin: float = 0.0):
        super().__init__()
        self.net = net
        # Its training annotations' pixel origin (Sample.origin, their mean over the training faces):
        # it predicts where the pixels are (as its targets mark them) and reports its points in its
        # annotations' numbering, ``origin`` px further right and down (kpbench.data.to_image_pixels).
        self.register_buffer("origin", torch.tensor(float(origin)))
        # The network's own output unit: 1 (a fraction of the crop side) or the crop side in pixels
        # (``train.targets: pixels``, the network regresses pixel coordinates). Predictions leave
        # ``forward`` in crop fractions either way.
        self.output_scale = float(output_scale)
        self.register_buffer("mean_shape", mean_shape.float().clone())
        self.channels_last = False
        self.flip_test: list[int] | None = None  # set: eval-mode predictions average the mirrored image's

    def use_channels_last(self) -> "Regressor":
        """NHWC weights and inputs: 25-30 % faster training steps on CPU (see README, Speed)."""
        self.channels_last = True
        return self.to(memory_format=torch.channels_last)

    def finish(self, out: torch.Tensor) -> torch.Tensor:
        out = out.view(out.shape[0], -1, 2)
        if self.output_scale != 1.0:
            out = out / self.output_scale
        return out if getattr(self.net, "absolute_output", False) else out + self.mean_shape

    def forward(self, x):
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.flip_test is None or self.training:
            return self.finish(self.net(x))
        # Test-time flip averaging: the image and its mirror as one batch of two.
        out, mirrored = self.finish(self.net(torch.cat([x, x.flip(-1)]))).chunk(2)
        mirrored = mirrored[:, self.flip_test]
        return (out + torch.stack([1 - mirrored[..., 0], mirrored[..., 1]], -1)) / 2

    def with_confidence(self, x) -> torch.Tensor:
        """Points and per-point confidence as one (B, 3K) tensor (x, y per point, then one
        confidence per point), for a network that gives confidences (``net.with_confidence``,
        :class:`kpbench.protocols.GivesConfidence`); flip averaging as in ``forward``."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        flip = self.flip_test is not None and not self.training
        out, conf = self.net.with_confidence(torch.cat([x, x.flip(-1)]) if flip else x)
        points = self.finish(out)
        if flip:
            (points, mirrored), (conf, conf_m) = points.chunk(2), conf.chunk(2)
            mirrored = mirrored[:, self.flip_test]
            points = (points + torch.stack([1 - mirrored[..., 0], mirrored[..., 1]], -1)) / 2
            conf = (conf + conf_m[:, self.flip_test]) / 2
        return torch.cat([points.flatten(1), conf], 1)

    def from_features(self, z):
        """The prediction from cached ``net.frozen_features`` (models that split in two)."""
        return self.finish(self.net.head_forward(z))


def backbone_modules(net: nn.Module) -> list[nn.Module]:
    """The pretrained part of a model, by convention ``net.backbone`` or ``net.backbones``
    (a ModuleDict, one per branch); what the frozen phase freezes."""
    if isinstance(getattr(net, "backbones", None), nn.ModuleDict):
        return list(net.backbones.values())
    return [net.backbone] if isinstance(getattr(net, "backbone", None), nn.Module) else []


def _stage_ends(backbone: nn.Module, entries: list) -> list[int]:
    """For each of ``entries`` (timm's ``feature_info`` stages) whose module the backbone has, the
    position in ``named_modules()`` just past that module and everything under it."""
    names = [n for n, _ in backbone.named_modules()]
    ends = []
    for entry in entries:
        if not isinstance(entry, dict) or entry.get("module") not in names:
            continue
        end = names.index(entry["module"]) + 1
        while end < len(names) and names[end].startswith(entry["module"] + "."):
            end += 1
        ends.append(end)
    return ends


def _stages(backbone: nn.Module) -> list:
    return list(getattr(backbone, "feature_info", None) or [])


def _parameters_of(backbone: nn.Module, first: int, stop: int | None = None) -> list[nn.Parameter]:
    """The parameters of the modules at positions ``first`` to ``stop - 1`` (None: the last) of
    ``named_modules()``."""
    names = {n for n, _ in list(backbone.named_modules())[first:stop]}
    return [p for n, p in backbone.named_parameters() if n.rpartition(".")[0] in names]


def last_stage_parameters(backbone: nn.Module) -> list[nn.Parameter]:
    """The parameters of a backbone's last stage, the part "partial fine-tuning" trains: those
    registered after the module that ends the previous stage in timm's ``feature_info`` (ResNet's
    layer4, MobileNetV2's blocks 5-6 and head conv, VGG's conv5 block). A backbone can say
    otherwise with a ``last_stage_parameters()`` method; one without stage information is all
    last stage."""
    if hasattr(backbone, "last_stage_parameters"):
        return list(backbone.last_stage_parameters())
    for end in reversed(_stage_ends(backbone, _stages(backbone)[:-1])):
        params = _parameters_of(backbone, end)
        if params:
            return params
    return list(backbone.parameters())


def first_stages_parameters(backbone: nn.Module, stages: int) -> list[nn.Parameter]:
    """The parameters of a backbone's first ``stages`` stages of timm's ``feature_info``, stem
    included (EfficientNet-Lite0's conv_stem, bn1 and blocks 0-1 for 2: everything to stride 4),
    the part ``train.frozen_stages`` never trains; none for 0 or a backbone without stage
    information."""
    ends = _stage_ends(backbone, _stages(backbone))
    if stages <= 0 or not ends:
        return []
    return _parameters_of(backbone, 0, ends[min(stages, len(ends)) - 1])


def set_trainable(net: nn.Module, frozen: bool, unfreeze: str, frozen_stages: int = 0) -> None:
    """Backbones frozen, or after the switch: ``unfreeze`` = "all" or "last_stage"; their first
    ``frozen_stages`` stages frozen throughout."""
    for bb in backbone_modules(net):
        bb.requires_grad_(not frozen and unfreeze == "all")
        if not frozen and unfreeze == "last_stage":
            for p in last_stage_parameters(bb):
                p.requires_grad_(True)
        for p in first_stages_parameters(bb, frozen_stages):
            p.requires_grad_(False)


def frozen_norms_to_eval(net: nn.Module) -> None:
    """Normalization layers whose parameters are frozen keep their running statistics too."""
    for bb in backbone_modules(net):
        for m in bb.modules():
            if isinstance(m, nn.modules.batchnorm._NormBase) and not any(
                    p.requires_grad for p in m.parameters(recurse=False)):
                m.eval()


def flips(flip_test: bool, net) -> bool:
    """Whether a network (or its class) gets test-time flip averaging: the settings ask for it and
    it does not opt out (``flip_test = False`` on the network)."""
    return bool(flip_test and getattr(net, "flip_test", True))


def use_flip_test(model: Regressor, flip_test: bool, schema) -> None:
    """Test-time flip averaging where :func:`flips` says so."""
    if flips(flip_test, model.net):
        model.flip_test = list(schema.flip_permutation)
