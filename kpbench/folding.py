"""A trained network made ready to run (:func:`ready_to_run`): each BatchNorm that normalizes a
convolution's output is folded into that convolution's weights and bias (exact in eval mode, up
to float rounding), so batch-1 PyTorch inference skips a third of its operators, and its weights
are laid out channels-last, which the CPU's convolution kernels run faster. What was folded is
found by running the network once (a BatchNorm whose input is a convolution's output), and each
step is checked against the network as it was on an example: a step that would change the
output (or a network that cannot run channels-last) is left out."""

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
    return (folded.eval(), len(pairs)) if _agrees(net, folded, example, tolerance) else (net, 0)


def _agrees(net: nn.Module, other: nn.Module, example: torch.Tensor, tolerance: float) -> bool:
    """Whether ``other`` gives ``net``'s output on ``example`` within ``tolerance`` (relative to its
    largest value); False when ``other`` fails to run."""
    with torch.no_grad():
        before = net(example)
        try:
            after = other(example)
        except RuntimeError:  # e.g. a .view() that needs the contiguous layout
            return False
    scale = float(before.abs().max()) if before.numel() else 1.0
    return before.shape == after.shape and torch.allclose(before, after, rtol=0, atol=tolerance * max(scale, 1.0))


def ready_to_run(net: nn.Module, example: torch.Tensor, tolerance: float = 1e-4) -> tuple[nn.Module, int]:
    """A copy of ``net`` for inference (eval mode): its BatchNorms folded (:func:`fold_batch_norms`)
    and its weights channels-last where that gives the same output on ``example``; and how many
    BatchNorms were folded. ``net`` is left as it was."""
    folded, count = fold_batch_norms(net, example, tolerance)
    fast = copy.deepcopy(folded).to(memory_format=torch.channels_last)
    return (fast, count) if _agrees(folded, fast, example, tolerance) else (folded, count)
