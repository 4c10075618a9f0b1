"""The `reference` backend: every op of both families in plain torch, float64 throughout.

Slow and obviously right; the oracle every other backend is tested against. It builds on the
spec generators of `stabkern.spec` (signs, Gaussians, element order) and is not a spec itself.

The sign ops materialize S one block at a time (at most `_BLOCK_ELEMS` signs) and accumulate in
float64, so their memory stays O(rows * (n + k)) plus one block, whatever k * n is.
"""

from __future__ import annotations

import torch

from ..spec import flat_rows, gaussian_reference, sign_block, unflat_rows
from .base import FLOAT_DTYPES, Backend, accumulation_dtype

# Signs per materialized block in the sign ops (8 MiB of float64).
_BLOCK_ELEMS = 1 << 20


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


def sphere_noise_reference(x: torch.Tensor, radius: torch.Tensor, *, trials: int, seed: int, stream: int,
                           sample0: int = 0, trial0: int = 0) -> torch.Tensor:
    """float64 `stabkern.ops.sphere_noise`: x (B, ...), radius (B,) -> (trials * B, ...) float64.

    out[t B + b] = x[b] + radius[b] z / ||z||, z the stabkern-noise-v1 vector of sample sample0 + b,
    trial trial0 + t, its elements in the order of `stabkern.spec.flat_rows` (4-D: out is channels_last).
    """
    b = x.shape[0]
    rows = flat_rows(x)
    samples = torch.arange(b, device=x.device).repeat(trials) + sample0
    trial_ids = torch.arange(trials, device=x.device).repeat_interleave(b) + trial0
    z = gaussian_reference(seed, stream, samples, trial_ids, rows.shape[1])
    z = z * (radius.to(x.device, torch.float64).repeat(trials) / z.norm(dim=1))[:, None]
    return unflat_rows(rows.double().repeat(trials, 1) + z, x, trials * b)


def sq_error_reference(y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """float64 `stabkern.ops.sq_error`: y_hat (T B, ...), y (B, ...) -> (T B,) float64,
    out[r] = ||y_hat[r] - y[r mod B]||^2 (both in the same element order)."""
    b = y.shape[0]
    d = y_hat.reshape(-1, b, y[0].numel()).double() - y.reshape(1, b, -1).double()
    return d.square().sum(-1).reshape(-1)


class ReferenceBackend(Backend):
    """Plain torch on any device (meta included: shapes only), float64 throughout."""

    name = "reference"
    families = frozenset({"sign", "noise"})
    devices = ("cpu", "cuda", "mps", "xpu", "meta")
    native_dtypes = FLOAT_DTYPES

    def project(self, x, k, seed, stream, t0, j0, precision):
        return project(x, k, seed, stream, t0, j0).to(accumulation_dtype(x.dtype))

    def reconstruct(self, y, n, scale, seed, stream, t0, j0, precision):
        return reconstruct(y, n, seed, stream, scale, t0, j0).to(accumulation_dtype(y.dtype))

    def sphere_noise(self, rows, radius, trials, seed, stream, sample0, trial0, out_dtype):
        return sphere_noise_reference(rows, radius, trials=trials, seed=seed, stream=stream, sample0=sample0,
                                      trial0=trial0).to(out_dtype)

    def sq_error(self, y_hat, y):
        return sq_error_reference(y_hat, y)
