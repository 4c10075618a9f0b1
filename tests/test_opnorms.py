"""Operator norms of Conv2d/Linear layers (`stabkern.opnorms`) against the explicit matrix.

The explicit matrix comes from the layer's own forward on basis vectors (torch's convolution), so the
tap-mask formulas, the adjoint and the power iteration are each checked against an independent path.
Power iteration: from the start v0 = sum_i c_i v_i (right singular vectors), step t returns
sqrt(sum_i c_i^2 s_i^(4t+2) / sum_i c_i^2 s_i^(4t)) in exact arithmetic; the test computes that value
from the SVD and the same seeded start, and allows 1e-6 (relative) on top for the float32 maps.
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


def _power_iteration_exact(a: torch.Tensor, in_shape, iters: int) -> float:
    """What `spectral` returns after `iters` steps in exact arithmetic (see the module note)."""
    v0 = torch.randn(1, *in_shape, generator=torch.Generator().manual_seed(0)).double().flatten()
    _, s, vh = torch.linalg.svd(a, full_matrices=False)
    c2 = (vh @ v0) ** 2
    w = c2 * (s / s[0]) ** (4 * (iters - 1))
    return (s[0] * torch.sqrt((w * (s / s[0]) ** 2).sum() / w.sum())).item()


@pytest.mark.parametrize("make,in_shape", CASES, ids=IDS)
def test_norms_match_explicit_matrix(make, in_shape):
    torch.manual_seed(len(in_shape) + in_shape[-1])
    module = make()
    a = opnorms.operator_matrix(module, in_shape)
    row_sq, row_abs = opnorms.row_norms(module, in_shape)
    torch.testing.assert_close(row_sq, a.square().sum(1), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(row_abs, a.abs().sum(1), rtol=1e-12, atol=1e-14)
    assert opnorms.frobenius(module, in_shape) == pytest.approx(a.norm().item(), rel=1e-12)
    iters = 200
    got = opnorms.spectral(module, in_shape, iters=iters, tol=0)
    want = _power_iteration_exact(a, in_shape, iters)
    assert abs(got - want) <= 1e-6 * want
    assert want <= torch.linalg.matrix_norm(a, 2).item() * (1 + 1e-12)


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
    with pytest.raises(ValueError, match=r"in_shape\[1\]"):
        opnorms.row_norms(conv, (2, -5, 5))
    with pytest.raises(ValueError, match=r"in_shape\[0\]"):
        opnorms.frobenius(nn.Linear(3, 2), (0,))
