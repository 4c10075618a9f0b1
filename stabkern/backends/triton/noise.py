"""Triton kernels of the noise ops (`stabkern.ops.sphere_noise`, `stabkern.ops.sq_error`): sphere noise
injection and per-row squared error. Kernels and their launchers only; the backend class and its
dispatch are in `stabkern.backends.triton`.

Design note. Both steps are memory-bound on a GPU when written well, so each is one sweep over
the big tensor, with the small one read once:

- Noise (`sphere_noise`): out[t B + b] = x[b] + radius[b] z / ||z|| for T trials. ||z|| must be
  known before anything is written and a row (up to millions of elements) does not stay on chip,
  so the noise is generated twice from its counters instead of being stored: `_noise_sumsq_kernel`
  only sums squares (per Box-Muller pair z0^2 + z1^2 = -2 ln u, so no sqrt/sin/cos there), then
  `_inject_kernel` regenerates it and writes out. A program takes one sample b and one block of
  elements for all T trials, so x is read once and only `out` streams to memory. Partial sums go
  to a (T, B, splits) buffer summed by torch in a fixed order: no atomics, reproducible.
- Error (`sq_error`): out[r] = ||y_hat[r] - y[r mod B]||^2. A program takes one sample b and one
  block for all T trials, so the clean y block is read once and y_hat streams once.

The noise is spec stabkern-noise-v1 (see `stabkern.spec`): Philox4x32-10 with counter
(j >> 2, sample, trial, stream + 1) via `tl.philox` with explicit uint32 counters (the Random123
function; `tl.randint` is not used), four Gaussians per call by Box-Muller. It agrees with the
float64 reference to float32 tolerance (`tl.log`, `tl.cos`, `tl.sin` differ from libm in the
last bits). Checked here under TRITON_INTERPRET=1; the compiled kernels still need the GPU check.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK_G = 256  # groups of 4 elements per program and trial: 1024 elements (fewer for shorter rows)


@triton.jit
def _philox_words(seed, stream, sample, trial, g):
    """The 4 Philox words of groups g (uint32 tile) of the noise of (sample, trial)."""
    zero = g * 0  # uint32 tile; sample, trial and stream + 1 are < 2^32 but may arrive as int64
    return tl.philox(seed, g, zero + sample.to(tl.uint32), zero + trial.to(tl.uint32),
                     zero + (stream + 1).to(tl.uint32))


@triton.jit
def _open_uniform(w):
    """(2 (w >> 9) + 1) / 2^24: an odd multiple of 2^-24 in (0, 1), exact in float32."""
    return ((w >> 9) * 2 + 1).to(tl.float32) * 5.9604644775390625e-08


@triton.jit
def _gaussians(seed, stream, sample, trial, g):
    """(z0, z1, z2, z3): elements 4 g + c of the noise of (sample, trial), Box-Muller on word pairs."""
    w0, w1, w2, w3 = _philox_words(seed, stream, sample, trial, g)
    r0 = tl.sqrt(-2.0 * tl.log(_open_uniform(w0)))
    r1 = tl.sqrt(-2.0 * tl.log(_open_uniform(w2)))
    t0 = 6.283185307179586 * _open_uniform(w1)
    t1 = 6.283185307179586 * _open_uniform(w3)
    return r0 * tl.cos(t0), r0 * tl.sin(t0), r1 * tl.cos(t1), r1 * tl.sin(t1)


@triton.jit
def _noise_sumsq_kernel(partial_ptr, n, batch, trials, sample0, trial0, seed, stream, splits,
                        GROUPS_PER_SPLIT: tl.constexpr, BLOCK: tl.constexpr):
    """partial[t, b, split] = sum of z^2 over the groups of this split (the partial last group in split 0)."""
    b = tl.program_id(0)
    split = tl.program_id(1)
    full = n // 4
    g_lo = split * GROUPS_PER_SPLIT
    for t in range(trials):
        acc = tl.zeros((BLOCK,), dtype=tl.float32)
        for g0 in range(g_lo, g_lo + GROUPS_PER_SPLIT, BLOCK):
            g = g0 + tl.arange(0, BLOCK)
            w0, w1, w2, w3 = _philox_words(seed, stream, sample0 + b, trial0 + t, g.to(tl.uint32))
            # z_{2p}^2 + z_{2p+1}^2 = -2 ln u_p: full groups need no sqrt, sin or cos
            sq = -2.0 * (tl.log(_open_uniform(w0)) + tl.log(_open_uniform(w2)))
            acc += tl.where(g < full, sq, 0.0)
        total = tl.sum(acc, axis=0)
        if split == 0:
            if full * 4 < n:
                c = tl.arange(0, 4)
                gt = (c * 0 + full).to(tl.uint32)
                z0, z1, z2, z3 = _gaussians(seed, stream, sample0 + b, trial0 + t, gt)
                z = tl.where(c == 0, z0, tl.where(c == 1, z1, tl.where(c == 2, z2, z3)))
                total += tl.sum(tl.where(full * 4 + c < n, z * z, 0.0), axis=0)
        tl.store(partial_ptr + (t * batch + b) * splits + split, total)


@triton.jit
def _inject_kernel(x_ptr, scale_ptr, out_ptr, n, batch, trials, sample0, trial0, seed, stream,
                   BLOCK: tl.constexpr):
    """out[t B + b, j] = x[b, j] + scale[t, b] z_j for the 4 BLOCK elements of this program."""
    b = tl.program_id(0)
    g = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    c = tl.arange(0, 4)
    j = g[:, None] * 4 + c[None, :]
    mask = j < n
    x = tl.load(x_ptr + b.to(tl.int64) * n + j, mask=mask, other=0.0).to(tl.float32)
    for t in range(trials):
        z0, z1, z2, z3 = _gaussians(seed, stream, sample0 + b, trial0 + t, g.to(tl.uint32))
        z = tl.where(c[None, :] == 0, z0[:, None],
                     tl.where(c[None, :] == 1, z1[:, None], tl.where(c[None, :] == 2, z2[:, None], z3[:, None])))
        s = tl.load(scale_ptr + t * batch + b)
        row = (t * batch + b).to(tl.int64)
        tl.store(out_ptr + row * n + j, (x + s * z).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _sq_error_kernel(y_hat_ptr, y_ptr, partial_ptr, m, batch, trials, splits, BLOCK: tl.constexpr):
    """partial[t, b, split] = sum over this block of (y_hat[t B + b] - y[b])^2, float32."""
    b = tl.program_id(0)
    split = tl.program_id(1)
    j = split * BLOCK + tl.arange(0, BLOCK)
    mask = j < m
    y = tl.load(y_ptr + b.to(tl.int64) * m + j, mask=mask, other=0.0).to(tl.float32)
    for t in range(trials):
        row = (t * batch + b).to(tl.int64)
        d = tl.load(y_hat_ptr + row * m + j, mask=mask, other=0.0).to(tl.float32) - y
        tl.store(partial_ptr + (t * batch + b) * splits + split, tl.sum(d * d, axis=0))


def _block_groups(groups: int) -> int:
    return min(BLOCK_G, triton.next_power_of_2(max(groups, 1)))


def _num_splits(groups: int, batch: int, block: int) -> tuple[int, int]:
    """(splits, groups per split) of the sum-of-squares pass: about 1024 programs or more in all."""
    blocks = triton.cdiv(max(groups, 1), block)
    splits = min(blocks, triton.cdiv(1024, batch))
    per_split = block * triton.cdiv(blocks, splits)
    return triton.cdiv(max(groups, 1), per_split), per_split


def sphere_noise(x: torch.Tensor, radius: torch.Tensor, trials: int, seed: int, stream: int, sample0: int,
                 trial0: int, out_dtype: torch.dtype) -> torch.Tensor:
    """x: (B, n) contiguous, radius: (B,) -> (trials * B, n) of out_dtype; see the module note."""
    batch, n = x.shape
    groups = triton.cdiv(n, 4)
    block = _block_groups(groups)
    splits, per_split = _num_splits(n // 4, batch, block)
    partial = torch.empty(trials, batch, splits, device=x.device, dtype=torch.float32)
    _noise_sumsq_kernel[(batch, splits)](partial, n, batch, trials, sample0, trial0, seed, stream, splits,
                                         GROUPS_PER_SPLIT=per_split, BLOCK=block)
    sumsq = partial.double().sum(-1)  # (T, B), fixed order
    scale = (radius.to(device=x.device, dtype=torch.float64)[None, :] / sumsq.sqrt()).float().contiguous()
    out = torch.empty(trials * batch, n, device=x.device, dtype=out_dtype)
    _inject_kernel[(batch, triton.cdiv(groups, block))](x, scale, out, n, batch, trials, sample0, trial0, seed,
                                                        stream, BLOCK=block)
    return out


def sq_error(y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """y_hat: (T B, m), y: (B, m) contiguous -> (T B,) float64 per-row squared distances."""
    batch, m = y.shape
    trials = y_hat.shape[0] // batch
    block = 4 * _block_groups(triton.cdiv(m, 4))
    splits = triton.cdiv(m, block)
    partial = torch.empty(trials, batch, splits, device=y.device, dtype=torch.float32)
    _sq_error_kernel[(batch, splits)](y_hat, y, partial, m, batch, trials, splits, BLOCK=block)
    return partial.double().sum(-1).reshape(-1)
