"""compress_model on layers that compute their weight (weight_norm / spectral_norm parametrizations,
torch.nn.utils.prune): each is sketched from the weight it computes in eval mode, recomputed here from
the layer's own tensors; the user's model (spectral_norm's u, v included) is left alone; what cannot be
read or folded is refused by name."""

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrizations, prune

import stabkern
from helpers.model_state import assert_unchanged, snapshot
from stabkern.compress import compress_model
from stabkern.sketched import SketchedConv2d, SketchedLinear


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 3 * 3, 3)).train()


def _weight_norm(m):
    parametrizations.weight_norm(m[0])
    with torch.no_grad():
        m[0].parametrizations.weight.original0.uniform_(0.5, 2.0)  # g far from ||v||: the norm matters
    p = m[0].parametrizations.weight
    v, g = p.original1, p.original0
    return 0, lambda: g * v / torch.linalg.vector_norm(v, dim=(1, 2, 3), keepdim=True)


def _spectral_norm(m):
    parametrizations.spectral_norm(m[3])
    p = m[3].parametrizations.weight
    W, u, v = p.original, p[0]._u, p[0]._v
    return 3, lambda: W / torch.dot(u, W @ v)  # eval mode: sigma from the stored u, v, no power iteration


def _pruned(m):
    prune.l1_unstructured(m[0], "weight", amount=0.5)
    return 0, lambda: m[0].weight_orig * m[0].weight_mask


@pytest.mark.parametrize("make", [_weight_norm, _spectral_norm, _pruned])
def test_computed_weights_are_sketched_from_the_weight_they_compute(make):
    m = _net()
    index, effective = make(m)
    snap = snapshot(m)  # training mode: reading spectral_norm's weight there would run a power iteration
    x = torch.randn(6, 2, 5, 5)
    k = 7
    comp, report = compress_model(m, k, seed=2, data=x)
    assert_unchanged(m, snap)
    assert isinstance(comp[0], SketchedConv2d) and isinstance(comp[3], SketchedLinear)
    assert not [s for s in report.skipped if s["name"].startswith(f"{index}.")]  # a parametrization is no layer
    w = effective().detach().double().reshape(-1)
    S = stabkern.sign_matrix(k, w.numel(), seed=2, stream=0 if index == 0 else 1, dtype=torch.float64)
    bound = 8 * 2.0**-23 * w.abs().sum() + 2.0**-23 * (S @ w).abs()  # float32 +-1 sums (tests/ops)
    assert bool(((comp[index].coefficients.double() - S @ w).abs() <= bound).all())
    assert torch.equal(comp[index].bias, m[index].bias)
    assert report.layers[0 if index == 0 else 1].output_error.samples == 6
    assert comp(x).shape == (6, 3)


def test_weights_that_cannot_be_read_or_folded_are_refused_by_name():
    m = _net()
    _weight_norm(m)
    bn = nn.Sequential(m[0], nn.BatchNorm2d(4)).eval()
    snap = snapshot(bn)
    with pytest.raises(ValueError, match="fold_bn: Conv2d '0' computes its weight"):
        compress_model(bn, 5, seed=0, fold_bn=True)
    assert_unchanged(bn, snap)

    class Computed(nn.Linear):  # a weight made on the fly, by no mechanism stabkern knows
        def __init__(self):
            super().__init__(4, 3)
            scale = self.weight.detach().clone()
            del self.weight
            self.register_buffer("scale", scale)

        @property
        def weight(self):
            return self.scale * 2

    with pytest.raises(ValueError, match="fc: its weight is not a Parameter of the layer"):
        compress_model(nn.ModuleDict({"fc": Computed()}), 2, seed=0)
