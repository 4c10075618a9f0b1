"""The sign ops: schemas, checks, dispatch and autograd, all in one place.

S is the k x n matrix S[t, j] = sign(seed, stream, t0 + t, j0 + j) of spec stabkern-sign-v1
(`stabkern.spec.sign_block`). The public functions below validate their arguments and
call `torch.ops.stabkern.*`; those custom ops pick a backend (`backends.py`) and reshape.
Projection and unscaled reconstruction are each other's adjoint, which is their autograd.
"""

from __future__ import annotations

import math
import os
import warnings

import torch

from .backends import BACKENDS, FLOAT_DTYPES, accumulation_dtype

PRECISIONS = ("highest", "high", "medium")
BACKEND_NAMES = ("auto", *BACKENDS)

MAX_ROWS = 1 << 32  # t0 + k <= 2^32: row t is a 32-bit Philox counter word
MAX_COLS = 1 << 38  # j0 + n <= 2^38: j >> 7 is a 31-bit counter word
MAX_SEED = 1 << 64
MAX_STREAM = 1 << 32


class BackendUnavailableError(RuntimeError):
    """No backend (or not the requested one) can take this input; the message says why."""


# --------------------------------------------------------------------------- checks


def _check_int(name: str, value, low: int, high: int) -> int:
    """value as an int in [low, high), else a clear error."""
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            import numpy as np

            if isinstance(value, np.integer):
                value = int(value)
        except ImportError:  # pragma: no cover
            pass
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if not low <= value < high:
        raise ValueError(f"{name} must be in [{low}, {high}), got {value}")
    return value


def _seed_to_int64(seed: int) -> int:
    """Seeds live in [0, 2^64); op schemas carry int64, so the upper half is stored negative."""
    seed = _check_int("seed", seed, 0, MAX_SEED)
    return seed - MAX_SEED if seed >= 1 << 63 else seed


def _seed_from_int64(seed: int) -> int:
    return seed + MAX_SEED if seed < 0 else seed


def _check_tensor(name: str, x) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32, float64, float16 or bfloat16, got {x.dtype}")
    if x.dim() == 0:
        raise ValueError(f"{name} must have at least one dimension (..., size), got a scalar")


def _check_sizes(k: int, n: int, t0: int, j0: int) -> None:
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    if t0 < 0 or t0 + k > MAX_ROWS:
        raise ValueError(f"rows [row_offset, row_offset + k) = [{t0}, {t0 + k}) exceed the counter range "
                         f"[0, 2^32) of spec stabkern-sign-v1")
    if j0 < 0 or j0 + n > MAX_COLS:
        raise ValueError(f"columns [col_offset, col_offset + n) = [{j0}, {j0 + n}) exceed the counter range "
                         f"[0, 2^38) of spec stabkern-sign-v1")
    if j0 % 128:
        raise ValueError(f"col_offset must be a multiple of 128 (one Philox call per 128 columns), got {j0}")


def _check_common(stream: int, backend: str, precision: str) -> None:
    _check_int("stream", stream, 0, MAX_STREAM)
    if backend not in BACKEND_NAMES:
        raise ValueError(f"backend must be one of {BACKEND_NAMES}, got {backend!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")


# --------------------------------------------------------------------------- dispatch


def _auto_order(device: torch.device) -> tuple[str, ...]:
    if device.type == "cpu":
        return ("cpu", "reference")
    if device.type == "cuda":
        return ("cuda", "triton", "reference")
    return ("reference",)


_warned_fallback: set[tuple[str, str]] = set()


def select_backend(requested: str, device: torch.device, dtype: torch.dtype):
    """The backend that runs an op on this input; raises BackendUnavailableError with every reason.

    `requested` is a backend name or "auto"; with "auto", STABKERN_BACKEND (if set) decides.
    """
    if requested == "auto":
        requested = os.environ.get("STABKERN_BACKEND", "auto") or "auto"
        if requested not in BACKEND_NAMES:
            raise ValueError(f"STABKERN_BACKEND must be one of {BACKEND_NAMES}, got {requested!r}")
    names = _auto_order(device) if requested == "auto" else (requested,)
    reasons = []
    for name in names:
        backend = BACKENDS[name]
        reason = backend.missing() or backend.refuses(device, dtype)
        if reason is None:
            if requested == "auto" and name == "reference" and device.type in ("cpu", "cuda"):
                key = (device.type, "; ".join(reasons))
                if key not in _warned_fallback:
                    _warned_fallback.add(key)
                    warnings.warn("stabkern: using the slow reference backend because "
                                  + "; ".join(reasons), RuntimeWarning, stacklevel=3)
            return backend
        reasons.append(f"backend '{name}' cannot run: {reason}")
    raise BackendUnavailableError(
        f"no stabkern backend can take a {dtype} tensor on {device}:\n  " + "\n  ".join(reasons))


def _run(op: str, a: torch.Tensor, out_size: int, backend: str, precision: str, call) -> torch.Tensor:
    """Reshape a (..., m) to 2-D, run `call(backend, a2d)`, reshape to (..., out_size)."""
    lead = a.shape[:-1]
    if a.numel() == 0:
        return a.new_empty(*lead, out_size)
    chosen = select_backend(backend, a.device, a.dtype)
    a2 = a.reshape(-1, a.shape[-1])
    if a2.dtype not in chosen.native_dtypes:
        a2 = a2.to(accumulation_dtype(a2.dtype))
    out = call(chosen, a2.contiguous())
    return out.to(a.dtype).reshape(*lead, out_size)


# --------------------------------------------------------------------------- custom ops


@torch.library.custom_op("stabkern::sign_project", mutates_args=())
def _sign_project(x: torch.Tensor, k: int, seed: int, stream: int, row_offset: int, col_offset: int,
                  backend: str, precision: str) -> torch.Tensor:
    _check_project(x, k, stream, row_offset, col_offset, backend, precision)
    seed = _seed_from_int64(seed)
    return _run("sign_project", x, k, backend, precision,
                lambda b, x2: b.project(x2, k, seed, stream, row_offset, col_offset, precision))


@_sign_project.register_fake
def _(x, k, seed, stream, row_offset, col_offset, backend, precision):
    _check_project(x, k, stream, row_offset, col_offset, backend, precision)
    return x.new_empty(*x.shape[:-1], k)


@torch.library.custom_op("stabkern::sign_reconstruct", mutates_args=())
def _sign_reconstruct(y: torch.Tensor, n: int, seed: int, stream: int, scale: float, row_offset: int,
                      col_offset: int, backend: str, precision: str) -> torch.Tensor:
    _check_reconstruct(y, n, stream, row_offset, col_offset, backend, precision)
    seed = _seed_from_int64(seed)
    return _run("sign_reconstruct", y, n, backend, precision,
                lambda b, y2: b.reconstruct(y2, n, scale, seed, stream, row_offset, col_offset, precision))


@_sign_reconstruct.register_fake
def _(y, n, seed, stream, scale, row_offset, col_offset, backend, precision):
    _check_reconstruct(y, n, stream, row_offset, col_offset, backend, precision)
    return y.new_empty(*y.shape[:-1], n)


def _check_project(x, k, stream, t0, j0, backend, precision):
    _check_tensor("x", x)
    _check_sizes(k, x.shape[-1], t0, j0)
    _check_common(stream, backend, precision)


def _check_reconstruct(y, n, stream, t0, j0, backend, precision):
    _check_tensor("y", y)
    _check_sizes(y.shape[-1], n, t0, j0)
    _check_common(stream, backend, precision)


# Autograd: d(x S^T)/dx is S (reconstruction with scale 1); d(scale y S)/dy is scale S^T.


def _project_setup(ctx, inputs, output):
    x, k, seed, stream, t0, j0, backend, precision = inputs
    ctx.args = (x.shape[-1], seed, stream, t0, j0, backend, precision)


def _project_backward(ctx, grad):
    n, seed, stream, t0, j0, backend, precision = ctx.args
    grad_x = torch.ops.stabkern.sign_reconstruct(grad, n, seed, stream, 1.0, t0, j0, backend, precision)
    return grad_x, None, None, None, None, None, None, None


def _reconstruct_setup(ctx, inputs, output):
    y, n, seed, stream, scale, t0, j0, backend, precision = inputs
    ctx.args = (y.shape[-1], seed, stream, scale, t0, j0, backend, precision)


def _reconstruct_backward(ctx, grad):
    k, seed, stream, scale, t0, j0, backend, precision = ctx.args
    grad_y = torch.ops.stabkern.sign_project(grad, k, seed, stream, t0, j0, backend, precision) * scale
    return grad_y, None, None, None, None, None, None, None, None


_sign_project.register_autograd(_project_backward, setup_context=_project_setup)
_sign_reconstruct.register_autograd(_reconstruct_backward, setup_context=_reconstruct_setup)


# --------------------------------------------------------------------------- public API


def sign_project(x: torch.Tensor, k: int, *, seed: int, stream: int = 0, row_offset: int = 0,
                 col_offset: int = 0, backend: str = "auto", precision: str = "highest") -> torch.Tensor:
    """Project onto k seeded random sign vectors: y = x @ S.T.

    x: (..., n) float32/float64/float16/bfloat16, any device -> y: (..., k), x's dtype.
    S[t, j] = sign(seed, stream, row_offset + t, col_offset + j) of spec stabkern-sign-v1, so
    every leading row of x meets the same S (one row: GEMV form; many rows: GEMM form).
    Equivalent to `x @ sign_matrix(k, n, seed=seed, stream=stream).T`, accumulated in float32
    (float64 for float64 input) without ever materializing S.

    seed in [0, 2^64), stream in [0, 2^32) separates matrices under one seed. row_offset and
    col_offset select a block of a larger S (sharding rows; projecting a long vector in pieces;
    col_offset a multiple of 128). precision: "highest" (default, full float32 accuracy),
    "high" or "medium" let GPU backends use tensor cores (see README); the CPU ignores it.
    backend: "auto" (or STABKERN_BACKEND), "reference", "cpu", "triton", "cuda".
    NaN and Inf in x propagate as IEEE arithmetic says (each y[t] is a +-1 sum of x).
    """
    _check_tensor("x", x)
    return torch.ops.stabkern.sign_project(x, k, _seed_to_int64(seed), stream, row_offset, col_offset,
                                           backend, precision)


def sign_reconstruct(y: torch.Tensor, n: int, *, seed: int, stream: int = 0, scale: float | None = None,
                     row_offset: int = 0, col_offset: int = 0, backend: str = "auto",
                     precision: str = "highest") -> torch.Tensor:
    """Reconstruct from sign coefficients: x_hat = scale * y @ S, scale defaulting to 1/k.

    y: (..., k) -> x_hat: (..., n), y's dtype; S as in `sign_project` (same seed, stream and
    offsets give the same matrix). Equivalent to `scale * y @ sign_matrix(k, n, ...)`.
    With scale=1 this is the adjoint of `sign_project`. When y holds a shard of rows
    (row_offset > 0), pass the full count as scale=1/k_total.
    """
    _check_tensor("y", y)
    k = y.shape[-1]
    if scale is None:
        scale = 1.0 / k if k > 0 else 1.0
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise TypeError(f"scale must be a float, got {type(scale).__name__}")
    if not math.isfinite(scale):
        raise ValueError(f"scale must be finite, got {scale}")
    return torch.ops.stabkern.sign_reconstruct(y, n, _seed_to_int64(seed), stream, float(scale), row_offset,
                                               col_offset, backend, precision)


def sign_compress(A: torch.Tensor, k: int, *, seed: int, stream: int = 0, backend: str = "auto",
                  precision: str = "highest") -> torch.Tensor:
    """Algorithm 1 of Arora et al. (2018) on A viewed as one vector of n = A.numel() entries.

    A_hat = (1/k) sum_t <A, M_t> M_t = sign_reconstruct(sign_project(A.reshape(-1), k), n),
    reshaped to A's shape; unbiased, with E||A_hat - A||_F^2 = (n - 1) ||A||_F^2 / k.
    Memory O(n + k) whatever k * n is.
    """
    _check_tensor("A", A)
    n = A.numel()
    if n == 0:
        raise ValueError("A is empty: there is nothing to compress")
    y = sign_project(A.reshape(-1), k, seed=seed, stream=stream, backend=backend, precision=precision)
    return sign_reconstruct(y, n, seed=seed, stream=stream, backend=backend, precision=precision).reshape(A.shape)


def sign_matrix(k: int, n: int, *, seed: int, stream: int = 0, row_offset: int = 0, col_offset: int = 0,
                dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """S of shape (k, n), materialized (+-1 in `dtype`): for small checks and teaching only.

    S[t, j] = sign(seed, stream, row_offset + t, col_offset + j); `sign_project(x, k, ...)`
    equals `x @ S.T` and `sign_reconstruct(y, n, ...)` equals `y @ S / k`.
    """
    from .spec import sign_block

    k = _check_int("k", k, 1, MAX_ROWS + 1)
    n = _check_int("n", n, 1, MAX_COLS + 1)
    _check_int("row_offset", row_offset, 0, MAX_ROWS)
    _check_int("col_offset", col_offset, 0, MAX_COLS)
    _check_sizes(k, n, row_offset, col_offset)
    _check_int("stream", stream, 0, MAX_STREAM)
    _check_int("seed", seed, 0, MAX_SEED)
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"dtype must be a floating dtype, got {dtype}")
    return sign_block(seed, stream, row_offset, k, col_offset, n, device=device, dtype=dtype)
