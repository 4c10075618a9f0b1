"""Operator norms of Conv2d/Linear layers (`stabkern.opnorms`) against the explicit matrix.

The explicit matrix comes from the layer's own forward on basis vectors (torch's convolution), so the
tap-mask formulas, the adjoint and the Lanczos iteration are each checked against an independent path.
Lanczos (`spectral_norm`): at convergence sqrt(theta) is below ||A||_2 by a relative tol / 2 at most
(theta <= ||A||_2^2 and the Ritz residual <= tol theta); on top the float32 maps add rounding: each
entry of A^T A q sums at most FAN = 2 * 4 * 9 * 9 products here (A then A^T, <= 4 channels x 9 taps
each way, generously), so a relative FAN * 2^-24 ~ 4e-5 (`SLACK`), far above what they show.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from stabkern import opnorms

CASES = [
    (lambda: nn.Linear(7, 5), (7,)),
    (lambda: nn.Conv2d(3, 4, 3, padding=1), (3, 5, 6)),
    (lambda: nn.Conv2d(3, 4, 3, stride=2, padding=2, dilation=2), (3, 7, 6)),
    (lambda: nn.Conv2d(4, 6, (3, 2), stride=(2, 1), padding=(1, 0), groups=2), (4, 5, 5)),
    (lambda: nn.Conv2d(2, 3, 3, padding="same", bias=False), (2, 4, 4)),
    (lambda: nn.Conv2d(2, 3, 2, padding="valid"), (2, 3, 5)),
    (lambda: nn.Conv2d(1, 2, 5, stride=3, padding=2), (1, 4, 4)),  # taps fall outside at every position
    (lambda: nn.Conv2d(1, 2, 4, padding="same"), (1, 5, 5)),  # asymmetric: the extra pixel bottom/right
    (lambda: nn.Conv2d(2, 2, 3, padding=1), (2, 2, 2)),  # map smaller than the kernel span
]
IDS = ["linear", "pad1", "stride2-dil2", "groups-rect", "same", "valid", "big-kernel", "same-asymmetric", "tiny-map"]


SLACK = 2 * 4 * 9 * 9 * 2.0 ** -24  # float32 rounding of A^T A q, relative (see the module note)


def _true_norm(a: torch.Tensor) -> float:
    return torch.linalg.matrix_norm(a, 2).item()


@pytest.mark.parametrize("make,in_shape", CASES, ids=IDS)
def test_norms_match_explicit_matrix(make, in_shape):
    torch.manual_seed(len(in_shape) + in_shape[-1])
    module = make()
    a = opnorms.operator_matrix(module, in_shape)
    row_sq, row_abs = opnorms.row_norms(module, in_shape)
    torch.testing.assert_close(row_sq, a.square().sum(1), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(row_abs, a.abs().sum(1), rtol=1e-12, atol=1e-14)
    assert opnorms.frobenius(module, in_shape) == pytest.approx(a.norm().item(), rel=1e-12)
    want = _true_norm(a)
    for tol in (1e-3, 1e-6):
        got = opnorms.spectral_norm(module, in_shape, tol=tol, warm=False)
        assert got.converged and got.tol == tol and 1 <= got.iterations <= a.shape[1]
        assert want * (1 - tol / 2 - SLACK) <= got.value <= want * (1 + SLACK)
    assert opnorms.spectral(module, in_shape) == pytest.approx(want, rel=1e-3 / 2 + SLACK)


def _slow_conv():
    """A conv whose top singular values cluster (n = 8 * 10 * 10 = 800): Lanczos needs many steps."""
    torch.manual_seed(11)
    return nn.Conv2d(8, 8, 3, padding=1), (8, 10, 10)


def test_spectral_stops_at_the_stated_tolerance():
    """Issue 11, item 1: converged within tol (relative) of the explicit matrix's norm, and fewer iterations
    for a looser tol; `iters` caps the iterations (then converged is False and the value still a lower one)."""
    module, in_shape = _slow_conv()
    want = _true_norm(opnorms.operator_matrix(module, in_shape))
    used = []
    for tol in (1e-1, 1e-2, 1e-3, 1e-5):
        got = opnorms.spectral_norm(module, in_shape, tol=tol, warm=False)
        assert got.converged
        assert want * (1 - tol / 2 - SLACK) <= got.value <= want * (1 + SLACK)
        used.append(got.iterations)
    assert used == sorted(used) and used[-1] > used[0] > 1
    capped = opnorms.spectral_norm(module, in_shape, tol=0.0, iters=3, warm=False)
    assert capped.iterations == 3 and not capped.converged and capped.value <= want * (1 + SLACK)


def test_spectral_restarts_when_the_basis_is_capped(monkeypatch):
    """A basis of 3 vectors (explicit restarts from the Ritz vector) still converges to the same norm."""
    module, in_shape = _slow_conv()
    want = _true_norm(opnorms.operator_matrix(module, in_shape))
    monkeypatch.setattr(opnorms, "_BASIS_BYTES", 3 * 8 * 800)
    got = opnorms.spectral_norm(module, in_shape, tol=1e-4, iters=2000, warm=False)
    assert got.converged and got.iterations > 3
    assert want * (1 - 1e-4 / 2 - SLACK) <= got.value <= want * (1 + SLACK)


def test_spectral_cache_is_exact_and_never_stale():
    """A second call on an equal weight returns the first result (the same bits and iteration count); an in-place
    write, a `.data` swap, a `.data.copy_` (which bumps no version counter) or another module of the same
    shape compute afresh and give the new weight's norm; a cold call on a weight equal to an earlier one gives
    the same bits as that call (the start is seeded, not carried over)."""
    module, in_shape = _slow_conv()
    want = _true_norm(opnorms.operator_matrix(module, in_shape))
    first = opnorms.spectral_norm(module, in_shape)
    again = opnorms.spectral_norm(module, in_shape)
    assert again.warm and again.iterations == first.iterations and again.value == first.value
    assert again.value == pytest.approx(want, rel=1e-3 / 2 + SLACK)
    with torch.no_grad():
        module.weight.mul_(2.0)
    doubled = opnorms.spectral_norm(module, in_shape)
    assert not doubled.warm and doubled.value == pytest.approx(2 * want, rel=1e-3 / 2 + SLACK)
    module.weight.data = module.weight.data * 0.5
    swapped = opnorms.spectral_norm(module, in_shape)
    assert not swapped.warm and swapped.value == first.value  # the same weight values: the same bits
    module.weight.data.copy_(module.weight.data * 3.0)
    tripled = opnorms.spectral_norm(module, in_shape)
    assert not tripled.warm and tripled.value == pytest.approx(3 * want, rel=1e-3 / 2 + SLACK)
    other = nn.Conv2d(8, 8, 3, padding=1)
    fresh = opnorms.spectral_norm(other, in_shape)
    assert not fresh.warm
    assert fresh.value == pytest.approx(_true_norm(opnorms.operator_matrix(other, in_shape)), rel=1e-3 / 2 + SLACK)
    assert not opnorms.spectral_norm(module, (8, 9, 10)).warm  # another input shape: another operator
    assert not opnorms.spectral_norm(module, in_shape, tol=1e-4).warm  # another tolerance: another result


def test_spectral_cache_is_bounded(monkeypatch):
    """Beyond _WARM_BYTES the oldest entries go: room for one 8 x 8 x 3 x 3 weight keeps only the last."""
    monkeypatch.setattr(opnorms, "_WARM", type(opnorms._WARM)())
    monkeypatch.setattr(opnorms, "_WARM_BYTES", 8 * 8 * 9 * 4)
    first, in_shape = _slow_conv()
    second = nn.Conv2d(8, 8, 3, padding=1)
    opnorms.spectral_norm(first, in_shape)
    opnorms.spectral_norm(second, in_shape)
    assert len(opnorms._WARM) == 1
    assert opnorms.spectral_norm(second, in_shape).warm and not opnorms.spectral_norm(first, in_shape).warm


def test_spectral_on_the_whole_space_is_exact():
    """With as many iterations as input dimensions the basis spans the space: converged even at tol = 0."""
    for layer in (nn.Linear(1, 3), nn.Linear(3, 4)):
        got = opnorms.spectral_norm(layer, (layer.in_features,), tol=0.0, warm=False)
        want = torch.linalg.matrix_norm(layer.weight.detach().double(), 2).item()
        assert got.converged and got.iterations == layer.in_features
        assert got.value == pytest.approx(want, rel=SLACK)


def test_zero_weight_has_norm_zero():
    layer = nn.Linear(4, 3)
    with torch.no_grad():
        layer.weight.zero_()
    got = opnorms.spectral_norm(layer, (4,))
    assert got.value == 0.0 and got.converged


@pytest.mark.parametrize("make,in_shape", CASES, ids=IDS)
def test_apply_and_adjoint_match_explicit_matrix(make, in_shape):
    torch.manual_seed(3)
    module = make()
    a = opnorms.operator_matrix(module, in_shape)
    double = opnorms._as_dtype(module, torch.float64)
    x = torch.randn(3, *in_shape, dtype=torch.float64)
    ax = opnorms.apply(double, x)
    torch.testing.assert_close(ax.flatten(1), x.flatten(1) @ a.T, rtol=1e-12, atol=1e-12)
    y = torch.randn_like(ax)
    torch.testing.assert_close(opnorms.apply_adjoint(double, y, in_shape).flatten(1), y.flatten(1) @ a,
                               rtol=1e-12, atol=1e-12)


def test_padding_and_stride_count():
    """||A||_F^2 counts only in-bounds taps: below ||W||_F^2 times the number of output positions."""
    conv = nn.Conv2d(2, 3, 3, padding=1)
    full = conv.weight.detach().double().square().sum().item() * 9  # 3x3 output positions
    assert opnorms.frobenius(conv, (2, 3, 3)) ** 2 < full * (1 - 1e-3)
    strided = nn.Conv2d(2, 3, 3, stride=2)
    strided.weight.data.copy_(conv.weight.data)
    want = conv.weight.detach().double().square().sum().item() * 4  # valid 3x3 on 5x5, stride 2: 2x2 outputs
    assert opnorms.frobenius(strided, (2, 5, 5)) ** 2 == pytest.approx(want, rel=1e-12)


def test_unsupported_layers():
    with pytest.raises(ValueError, match="padding_mode"):
        opnorms.frobenius(nn.Conv2d(1, 1, 3, padding=1, padding_mode="circular"), (1, 4, 4))
    with pytest.raises(ValueError, match="Conv2d and Linear"):
        opnorms.row_norms(nn.BatchNorm2d(3), (3, 4, 4))
    with pytest.raises(ValueError, match="too small"):
        opnorms.frobenius(nn.Conv2d(1, 1, 5), (1, 3, 3))


def test_bad_arguments_are_named():
    """Issue 9, item 9: spectral_iters/iters = 0 and negative sizes get a range error naming the argument."""
    conv = nn.Conv2d(2, 3, 3, padding=1)
    with pytest.raises(ValueError, match="iters"):
        opnorms.spectral(conv, (2, 5, 5), iters=0)
    with pytest.raises(TypeError, match="iters"):
        opnorms.spectral(conv, (2, 5, 5), iters=2.0)
    with pytest.raises(ValueError, match="tol"):
        opnorms.spectral(conv, (2, 5, 5), tol=-1.0)
    with pytest.raises(TypeError, match="tol"):
        opnorms.spectral_norm(conv, (2, 5, 5), tol=True)
    with pytest.raises(ValueError, match=r"in_shape\[1\]"):
        opnorms.row_norms(conv, (2, -5, 5))
    with pytest.raises(ValueError, match=r"in_shape\[0\]"):
        opnorms.frobenius(nn.Linear(3, 2), (0,))
