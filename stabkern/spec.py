"""The `reference` backend: the sign matrix of spec `stabkern-sign-v1` and the ops, in plain torch.

Slow and obviously right; the oracle every other backend is tested against.

Philox4x32-10 is emulated with int64 tensors holding uint32 values: a 32x32-bit product
would overflow int64, so `_mulhilo32` splits one factor into 16-bit halves (every partial
product stays below 2^49). Works on any device torch supports.

The ops materialize S one block at a time (at most `_BLOCK_ELEMS` signs) and accumulate in
float64, so their memory stays O(rows * (n + k)) plus one block, whatever k * n is.
"""

from __future__ import annotations

import torch

SPEC = "stabkern-sign-v1"

PHILOX_M0 = 0xD2511F53
PHILOX_M1 = 0xCD9E8D57
PHILOX_W0 = 0x9E3779B9
PHILOX_W1 = 0xBB67AE85
_MASK32 = 0xFFFFFFFF

# Signs per materialized block in the reference ops (8 MiB of float64).
_BLOCK_ELEMS = 1 << 20


def _mulhilo32(a: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(hi, lo) 32-bit halves of a * b for a constant a < 2^32 and int64 b holding uint32."""
    p_lo = a * (b & 0xFFFF)  # < 2^48
    p_hi = a * (b >> 16)  # < 2^48
    mid = p_lo + ((p_hi & 0xFFFF) << 16)  # < 2^49
    return (p_hi >> 16) + (mid >> 32), mid & _MASK32


def philox4x32_10(c0, c1, c2, c3, k0: int, k1: int) -> tuple[torch.Tensor, ...]:
    """Random123 Philox4x32-10 on int64 tensors holding uint32 counters; key (k0, k1) as ints.

    Counters broadcast against each other; returns the four output words as int64 tensors.
    """
    for _ in range(10):
        hi0, lo0 = _mulhilo32(PHILOX_M0, c0)
        hi1, lo1 = _mulhilo32(PHILOX_M1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 = (k0 + PHILOX_W0) & _MASK32
        k1 = (k1 + PHILOX_W1) & _MASK32
    return c0, c1, c2, c3


def sign_block(seed: int, stream: int, t0: int, k: int, j0: int, n: int, *, device=None,
               dtype=torch.float64) -> torch.Tensor:
    """S[t0:t0+k, j0:j0+n] of spec stabkern-sign-v1 as a (k, n) tensor of +-1.

    S[t, j] = +1 if bit (j & 31) of word (j >> 5) & 3 of
    Philox4x32-10(key=(seed & 0xffffffff, seed >> 32), counter=(j >> 7, t, stream, 0)) is set,
    else -1.
    """
    k0, k1 = seed & _MASK32, seed >> 32
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


def _blocks(total: int, size: int):
    for start in range(0, total, size):
        yield start, min(size, total - start)


def _block_shape(k: int, n: int) -> tuple[int, int]:
    """(rows, columns) of the sign blocks the ops materialize: at most _BLOCK_ELEMS signs."""
    cols = min(n, max(128, _BLOCK_ELEMS // max(1, min(k, _BLOCK_ELEMS // 128))))
    return max(1, _BLOCK_ELEMS // cols), cols


def project(x: torch.Tensor, k: int, seed: int, stream: int, t0: int = 0, j0: int = 0) -> torch.Tensor:
    """y = x @ S[t0:t0+k, j0:j0+n].T in float64. x: (rows, n) -> (rows, k) float64."""
    rows, n = x.shape
    x = x.to(torch.float64)
    y = torch.zeros(rows, k, dtype=torch.float64, device=x.device)
    rows_t, cols = _block_shape(k, n)
    for tb, tk in _blocks(k, rows_t):
        for jb, jn in _blocks(n, cols):
            s = sign_block(seed, stream, t0 + tb, tk, j0 + jb, jn, device=x.device)
            y[:, tb:tb + tk] += x[:, jb:jb + jn] @ s.T
    return y


def reconstruct(y: torch.Tensor, n: int, seed: int, stream: int, scale: float, t0: int = 0,
                j0: int = 0) -> torch.Tensor:
    """x_hat = scale * y @ S[t0:t0+k, j0:j0+n] in float64. y: (rows, k) -> (rows, n) float64."""
    rows, k = y.shape
    y = y.to(torch.float64)
    out = torch.zeros(rows, n, dtype=torch.float64, device=y.device)
    rows_t, cols = _block_shape(k, n)
    for jb, jn in _blocks(n, cols):
        for tb, tk in _blocks(k, rows_t):
            s = sign_block(seed, stream, t0 + tb, tk, j0 + jb, jn, device=y.device)
            out[:, jb:jb + jn] += y[:, tb:tb + tk] @ s
    return out * scale
