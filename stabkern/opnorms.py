"""Norms of a layer's linear operator A: the map from its whole input to its whole output (bias excluded).

For a Linear layer A is the weight W (out x in). For a Conv2d layer on an input of shape (C, H, W), A is
the (C_out H_out W_out) x (C H W) matrix of the convolution with its stride, padding (zeros), dilation
and groups: row (o, p) holds filter o restricted to the taps that land inside the image at output
position p. So padding and stride change the norms, and ||A||_F is not ||W||_F times a count unless
every tap is always inside. Following Arora et al. (2018, section 5: a conv layer is the linear map on
the feature map) and treating conv layers in the norm-based bounds the same way (Bartlett et al. 2017
and Neyshabur et al. 2018 state their bounds for matrices; we give them the operator), we compute exactly:

- row_sq (squared l2 norm of every row) and row_abs (l1 norm of every row): per output channel o and
  tap k, S[o, k] = sum_c W[o, c, k]^2 (or |W|), times the 0/1 in-bounds mask of tap k at position p
  (`F.unfold` of an all-ones image gives it): row_sq = S @ mask. Hence
  ||A||_F^2 = sum row_sq, ||A^T||_{2,1} = sum sqrt(row_sq), ||A||_{1,inf} = max row_abs.
- ||A||_2 (spectral) by Lanczos on A^T A with the exact adjoint (`torch.nn.grad.conv2d_input`): a lower
  estimate, stopped at a stated relative tolerance (default 1e-3) by its Ritz residual, from a seeded
  start, and cached per weight (a repeated call on an equal weight returns the same result without
  iterating); `spectral_norm` reports the iterations that computed its value.

Used by the meters (cushions, bounds) and by `choose_k`; all are checked against the explicit
matrix (`operator_matrix`) in tests/test_opnorms.py.
"""

from __future__ import annotations

import math
import weakref
from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ._checks import check_float, check_positive_int, check_seed
from .sketched import conv_padding


def _check(module: nn.Module) -> None:
    if isinstance(module, nn.Conv2d):
        if module.padding_mode != "zeros":
            raise ValueError(f"operator norms support Conv2d with padding_mode='zeros', not {module.padding_mode!r}")
        return
    if not isinstance(module, nn.Linear):
        raise ValueError(f"operator norms are defined for Conv2d and Linear layers, not {type(module).__name__}")


def _check_shape(in_shape) -> tuple:
    """in_shape as a tuple of ints >= 1 (a per-sample shape), else a TypeError / ValueError naming it."""
    if isinstance(in_shape, (str, bytes)) or not hasattr(in_shape, "__iter__"):
        raise TypeError(f"in_shape must be a per-sample shape (a tuple of ints), got {type(in_shape).__name__}")
    return tuple(check_positive_int(f"in_shape[{k}]", s) for k, s in enumerate(in_shape))


def _padding(conv: nn.Conv2d) -> tuple[int, int, int, int]:
    """F.pad order (left, right, top, bottom) of a Conv2d's zero padding ('same' may be asymmetric)."""
    top, bottom, left, right = conv_padding(conv.padding, conv.kernel_size, conv.dilation)
    return left, right, top, bottom


def _tap_mask(conv: nn.Conv2d, in_shape) -> torch.Tensor:
    """(kh kw, L) float mask: 1 where tap k lands inside the image at output position p."""
    _, h, w = in_shape
    ones = F.pad(torch.ones(1, 1, h, w, dtype=conv.weight.dtype, device=conv.weight.device), _padding(conv))
    if any(size < d * (k - 1) + 1 for size, d, k in zip(ones.shape[-2:], conv.dilation, conv.kernel_size)):
        raise ValueError(f"input {(h, w)} is too small for this conv (no output position)")
    return F.unfold(ones, conv.kernel_size, dilation=conv.dilation, stride=conv.stride)[0]


def row_norms(module: nn.Module, in_shape) -> tuple[torch.Tensor, torch.Tensor]:
    """(row_sq, row_abs): squared l2 and l1 norms of every row of A, flat over output units, float64."""
    _check(module)
    in_shape = _check_shape(in_shape)
    w = module.weight.detach().double()
    if isinstance(module, nn.Linear):
        return w.square().sum(1), w.abs().sum(1)
    mask = _tap_mask(module, in_shape).double()
    s_sq = w.square().sum(1).flatten(1)  # (C_out, kh kw)
    s_abs = w.abs().sum(1).flatten(1)
    return (s_sq @ mask).reshape(-1), (s_abs @ mask).reshape(-1)


def frobenius(module: nn.Module, in_shape) -> float:
    """||A||_F of the layer's operator on inputs of per-sample shape in_shape."""
    return float(row_norms(module, in_shape)[0].sum().sqrt())


def apply(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A x: the layer without its bias. x: (N, *in_shape)."""
    if isinstance(module, nn.Linear):
        return F.linear(x, module.weight)
    return F.conv2d(F.pad(x, _padding(module)), module.weight, None, module.stride, 0, module.dilation,
                    module.groups)


def apply_adjoint(module: nn.Module, y: torch.Tensor, in_shape) -> torch.Tensor:
    """A^T y. y: (N, *out_shape) -> (N, *in_shape)."""
    if isinstance(module, nn.Linear):
        return y @ module.weight
    left, right, top, bottom = _padding(module)
    c, h, w = in_shape
    padded = torch.nn.grad.conv2d_input((y.shape[0], c, h + top + bottom, w + left + right), module.weight, y,
                                        module.stride, 0, module.dilation, module.groups)
    return padded[..., top:top + h, left:left + w]


@dataclass(frozen=True)
class Spectral:
    """What `spectral_norm` found: value (a lower estimate of ||A||_2, sqrt of the top Ritz value), the
    iterations used (applications of A^T A: one A and one A^T each), whether the Ritz residual met tol
    (relative), and whether it is the cached result of an earlier call on an equal weight (warm)."""

    value: float
    iterations: int
    converged: bool
    tol: float
    warm: bool


# The result cache: per (weight, geometry, in_shape), the last result and a copy of the weight it was
# computed on. A call on a weight equal to the copy (torch.equal: values, not version counters, which a
# `.data.copy_` does not bump) returns that result, so the same weight always gives the same bits; any
# other weight starts cold from the seeded vector (a warm start from another weight's Ritz vector would make
# the result depend on the call history, within tol).
_WARM: OrderedDict = OrderedDict()
_WARM_BYTES = 256 << 20  # the oldest entries are dropped beyond this (weight copies)
# Lanczos keeps its basis (float64): at most this many bytes of it before an explicit restart.
_BASIS_BYTES = 64 << 20


def _warm_key(module: nn.Module, in_shape) -> tuple:
    w = module.weight
    geometry = (module.stride, module.padding, module.dilation, module.groups) if isinstance(module, nn.Conv2d) \
        else ()
    return (id(w), tuple(w.shape), w.dtype, str(w.device), tuple(in_shape), type(module).__name__, geometry)


def _cached(module: nn.Module, key: tuple, tol: float, iters: int, seed: int):
    entry = _WARM.get(key)
    if entry is None or entry[0]() is not module.weight or entry[2] != (tol, iters, seed):
        return None  # the id was reused by another tensor, or the call asks for something else
    if not torch.equal(entry[1], module.weight.detach()):
        return None
    _WARM.move_to_end(key)
    return entry[3]


def _remember(module: nn.Module, key: tuple, call: tuple, result) -> None:
    _WARM[key] = (weakref.ref(module.weight), module.weight.detach().clone(), call, result)
    _WARM.move_to_end(key)
    while len(_WARM) > 1 and sum(v[1].numel() * v[1].element_size() for v in _WARM.values()) > _WARM_BYTES:
        _WARM.popitem(last=False)


def spectral_norm(module: nn.Module, in_shape, tol: float = 1e-3, iters: int = 500, seed: int = 0,
                  warm: bool = True) -> Spectral:
    """||A||_2 by Lanczos on A^T A (float32 maps, float64 basis, full reorthogonalization), stopping once
    the top Ritz value theta has Ritz residual r <= tol theta, or after `iters` applications of A^T A.

    Some eigenvalue of A^T A lies within r of theta, and theta <= ||A||_2^2, so at convergence
    sqrt(theta) is below ||A||_2 by a relative tol / 2 at most (the eigenvalue is the top one unless the
    start is orthogonal to the top singular vector, probability 0 from a random start). The start is the
    seeded random vector; the basis restarts from the current Ritz vector when it would exceed _BASIS_BYTES.
    warm=True returns the cached result of an earlier call with the same arguments on an equal weight
    (warm True, with the iterations that computed it; see _WARM), so a repeated call costs one comparison
    and gives the same bits, and a report does not depend on what was metered before.
    """
    _check(module)
    tol = check_float("tol", tol, 0.0)
    iters = check_positive_int("iters", iters)
    seed = check_seed(seed)
    in_shape = _check_shape(in_shape)
    key = _warm_key(module, in_shape)
    hit = _cached(module, key, tol, iters, seed) if warm else None
    if hit is not None:
        return Spectral(hit.value, hit.iterations, hit.converged, tol, True)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    start = torch.randn(math.prod(in_shape), generator=gen, dtype=torch.float64)
    single = _as_dtype(module, torch.float32)
    device = module.weight.device
    v = start.to(device=device, dtype=torch.float64)

    def gram(q: torch.Tensor) -> torch.Tensor:  # A^T A q in float32, returned flat in float64
        x = q.view(1, *in_shape).float()
        return apply_adjoint(single, apply(single, x), in_shape).reshape(-1).double()

    block = max(1, min(64, _BASIS_BYTES // (8 * v.numel()), v.numel()))
    basis = torch.empty(block, v.numel(), dtype=torch.float64, device=device)
    used, theta, ritz, converged = 0, 0.0, v, False
    while True:
        alphas, betas = [], []
        basis[0] = v / v.norm()
        for k in range(block):
            w = gram(basis[k])
            used += 1
            alphas.append(float(basis[k] @ w))
            q_mat = basis[:k + 1]
            for _ in range(2):  # full reorthogonalization, twice (Kahan: twice is enough)
                w = w - (q_mat @ w) @ q_mat
            beta = float(w.norm())
            t = torch.diag(torch.tensor(alphas, dtype=torch.float64))
            if betas:
                off = torch.tensor(betas, dtype=torch.float64)
                t += torch.diag(off, 1) + torch.diag(off, -1)
            evals, evecs = torch.linalg.eigh(t)
            theta, y = max(float(evals[-1]), 0.0), evecs[:, -1]
            # an invariant subspace (beta = 0, or a basis of the whole space) makes T's eigenvalues exact
            converged = beta * abs(float(y[-1])) <= tol * theta or beta == 0.0 or k + 1 == v.numel()
            if converged or used >= iters or k + 1 == block:
                break
            betas.append(beta)
            basis[k + 1] = w / beta
        ritz = y.to(device) @ basis[:len(alphas)]
        if converged or used >= iters:
            break
        v = ritz  # explicit restart from the current Ritz vector
    result = Spectral(math.sqrt(theta), used, converged, tol, False)
    _remember(module, key, (tol, iters, seed), result)
    return result


def spectral(module: nn.Module, in_shape, iters: int = 500, tol: float = 1e-3, seed: int = 0) -> float:
    """||A||_2 (a lower estimate, relative error <= tol / 2 when converged): `spectral_norm(...).value`."""
    return spectral_norm(module, in_shape, tol=tol, iters=iters, seed=seed).value


def _as_dtype(module: nn.Module, dtype: torch.dtype, keep_bias: bool = False) -> nn.Module:
    """A copy of the layer in dtype (its bias only if keep_bias), as a module of the same kind."""
    bias = keep_bias and module.bias is not None
    if isinstance(module, nn.Linear):
        m = nn.Linear(module.in_features, module.out_features, bias=bias, device=module.weight.device, dtype=dtype)
    else:
        m = nn.Conv2d(module.in_channels, module.out_channels, module.kernel_size, module.stride, module.padding,
                      module.dilation, module.groups, bias=bias, device=module.weight.device, dtype=dtype)
    m.requires_grad_(False)
    with torch.no_grad():
        m.weight.copy_(module.weight.detach())
        if bias:
            m.bias.copy_(module.bias.detach())
    return m


def operator_matrix(module: nn.Module, in_shape) -> torch.Tensor:
    """A as an explicit (out numel) x (in numel) float64 matrix: column k is layer(e_k) - layer(0),
    computed by the layer's own forward (torch's conv), independently of `apply`.

    For checks on small layers only: memory is O(in numel * out numel).
    """
    _check(module)
    in_shape = _check_shape(in_shape)
    n = 1
    for s in in_shape:
        n *= s
    double = _as_dtype(module, torch.float64, keep_bias=True)
    eye = torch.eye(n, dtype=torch.float64, device=module.weight.device).reshape(n, *in_shape)
    with torch.no_grad():
        cols = double(eye) - double(torch.zeros_like(eye[:1]))
    return cols.reshape(n, -1).T
