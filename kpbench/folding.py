"""A trained network made ready to run: each BatchNorm that normalizes a convolution's output is
folded into that convolution's weights and bias (exact in eval mode, up to float rounding), so
batch-1 PyTorch inference skips a third of its operators. What was folded is found by running
the network once (a BatchNorm whose input is a convolution's output) and the result is checked
against the network as it was: a network the folding would change is left as it was."""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights


def _conv_norm_pairs(net: nn.Module, example: torch.Tensor) -> list[tuple[str, nn.Conv2d, str]]:
    """(name of a convolution, the convolution, name of the BatchNorm that normalizes its output), as one
    forward pass of ``example`` runs them."""
    name_of = {id(m): name for name, m in net.named_modules()}
    outputs: dict[int, tuple[torch.Tensor, nn.Conv2d]] = {}  # the tensors kept alive, so ids stay theirs
    pairs = []

    def after_conv(module, inputs, output):
        outputs[id(output)] = (output, module)

    def before_norm(module, inputs):
        found = outputs.get(id(inputs[0]))
        if found is not None and found[0] is inputs[0]:
            pairs.append((name_of[id(found[1])], found[1], name_of[id(module)]))

    hooks = []
    for m in net.modules():
        if type(m) is nn.Conv2d:
            hooks.append(m.register_forward_hook(after_conv))
        elif isinstance(m, nn.BatchNorm2d) and m.track_running_stats and m.running_mean is not None:
            hooks.append(m.register_forward_pre_hook(before_norm))
    try:
        with torch.no_grad():
            net(example)
    finally:
        for h in hooks:
            h.remove()
    convs = [conv for _, conv, _ in pairs]
    return [p for p in pairs if convs.count(p[1]) == 1]  # a convolution run twice is left alone


def _without_norm(norm: nn.BatchNorm2d) -> nn.Module:
    """What is left of a BatchNorm once folded: nothing, or the activation (and dropout) that timm's
    BatchNormAct2d runs after normalizing."""
    rest = [m for m in (getattr(norm, "drop", None), getattr(norm, "act", None)) if isinstance(m, nn.Module)]
    return nn.Sequential(*rest) if rest else nn.Identity()


def _replace(net: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(net.get_submodule(parent) if parent else net, attr, module)


def fold_batch_norms(net: nn.Module, example: torch.Tensor, tolerance: float = 1e-4) -> tuple[nn.Module, int]:
    """A copy of ``net`` (in eval mode) with its BatchNorms folded into the convolutions before them,
    and how many were folded; ``net`` itself when there is none to fold or the folded copy's output
    on ``example`` differs from the network's by more than ``tolerance`` (relative)."""
    net.eval()
    pairs = _conv_norm_pairs(net, example)
    if not pairs:
        return net, 0
    folded = copy.deepcopy(net)
    for conv_name, _, norm_name in pairs:
        conv, norm = folded.get_submodule(conv_name), folded.get_submodule(norm_name)
        weight, bias = fuse_conv_bn_weights(conv.weight, conv.bias, norm.running_mean, norm.running_var,
                                            norm.eps, norm.weight, norm.bias)
        conv.weight, conv.bias = weight, bias
        _replace(folded, norm_name, _without_norm(norm))
    with torch.no_grad():
        before, after = net(example), folded(example)
    scale = float(before.abs().max()) if before.numel() else 1.0
    if before.shape != after.shape or not torch.allclose(before, after, rtol=0, atol=tolerance * max(scale, 1.0)):
        return net, 0
    return folded.eval(), len(pairs)
