"""BatchNorms folded into the convolutions before them (kpbench.folding): same outputs, fewer
operators, and a network the folding would change is left as it was."""

import math

import pytest
import torch
from torch import nn

from kpbench import KpbenchError
from kpbench.folding import fold_batch_norms
from kpbench.plugins import get_plugins


def _with_statistics(net: nn.Module) -> nn.Module:
    """``net`` in eval mode with BatchNorm statistics and affine weights far from the identity."""
    gen = torch.Generator().manual_seed(0)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen))
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) * 3 + 0.1)
            with torch.no_grad():
                m.weight.copy_(torch.randn(m.num_features, generator=gen))
                m.bias.copy_(torch.randn(m.num_features, generator=gen))
    return net.eval()


def _norms(net: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in net.modules())


@pytest.mark.parametrize("separable", [False, True])
def test_a_timm_network_folds_to_the_same_points(separable):
    net = _with_statistics(get_plugins().models.get("effnet-heatmap").factory(15, 64, 1, weights="none",
                                                                                separable=separable))
    x = torch.rand(3, 1, 64, 64)
    folded, count = fold_batch_norms(net, x[:1])
    assert count == _norms(net) > 30  # timm's BatchNormAct2d (activation kept) and the head's plain one
    assert _norms(folded) == 0 and folded is not net
    with torch.no_grad():
        assert torch.allclose(folded(x), net(x), atol=1e-5)
    assert _norms(net) == count  # the network given is not changed


class _Shared(nn.Module):
    """A convolution whose output feeds its BatchNorm and, unnormalized, a second path."""

    def __init__(self):
        super().__init__()
        self.conv, self.norm = nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4)

    def forward(self, x):
        y = self.conv(x)
        return (self.norm(y) + y).mean((2, 3))


def test_a_convolution_output_used_twice_is_not_folded():
    net = _with_statistics(_Shared())
    folded, count = fold_batch_norms(net, torch.rand(1, 1, 8, 8))
    assert folded is net and count == 0


def test_a_norm_not_after_a_convolution_stays():
    net = _with_statistics(nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 1),
                                         nn.BatchNorm2d(4)))
    x = torch.rand(2, 1, 8, 8)
    folded, count = fold_batch_norms(net, x[:1])
    assert count == 1 and isinstance(folded[2], nn.BatchNorm2d) and isinstance(folded[4], nn.Identity)
    with torch.no_grad():
        assert torch.allclose(folded(x), net(x), atol=1e-5)


class _Viewed(nn.Module):
    """A network whose head needs the contiguous layout (``.view`` of a feature map)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)  # channels-last weights give a channels-last output, which .view cannot flatten
        return y.view(y.shape[0], -1)


def test_ready_to_run_lays_weights_out_channels_last_where_the_network_allows_it():
    from kpbench.folding import ready_to_run

    net = _with_statistics(get_plugins().models.get("effnet-heatmap").factory(15, 64, 1, weights="none"))
    x = torch.rand(2, 1, 64, 64)
    run, count = ready_to_run(net, x[:1])
    assert count == _norms(net) and _norms(run) == 0

    def full(module):  # the convolutions whose two layouts differ (a depthwise one's do not)
        return [m.weight for m in module.modules() if isinstance(m, nn.Conv2d) and m.weight[0].numel() > m.weight.shape[1]
                and m.weight.shape[1] > 1]

    assert len(full(run)) >= 2 and all(w.is_contiguous(memory_format=torch.channels_last) for w in full(run))
    assert not any(w.is_contiguous(memory_format=torch.channels_last) for w in full(net))  # net as it was
    with torch.no_grad():
        assert torch.allclose(run(x), net(x), atol=1e-5)

    viewed = _Viewed().eval()
    kept, count = ready_to_run(viewed, torch.rand(1, 1, 6, 6))
    assert count == 0 and kept is viewed


def test_the_separable_head_is_depthwise_and_a_fraction_of_the_full_one():
    """effnet-heatmap's ``separable`` head: its 3x3 conv is depthwise (one filter per channel) then
    pointwise, a fraction of the full conv's weights (that it folds: the test above)."""
    make = get_plugins().models.get("effnet-heatmap").factory
    full, sep = (make(15, 64, 1, weights="none", separable=s).smooth for s in (False, True))
    weights = [sum(p.numel() for p in h.parameters()) for h in (full, sep)]
    assert sep[0].groups == 64 and weights[1] < weights[0] / 4


def test_the_heatmap_trunk_can_be_a_larger_lite_and_names_a_wrong_one():
    """effnet-heatmap's ``backbone``: Lite1 or Lite2's first five stages under the same head (the
    laterals sized from the trunk's own channels); a backbone it cannot cut is named in the error."""
    make = get_plugins().models.get("effnet-heatmap").factory
    lite0, lite2 = (make(15, 64, 1, weights="none", backbone=b) for b in ("efficientnet_lite0", "efficientnet_lite2"))
    assert lite2.lateral[2].in_channels == 120 and lite0.lateral[2].in_channels == 112
    assert sum(p.numel() for p in lite2.parameters()) > sum(p.numel() for p in lite0.parameters())
    assert lite2(torch.rand(2, 1, 64, 64)).shape == (2, 30)
    with pytest.raises(KpbenchError, match="resnet18"):
        make(15, 64, 1, weights="none", backbone="resnet18")


def test_the_heatmap_head_can_read_the_sixth_stage_and_names_a_wrong_count():
    """effnet-heatmap's ``stages``: 6 keeps the trunk's stride-32 stage as the head's top (one more
    lateral, read before the stride-16 one), its output the same shape and moved by that stage's
    weights; 5 (the default) keeps the state dict of the models already trained; another count is
    named in the error."""
    make = get_plugins().models.get("effnet-heatmap").factory
    five, six = (make(15, 64, 1, weights="none", stages=s).eval() for s in (5, 6))
    assert len(five.lateral) == 3 and len(six.lateral) == 4 and six.lateral[3].in_channels == 192  # Lite0's stage 6
    assert set(five.state_dict()) < set(six.state_dict())
    x = torch.rand(2, 1, 64, 64)
    before = six(x)
    assert before.shape == (2, 30)
    with torch.no_grad():
        six.lateral[3].weight.add_(1.0)
    assert not torch.allclose(six(x), before)
    with pytest.raises(KpbenchError, match="stages: 7"):
        make(15, 64, 1, weights="none", stages=7)


def test_the_heatmap_loss_is_smallest_on_the_targets_gaussian_and_skips_unknown_points():
    """heatmap_cross_entropy: a heatmap whose softmax is the Gaussian centred on the target scores
    lower than the same peak one heatmap pixel off or a flat map; a NaN target is left out."""
    from kpbench_plugins.models import heatmap_cross_entropy

    side, sigma = 16, 1.0
    target = torch.tensor([[[0.40, 0.61]]])  # (B, K, 2), between pixel centres
    centres = (torch.arange(side) + 0.5) / side

    def peak_at(t):
        d2 = ((centres - t[0]) * side) ** 2 + ((centres[:, None] - t[1]) * side) ** 2
        return (-d2 / (2 * sigma ** 2))[None, None]

    on = heatmap_cross_entropy(peak_at(target[0, 0]), target, sigma)
    off = heatmap_cross_entropy(peak_at(target[0, 0] + torch.tensor([1 / side, 0])), target, sigma)
    flat = heatmap_cross_entropy(torch.zeros(1, 1, side, side), target, sigma)
    assert on < off < flat
    assert flat.item() == pytest.approx(math.log(side * side), rel=1e-5)
    both = torch.cat([peak_at(target[0, 0]), torch.zeros(1, 1, side, side)], 1)
    unknown = torch.tensor([[[0.40, 0.61], [float("nan"), float("nan")]]])
    assert heatmap_cross_entropy(both, unknown, sigma).item() == pytest.approx(on.item(), rel=1e-6)


def test_the_heatmap_head_adds_its_heatmap_loss_only_when_asked_and_while_training():
    """effnet-heatmap's ``heatmap_loss``: the weighted heatmap term joins the training loss after a
    training forward; 0 by default and after an evaluation forward; a negative weight is named."""
    make = get_plugins().models.get("effnet-heatmap").factory
    x, target = torch.rand(2, 1, 64, 64), torch.rand(2, 15, 2) * 0.5 + 0.25
    plain, shaped = (make(15, 64, 1, weights="none", heatmap_loss=w) for w in (0.0, 2.0))
    pred = shaped.train()(x)
    term = shaped.auxiliary_loss(pred, target)
    assert term.item() > 0 and term.requires_grad
    assert plain.auxiliary_loss(plain.train()(x), target).item() == 0
    shaped.eval()(x)
    assert shaped.auxiliary_loss(pred, target).item() == 0
    with pytest.raises(KpbenchError, match="heatmap_loss -1"):
        make(15, 64, 1, weights="none", heatmap_loss=-1)
