"""The two specs every backend implements: stabkern-sign-v1 (the sign matrix) and stabkern-noise-v1
(the meters' Gaussian noise), as constants, counter limits and plain-torch generators.

This module is the definition, not a backend: it generates blocks of signs and of Gaussians and
says in which order a sample's elements meet the noise. The reference ops built on it (float64
projection, reconstruction, sphere noise, squared error) live in `stabkern.backends.reference`.

Philox4x32-10 (Random123) is emulated with int64 tensors holding uint32 values: a 32x32-bit
product would overflow int64, so `_mulhilo32` splits one factor into 16-bit halves (every
partial product stays below 2^49). Works on any device torch supports.

stabkern-sign-v1. S[t, j] = +1 if bit (j & 31) of word (j >> 5) & 3 of
    Philox4x32-10(key=(seed & 0xffffffff, seed >> 32), counter=(j >> 7, t, stream, 0))
is set, else -1; seed in [0, 2^64), stream in [0, 2^32), row t in [0, 2^32), column j in [0, 2^38).

stabkern-noise-v1. Element j of the noise vector of sample s, trial t, under (seed, stream) is
    (w0, w1, w2, w3) = Philox4x32-10(key=(seed & 0xffffffff, seed >> 32), counter=(j >> 2, s, t, stream + 1))
    (a, b) = (w_{2p}, w_{2p+1}) with p = (j >> 1) & 1
    u = (2 (a >> 9) + 1) / 2^24,  v = (2 (b >> 9) + 1) / 2^24          (in (0, 1), exact in float32)
    z_j = sqrt(-2 ln u) cos(2 pi v) if j is even, sqrt(-2 ln u) sin(2 pi v) if j is odd   (Box-Muller).
Four Gaussians per Philox call; |z| <= sqrt(48 ln 2) (the tail beyond, probability about 8e-9, is cut).
Counter word 3 is stream + 1, never 0 as in the sign spec, so noise and signs never share a counter.
Element order within a sample (`flat_rows`): (h, w, c) for a 4-D activation (C, H, W), i.e.
j = (h W + w) C + c, the memory order of channels_last, whichever memory format the tensor has;
row-major for other shapes.
"""

from __future__ import annotations

import math

import torch

from ._checks import MASK32


class SignSpec:
    """stabkern-sign-v1: the counter ranges its arguments live in (each bound exclusive)."""

    NAME = "stabkern-sign-v1"
    MAX_ROWS = 1 << 32  # t0 + k <= 2^32: row t is a 32-bit counter word
    MAX_COLS = 1 << 38  # j0 + n <= 2^38: j >> 7 is a 31-bit counter word
    MAX_SEED = 1 << 64  # the 64-bit key
    MAX_STREAM = 1 << 32  # stream is counter word 2


class NoiseSpec:
    """stabkern-noise-v1: the counter ranges its arguments live in (each bound exclusive)."""

    NAME = "stabkern-noise-v1"
    MAX_SAMPLES = 1 << 32  # sample index s is counter word 1
    MAX_TRIALS = 1 << 32  # trial index t is counter word 2
    MAX_ELEMENTS = 1 << 34  # j >> 2 is counter word 0
    MAX_SEED = 1 << 64
    # Counter word 3 is stream + 1 (so that it is never the sign spec's 0): stream + 1 < 2^32.
    MAX_STREAM = (1 << 32) - 1


SPEC = SignSpec.NAME
NOISE_SPEC = NoiseSpec.NAME

PHILOX_M0 = 0xD2511F53
PHILOX_M1 = 0xCD9E8D57
PHILOX_W0 = 0x9E3779B9
PHILOX_W1 = 0xBB67AE85


def _mulhilo32(a: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(hi, lo) 32-bit halves of a * b for a constant a < 2^32 and int64 b holding uint32."""
    p_lo = a * (b & 0xFFFF)  # < 2^48
    p_hi = a * (b >> 16)  # < 2^48
    mid = p_lo + ((p_hi & 0xFFFF) << 16)  # < 2^49
    return (p_hi >> 16) + (mid >> 32), mid & MASK32


def philox4x32_10(c0, c1, c2, c3, k0: int, k1: int) -> tuple[torch.Tensor, ...]:
    """Random123 Philox4x32-10 on int64 tensors holding uint32 counters; key (k0, k1) as ints.

    Counters broadcast against each other; returns the four output words as int64 tensors.
    """
    for _ in range(10):
        hi0, lo0 = _mulhilo32(PHILOX_M0, c0)
        hi1, lo1 = _mulhilo32(PHILOX_M1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 = (k0 + PHILOX_W0) & MASK32
        k1 = (k1 + PHILOX_W1) & MASK32
    return c0, c1, c2, c3


def sign_block(seed: int, stream: int, t0: int, k: int, j0: int, n: int, *, device=None,
               dtype=torch.float64) -> torch.Tensor:
    """S[t0:t0+k, j0:j0+n] of spec stabkern-sign-v1 as a (k, n) tensor of +-1."""
    k0, k1 = seed & MASK32, seed >> 32
    g_first, g_last = j0 >> 7, (j0 + n - 1) >> 7
    t = torch.arange(t0, t0 + k, device=device, dtype=torch.int64)[:, None]
    groups = torch.arange(g_first, g_last + 1, device=device, dtype=torch.int64)[None, :]
    zero = torch.zeros((), device=device, dtype=torch.int64)
    words = torch.stack(philox4x32_10(groups, t, zero + stream, zero, k0, k1), dim=-1)  # (k, G, 4)
    shifts = torch.arange(32, device=device, dtype=torch.int64)
    bits = (words[..., None] >> shifts) & 1  # (k, G, 4, 32): column 128 g + 32 w + b
    bits = bits.reshape(k, -1)
    start = j0 - (g_first << 7)
    return (bits[:, start:start + n] * 2 - 1).to(dtype)


def gaussian_reference(seed: int, stream: int, samples: torch.Tensor, trials: torch.Tensor, n: int,
                       j0: int = 0) -> torch.Tensor:
    """Elements j0 .. j0 + n - 1 of the noise vectors of spec stabkern-noise-v1, in float64: row r is
    that of (samples[r], trials[r]). samples, trials: (R,) int64 on any device -> (R, n) on that device.
    """
    device = samples.device
    g0 = j0 >> 2
    groups = torch.arange(g0, ((j0 + n + 3) >> 2), device=device, dtype=torch.int64)[None, :]
    zero = torch.zeros((), device=device, dtype=torch.int64)
    w = philox4x32_10(groups, samples.long()[:, None], trials.long()[:, None], zero + stream + 1,
                      seed & MASK32, seed >> 32)
    z = []
    for p in range(2):
        u = ((w[2 * p] >> 9) * 2 + 1).double() * 2.0 ** -24
        v = ((w[2 * p + 1] >> 9) * 2 + 1).double() * 2.0 ** -24
        r = torch.sqrt(-2.0 * torch.log(u))
        z += [r * torch.cos(2 * math.pi * v), r * torch.sin(2 * math.pi * v)]
    start = j0 - 4 * g0
    return torch.stack(z, dim=-1).reshape(len(samples), -1)[:, start:start + n]


def flat_rows(t: torch.Tensor) -> torch.Tensor:
    """(N, ...) -> (N, m) in the noise spec's element order: (h, w, c) for 4-D tensors (a view when t
    is channels_last), row-major otherwise (a view when contiguous)."""
    if t.dim() == 4:
        return t.permute(0, 2, 3, 1).reshape(t.shape[0], -1)
    return t.reshape(t.shape[0], -1)


def unflat_rows(flat: torch.Tensor, like: torch.Tensor, rows: int) -> torch.Tensor:
    """Inverse of `flat_rows` for `rows` rows shaped like `like`'s samples (4-D: a channels_last tensor)."""
    if like.dim() == 4:
        _, c, h, w = like.shape
        return flat.reshape(rows, h, w, c).permute(0, 3, 1, 2)
    return flat.reshape(rows, *like.shape[1:])
