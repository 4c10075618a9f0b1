"""Every stabkern custom op: schemas, fake implementations, autograd and the public wrappers.

Sign ops (spec stabkern-sign-v1): S is the k x n matrix S[t, j] = sign(seed, stream, t0 + t, j0 + j)
(`stabkern.spec.sign_block`); `sign_project` and `sign_reconstruct` are the custom ops
`stabkern::sign_project` / `stabkern::sign_reconstruct`, each other's adjoint (their autograd);
`sign_compress` and `sign_matrix` are built on them and on the spec.
Noise ops (spec stabkern-noise-v1) of the stability meters: `stabkern::sphere_noise` and
`stabkern::sq_error` (no autograd: the meters run them on detached activations).

The public functions check their arguments (`stabkern._checks`: one policy for every public
function) and call `torch.ops.stabkern.*`; the ops pick a backend with `stabkern.backends.select`
and reshape. No kernel lives here, and nothing here knows about models or meters.

The ops are registered with torch.library's define/impl (`_custom_op`), not `torch.library.custom_op`:
that one wraps each implementation in `torch._disable_dynamo`, which imports torch._dynamo (2-9 s) at
the first call in every process, also in eager mode, where nothing compiles (issue 19).
"""

from __future__ import annotations

import functools
import os
import sys

import torch

from . import _checks
from .backends import BACKEND_NAMES, FLOAT_DTYPES, BackendUnavailableError, accumulation_dtype, select
from .spec import NoiseSpec, SignSpec, flat_rows, unflat_rows

__all__ = ["BackendUnavailableError", "select_backend", "sign_project", "sign_reconstruct", "sign_compress",
           "sign_matrix", "sphere_noise", "sq_error"]

PRECISIONS = ("highest", "high", "medium")

# The sign spec's counter ranges, under the names this module always exported.
MAX_ROWS = SignSpec.MAX_ROWS
MAX_COLS = SignSpec.MAX_COLS
MAX_SEED = SignSpec.MAX_SEED
MAX_STREAM = SignSpec.MAX_STREAM


def select_backend(requested: str, device: torch.device, dtype: torch.dtype):
    """The backend that runs a sign op on this input (`stabkern.backends.select` for the sign family)."""
    return select("sign", requested, device, dtype)


# --------------------------------------------------------------------------- checks


def _seed_to_int64(seed) -> int:
    """Seeds live in [0, 2^64); op schemas carry int64, so the upper half is stored negative."""
    seed = _checks.check_seed(seed)
    return seed - MAX_SEED if seed >= 1 << 63 else seed


def _seed_from_int64(seed: int) -> int:
    return seed + MAX_SEED if seed < 0 else seed


def _refuse_unusual(family: str, backend: str, x: torch.Tensor) -> None:
    """Sparse tensors (no backend takes them) and meta tensors (only `reference` does: the op's fake
    implementation gives the meta result) get the registry's "backend cannot take this" error here,
    before the op's dispatcher sees them; dense tensors on real devices are selected inside the op."""
    if x.layout != torch.strided or x.device.type == "meta":
        select(family, backend, x.device, x.dtype, x.layout)


def _check_tensor(name: str, x, family: str, backend, *, allow_scalar: bool = False) -> None:
    """x is a float tensor of at least one dimension that some backend could take (dense layout)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    _refuse_unusual(family, backend, x)
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32, float64, float16 or bfloat16, got {x.dtype}")
    if x.dim() == 0 and not allow_scalar:
        raise ValueError(f"{name} must have at least one dimension (..., size), got a scalar")


def _check_op_args(k, n, stream, t0, j0, backend, precision) -> None:
    """Ranges of a sign op's arguments (comparisons only, so that symbolic sizes pass under torch.compile)."""
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    if t0 < 0 or t0 + k > MAX_ROWS:
        raise ValueError(f"rows [row_offset, row_offset + k) = [{t0}, {t0 + k}) exceed the counter range "
                         f"[0, 2^32) of spec {SignSpec.NAME}")
    if j0 < 0 or j0 + n > MAX_COLS:
        raise ValueError(f"columns [col_offset, col_offset + n) = [{j0}, {j0 + n}) exceed the counter range "
                         f"[0, 2^38) of spec {SignSpec.NAME}")
    if j0 % 128:
        raise ValueError(f"col_offset must be a multiple of 128 (one Philox call per 128 columns), got {j0}")
    if not 0 <= stream < MAX_STREAM:
        raise ValueError(f"stream must be in [0, 2^32), got {stream}")
    _checks.check_choice("backend", backend, BACKEND_NAMES)
    _checks.check_choice("precision", precision, PRECISIONS)


def _check_sign_args(k, n, stream, t0, j0, backend, precision) -> tuple[int, int, int, int, int]:
    """The public sign functions' integer arguments as Python ints: types first (a TypeError naming the
    argument, before the op schema sees a float), then every range."""
    k, n, stream, t0, j0 = (_checks.as_int(name, v) for name, v in (("k", k), ("n", n), ("stream", stream),
                                                                     ("row_offset", t0), ("col_offset", j0)))
    _check_op_args(k, n, stream, t0, j0, backend, precision)
    return k, n, stream, t0, j0


_SIZE_CHECK_FROM = 1 << 26  # bytes: below this a result is not checked against free memory (reading it costs more)


def free_bytes(device: torch.device) -> int | None:
    """Bytes a new tensor on `device` can take now, or None where unknown: CUDA's free memory; on the CPU,
    Linux's MemAvailable (/proc/meminfo), else the physical memory."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def check_result_size(what: str, shape, dtype: torch.dtype, device: torch.device,
                      fix: str = "lower k (or n), or work in pieces (row_offset / col_offset select a block of S)"
                      ) -> None:
    """ValueError naming the size in bytes when a result of `shape` and `dtype` would not fit in the memory
    `device` has free now (`free_bytes`): refused before anything is allocated, instead of an allocation
    that fails, or succeeds and swaps, or gets the process killed. Results under 64 MiB are not checked.
    `fix` ends the message: what the caller can do instead."""
    numel = 1
    for s in shape:
        numel *= int(s)
    nbytes = numel * dtype.itemsize
    if nbytes < _SIZE_CHECK_FROM:
        return
    free = free_bytes(device)
    if free is not None and nbytes > free:
        raise ValueError(f"{what} {tuple(int(s) for s in shape)} {str(dtype).replace('torch.', '')} would take "
                         f"{nbytes} bytes ({nbytes / 2**30:.1f} GiB), more than the {free} bytes "
                         f"({free / 2**30:.1f} GiB) free on {device}: {fix}")


def _run(a: torch.Tensor, out_size: int, backend: str, call, what: str) -> torch.Tensor:
    """Reshape a (..., m) to 2-D, run `call(chosen_backend, a2d)`, reshape to (..., out_size); a result
    larger than the device's free memory is refused first (`check_result_size`)."""
    lead = a.shape[:-1]
    check_result_size(what, (*lead, out_size), a.dtype, a.device)
    if a.numel() == 0:
        return a.new_empty(*lead, out_size)
    chosen = select("sign", backend, a.device, a.dtype)
    a2 = a.reshape(-1, a.shape[-1])
    if a2.dtype not in chosen.native_dtypes:
        a2 = a2.to(accumulation_dtype(a2.dtype))
    out = call(chosen, a2.contiguous())
    return out.to(a.dtype).reshape(*lead, out_size)


# --------------------------------------------------------------------------- registration

_LIBRARY = torch.library.Library("stabkern", "FRAGMENT")


def _custom_op(fn):
    """Define the op stabkern::<fn's name without its leading underscore> with the schema of fn's annotations
    (no argument mutated; tagged pt2_compliant as torch.library.custom_op tags it) and fn as its
    implementation on every device; returns the op's name "stabkern::<name>" for the register_* calls.

    The implementation runs with Dynamo disabled, as custom_op's does (Dynamo never traces into it: under
    torch.compile the op is opaque and its fake implementation is traced), but torch._dynamo is looked up
    only once something has imported it: before that, no frame can be under Dynamo, so the eager path
    never imports it."""
    name = fn.__name__.lstrip("_")
    _LIBRARY.define(name + torch.library.infer_schema(fn, mutates_args=()), tags=(torch.Tag.pt2_compliant_tag,))

    @functools.wraps(fn)
    def implementation(*args):
        dynamo = sys.modules.get("torch._dynamo")
        if dynamo is None or not hasattr(dynamo, "disable"):
            return fn(*args)
        if implementation.without_dynamo is None:
            implementation.without_dynamo = dynamo.disable(fn, recursive=True)
        return implementation.without_dynamo(*args)

    implementation.without_dynamo = None
    _LIBRARY.impl(name, implementation, "CompositeExplicitAutograd")
    return f"stabkern::{name}"


def _register_fake(op: str):
    """Decorator: fn becomes op's fake (meta) implementation."""
    return lambda fn: torch.library.register_fake(op, fn, lib=_LIBRARY)


def _register_vmap(op: str):
    """Decorator: fn becomes op's vmap rule."""
    return lambda fn: torch.library.register_vmap(op, fn, lib=_LIBRARY)


# --------------------------------------------------------------------------- sign custom ops


def _sign_project(x: torch.Tensor, k: int, seed: int, stream: int, row_offset: int, col_offset: int,
                  backend: str, precision: str) -> torch.Tensor:
    _check_op_args(k, x.shape[-1], stream, row_offset, col_offset, backend, precision)
    seed = _seed_from_int64(seed)
    return _run(x, k, backend, lambda b, x2: b.project(x2, k, seed, stream, row_offset, col_offset, precision),
                "sign_project: the result")


SIGN_PROJECT = _custom_op(_sign_project)


@_register_fake(SIGN_PROJECT)
def _(x, k, seed, stream, row_offset, col_offset, backend, precision):
    _check_op_args(k, x.shape[-1], stream, row_offset, col_offset, backend, precision)
    return x.new_empty(*x.shape[:-1], k)


def _sign_reconstruct(y: torch.Tensor, n: int, seed: int, stream: int, scale: float, row_offset: int,
                      col_offset: int, backend: str, precision: str) -> torch.Tensor:
    _check_op_args(y.shape[-1], n, stream, row_offset, col_offset, backend, precision)
    seed = _seed_from_int64(seed)
    return _run(y, n, backend,
                lambda b, y2: b.reconstruct(y2, n, scale, seed, stream, row_offset, col_offset, precision),
                "sign_reconstruct: the result")


SIGN_RECONSTRUCT = _custom_op(_sign_reconstruct)


@_register_fake(SIGN_RECONSTRUCT)
def _(y, n, seed, stream, scale, row_offset, col_offset, backend, precision):
    _check_op_args(y.shape[-1], n, stream, row_offset, col_offset, backend, precision)
    return y.new_empty(*y.shape[:-1], n)


# Autograd: d(x S^T)/dx is S (reconstruction with scale 1); d(scale y S)/dy is scale S^T. The formula serves
# two entries: the custom ops' registered autograd (torch.ops.stabkern.* called directly) and the
# autograd.Functions below, which the public functions go through. torch.func transforms (jacrev, grad,
# vjp, vmap) need the latter: they refuse an autograd.Function without a setup_context staticmethod, and
# the one torch generates for a custom op's registered autograd has none (pytorch/pytorch#179652). Dynamo
# in turn refuses an autograd.Function with a custom jvp, so under torch.compile the ops are called
# directly (Dynamo traces their registered autograd): `_project` / `_reconstruct` choose.


def _project(x, k, seed, stream, t0, j0, backend, precision):
    """torch.ops.stabkern.sign_project with autograd that torch.func transforms and torch.compile both take."""
    if torch.compiler.is_compiling():
        return torch.ops.stabkern.sign_project(x, k, seed, stream, t0, j0, backend, precision)
    return _Project.apply(x, k, seed, stream, t0, j0, backend, precision)


def _reconstruct(y, n, seed, stream, scale, t0, j0, backend, precision):
    """torch.ops.stabkern.sign_reconstruct with autograd that torch.func and torch.compile both take."""
    if torch.compiler.is_compiling():
        return torch.ops.stabkern.sign_reconstruct(y, n, seed, stream, scale, t0, j0, backend, precision)
    return _Reconstruct.apply(y, n, seed, stream, scale, t0, j0, backend, precision)


def _project_setup(ctx, inputs, output):
    x, k, seed, stream, t0, j0, backend, precision = inputs
    ctx.args = (x.shape[-1], seed, stream, t0, j0, backend, precision)
    ctx.op_args = inputs[1:]  # for the forward-mode derivative: the op is linear in x


def _project_backward(ctx, grad):
    n, seed, stream, t0, j0, backend, precision = ctx.args
    grad_x = _reconstruct(grad, n, seed, stream, 1.0, t0, j0, backend, precision)
    return grad_x, None, None, None, None, None, None, None


def _reconstruct_setup(ctx, inputs, output):
    y, n, seed, stream, scale, t0, j0, backend, precision = inputs
    ctx.args = (y.shape[-1], seed, stream, scale, t0, j0, backend, precision)
    ctx.op_args = inputs[1:]


def _reconstruct_backward(ctx, grad):
    k, seed, stream, scale, t0, j0, backend, precision = ctx.args
    grad_y = _project(grad, k, seed, stream, t0, j0, backend, precision) * scale
    return grad_y, None, None, None, None, None, None, None, None


torch.library.register_autograd(SIGN_PROJECT, _project_backward, setup_context=_project_setup, lib=_LIBRARY)
torch.library.register_autograd(SIGN_RECONSTRUCT, _reconstruct_backward, setup_context=_reconstruct_setup,
                                lib=_LIBRARY)


# vmap: every leading row of the input meets the same S, so a vmapped dimension is one more leading row:
# move it to the front and call the op once (no loop). The autograd.Functions' vmap rules are generated
# from these (their forward and backward only call the ops).


def _batched_first(x: torch.Tensor, in_dim: int | None, batch_size: int) -> torch.Tensor:
    return x.movedim(in_dim, 0) if in_dim is not None else x.expand(batch_size, *x.shape)


@_register_vmap(SIGN_PROJECT)
def _(info, in_dims, x, k, seed, stream, row_offset, col_offset, backend, precision):
    x = _batched_first(x, in_dims[0], info.batch_size)
    return torch.ops.stabkern.sign_project(x, k, seed, stream, row_offset, col_offset, backend, precision), 0


@_register_vmap(SIGN_RECONSTRUCT)
def _(info, in_dims, y, n, seed, stream, scale, row_offset, col_offset, backend, precision):
    y = _batched_first(y, in_dims[0], info.batch_size)
    return torch.ops.stabkern.sign_reconstruct(y, n, seed, stream, scale, row_offset, col_offset, backend,
                                               precision), 0


class _Project(torch.autograd.Function):
    """torch.ops.stabkern.sign_project with the same autograd, in a form torch.func transforms accept, and
    its forward-mode derivative (the op is linear: the tangent's projection)."""

    generate_vmap_rule = True
    setup_context = staticmethod(_project_setup)
    backward = staticmethod(_project_backward)

    @staticmethod
    def forward(x, k, seed, stream, t0, j0, backend, precision):
        return torch.ops.stabkern.sign_project(x, k, seed, stream, t0, j0, backend, precision)

    @staticmethod
    def jvp(ctx, x_tangent, *_):
        return _project(x_tangent, *ctx.op_args)


class _Reconstruct(torch.autograd.Function):
    """torch.ops.stabkern.sign_reconstruct with the same autograd, in a form torch.func transforms accept, and
    its forward-mode derivative (the tangent's reconstruction)."""

    generate_vmap_rule = True
    setup_context = staticmethod(_reconstruct_setup)
    backward = staticmethod(_reconstruct_backward)

    @staticmethod
    def forward(y, n, seed, stream, scale, t0, j0, backend, precision):
        return torch.ops.stabkern.sign_reconstruct(y, n, seed, stream, scale, t0, j0, backend, precision)

    @staticmethod
    def jvp(ctx, y_tangent, *_):
        return _reconstruct(y_tangent, *ctx.op_args)


# --------------------------------------------------------------------------- sign public API


def sign_project(x: torch.Tensor, k: int, *, seed: int, stream: int = 0, row_offset: int = 0,
                 col_offset: int = 0, backend: str = "auto", precision: str = "highest") -> torch.Tensor:
    """Project onto k seeded random sign vectors: y = x @ S.T.

    x: (..., n) float32/float64/float16/bfloat16, any device -> y: (..., k), x's dtype.
    S[t, j] = sign(seed, stream, row_offset + t, col_offset + j) of spec stabkern-sign-v1, so
    every leading row of x meets the same S (one row: GEMV form; many rows: GEMM form).
    Equivalent to `x @ sign_matrix(k, n, seed=seed, stream=stream).T`, accumulated in float32
    (float64 for float64 input) without ever materializing S; the float64 reference is
    `stabkern.backends.reference.project`.

    seed in [0, 2^64), stream in [0, 2^32) separates matrices under one seed. row_offset and
    col_offset select a block of a larger S (sharding rows; projecting a long vector in pieces;
    col_offset a multiple of 128). precision: "highest" (default, full float32 accuracy),
    "high" or "medium" let GPU backends use tensor cores (see README); the CPU ignores it.
    backend: "auto" (or STABKERN_BACKEND), "reference", "cpu", "triton", "cuda".
    NaN and Inf in x propagate as IEEE arithmetic says (each y[t] is a +-1 sum of x).
    Meta tensors give a meta result of the right shape (the op's fake implementation).
    """
    _check_tensor("x", x, "sign", backend)
    k, _, stream, row_offset, col_offset = _check_sign_args(k, x.shape[-1], stream, row_offset, col_offset, backend,
                                                            precision)
    return _project(x, k, _seed_to_int64(seed), stream, row_offset, col_offset, backend, precision)


def sign_reconstruct(y: torch.Tensor, n: int, *, seed: int, stream: int = 0, scale: float | None = None,
                     row_offset: int = 0, col_offset: int = 0, backend: str = "auto",
                     precision: str = "highest") -> torch.Tensor:
    """Reconstruct from sign coefficients: x_hat = scale * y @ S, scale defaulting to 1/k.

    y: (..., k) -> x_hat: (..., n), y's dtype; S as in `sign_project` (same seed, stream and
    offsets give the same matrix). Equivalent to `scale * y @ sign_matrix(k, n, ...)`
    (`stabkern.backends.reference.reconstruct` in float64). With scale=1 this is the adjoint of
    `sign_project`. When y holds a shard of rows (row_offset > 0), pass the full count as
    scale=1/k_total.
    """
    _check_tensor("y", y, "sign", backend)
    k = y.shape[-1]
    _, n, stream, row_offset, col_offset = _check_sign_args(k, n, stream, row_offset, col_offset, backend, precision)
    scale = 1.0 / k if scale is None else _checks.check_float("scale", scale)
    return _reconstruct(y, n, _seed_to_int64(seed), stream, scale, row_offset, col_offset, backend,
                              precision)


def sign_compress(A: torch.Tensor, k: int, *, seed: int, stream: int = 0, backend: str = "auto",
                  precision: str = "highest") -> torch.Tensor:
    """Algorithm 1 of Arora et al. (2018) on A viewed as one vector of n = A.numel() entries.

    A: any shape (a 0-d A is one entry, n = 1) -> A_hat of A's shape and dtype.
    A_hat = (1/k) sum_t <A, M_t> M_t = sign_reconstruct(sign_project(A.reshape(-1), k), n),
    unbiased, with E||A_hat - A||_F^2 = (n - 1) ||A||_F^2 / k. Memory O(n + k) whatever k * n is.
    """
    _check_tensor("A", A, "sign", backend, allow_scalar=True)
    n = A.numel()
    if n == 0:
        raise ValueError("A is empty: there is nothing to compress")
    y = sign_project(A.reshape(-1), k, seed=seed, stream=stream, backend=backend, precision=precision)
    return sign_reconstruct(y, n, seed=seed, stream=stream, backend=backend, precision=precision).reshape(A.shape)


def sign_matrix(k: int, n: int, *, seed: int, stream: int = 0, row_offset: int = 0, col_offset: int = 0,
                dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """S of shape (k, n), materialized (+-1 in `dtype`): for small checks and teaching only.

    S[t, j] = sign(seed, stream, row_offset + t, col_offset + j) (`stabkern.spec.sign_block`);
    `sign_project(x, k, ...)` equals `x @ S.T` and `sign_reconstruct(y, n, ...)` equals `y @ S / k`.
    """
    from .spec import sign_block

    k, n, stream, row_offset, col_offset = _check_sign_args(k, n, stream, row_offset, col_offset, "auto", "highest")
    seed = _checks.check_seed(seed)
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"dtype must be a floating dtype, got {dtype}")
    check_result_size("sign_matrix: S", (k, n), dtype, torch.device(device) if device is not None else
                      torch.empty(0).device)
    return sign_block(seed, stream, row_offset, k, col_offset, n, device=device, dtype=dtype)


# --------------------------------------------------------------------------- noise custom ops


def _paired_rows(y_hat: torch.Tensor, y: torch.Tensor):
    """(N, m) views of y_hat and y with the same element order, without copying y_hat: a sum over a
    row does not care which order, only that both agree."""
    if y_hat.dim() == 4 and y_hat.is_contiguous(memory_format=torch.channels_last) and not y_hat.is_contiguous():
        return flat_rows(y_hat), flat_rows(y)
    return y_hat.reshape(y_hat.shape[0], -1), y.reshape(y.shape[0], -1)


def _check_noise_args(x, radius, trials, seed, stream, sample0, trial0, backend, *, types=True) -> tuple[int, ...]:
    """A noise op's arguments; `types` (the public function) also checks and converts the integers."""
    if not isinstance(x, torch.Tensor) or not isinstance(radius, torch.Tensor):
        raise TypeError(f"x and radius must be torch.Tensors, got {type(x).__name__} and {type(radius).__name__}")
    _refuse_unusual("noise", backend, x)
    if x.dim() < 2 or x.shape[0] == 0 or x[0].numel() == 0:
        raise ValueError(f"x must be (B, ...) with B >= 1 and non-empty rows; got shape {tuple(x.shape)}")
    if not x.is_floating_point() or radius.shape != (x.shape[0],):
        raise ValueError(f"x must be floating and radius of shape ({x.shape[0]},); got {x.dtype}, "
                         f"{tuple(radius.shape)}")
    if x[0].numel() >= NoiseSpec.MAX_ELEMENTS:
        raise ValueError(f"x has {x[0].numel()} elements per sample; spec {NoiseSpec.NAME} counts at most 2^34")
    if types:
        trials, stream, sample0, trial0 = (_checks.as_int(name, v) for name, v in (
            ("trials", trials), ("stream", stream), ("sample0", sample0), ("trial0", trial0)))
        seed = _checks.check_seed(seed)
    if trials < 1:
        raise ValueError(f"trials must be >= 1, got {trials}")
    if not 0 <= stream < NoiseSpec.MAX_STREAM:
        raise ValueError(f"stream must be in [0, 2^32 - 1) (spec {NoiseSpec.NAME}), got {stream}")
    if not 0 <= seed < NoiseSpec.MAX_SEED:
        raise ValueError(f"seed must be in [0, 2^64), got {seed}")
    if sample0 < 0 or sample0 + x.shape[0] > NoiseSpec.MAX_SAMPLES:
        raise ValueError(f"sample indices [{sample0}, {sample0 + x.shape[0]}) must lie in [0, 2^32)")
    if trial0 < 0 or trial0 + trials > NoiseSpec.MAX_TRIALS:
        raise ValueError(f"trial indices [{trial0}, {trial0 + trials}) must lie in [0, 2^32)")
    _checks.check_choice("backend", backend, BACKEND_NAMES)
    return trials, seed, stream, sample0, trial0


def _noise_out(x: torch.Tensor, trials: int, dtype: torch.dtype) -> torch.Tensor:
    """An empty (trials B, ...) tensor laid out as the noise op returns it (4-D: channels_last)."""
    shape = (trials * x.shape[0], *x.shape[1:])
    if x.dim() == 4:
        return torch.empty(shape, dtype=dtype, device=x.device, memory_format=torch.channels_last)
    return torch.empty(shape, dtype=dtype, device=x.device)


def _sphere_noise(x: torch.Tensor, radius: torch.Tensor, trials: int, seed: int, stream: int, sample0: int,
                  trial0: int, out_dtype: torch.dtype, backend: str) -> torch.Tensor:
    seed = _seed_from_int64(seed)
    _check_noise_args(x, radius, trials, seed, stream, sample0, trial0, backend, types=False)
    chosen = select("noise", backend, x.device, x.dtype)
    flat = chosen.sphere_noise(flat_rows(x), radius, trials, seed, stream, sample0, trial0, out_dtype)
    return unflat_rows(flat, x, trials * x.shape[0])


SPHERE_NOISE = _custom_op(_sphere_noise)


@_register_fake(SPHERE_NOISE)
def _(x, radius, trials, seed, stream, sample0, trial0, out_dtype, backend):
    _check_noise_args(x, radius, trials, _seed_from_int64(seed), stream, sample0, trial0, backend, types=False)
    return _noise_out(x, trials, out_dtype)


def _sq_error(y_hat: torch.Tensor, y: torch.Tensor, backend: str) -> torch.Tensor:
    _check_error_args(y_hat, y, backend)
    chosen = select("noise", backend, y.device, y.dtype)
    return chosen.sq_error(*_paired_rows(y_hat, y))


SQ_ERROR = _custom_op(_sq_error)


@_register_fake(SQ_ERROR)
def _(y_hat, y, backend):
    _check_error_args(y_hat, y, backend)
    return y_hat.new_empty(y_hat.shape[0], dtype=torch.float64)


def _no_derivative(ctx, *grads):
    raise RuntimeError("stabkern's noise ops (sphere_noise, sq_error) have no derivative: call them on detached "
                       "tensors, as the stability meters do")


torch.library.register_autograd(SPHERE_NOISE, _no_derivative, lib=_LIBRARY)
torch.library.register_autograd(SQ_ERROR, _no_derivative, lib=_LIBRARY)


def _check_error_args(y_hat, y, backend) -> None:
    if not isinstance(y_hat, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise TypeError(f"y_hat and y must be torch.Tensors, got {type(y_hat).__name__} and {type(y).__name__}")
    _refuse_unusual("noise", backend, y_hat)
    _refuse_unusual("noise", backend, y)
    if y.dim() < 1 or y.shape[0] == 0 or y_hat.shape[0] % y.shape[0] or y_hat.shape[1:] != y.shape[1:]:
        raise ValueError(f"y_hat must be (T B, ...) over y (B, ...); got {tuple(y_hat.shape)} and {tuple(y.shape)}")
    _checks.check_choice("backend", backend, BACKEND_NAMES)


# --------------------------------------------------------------------------- noise public API


def sphere_noise(x: torch.Tensor, radius: torch.Tensor, *, trials: int, seed: int, stream: int, sample0: int = 0,
                 trial0: int = 0, out_dtype: torch.dtype | None = None, backend: str = "auto") -> torch.Tensor:
    """Noisy copies of x at exact distance radius: x (B, ...), radius (B,) -> (trials * B, ...).

    out[t B + b] = x[b] + radius[b] z / ||z||, z = the stabkern-noise-v1 vector of sample sample0 + b,
    trial trial0 + t (4-D x: elements in (h, w, c) order, and out is channels_last), so
    ||out[t B + b] - x[b]|| = radius[b] to rounding. Equals
    `stabkern.backends.reference.sphere_noise_reference` to floating-point tolerance; backends agree
    to that tolerance, not bit for bit. seed in [0, 2^64), stream in [0, 2^32 - 1), sample and trial
    indices in [0, 2^32). out_dtype defaults to x's dtype. backend: "auto", "reference", "cpu", "triton".
    """
    trials, seed, stream, sample0, trial0 = _check_noise_args(x, radius, trials, seed, stream, sample0, trial0,
                                                              backend)
    out_dtype = out_dtype or x.dtype
    return torch.ops.stabkern.sphere_noise(x, radius, trials, _seed_to_int64(seed), stream, sample0, trial0,
                                           out_dtype, backend)


def sq_error(y_hat: torch.Tensor, y: torch.Tensor, *, backend: str = "auto") -> torch.Tensor:
    """Per-row squared distance to the clean row: y_hat (T B, ...), y (B, ...) -> (T B,) float64.

    out[r] = ||y_hat[r] - y[r mod B]||^2, accumulated in float32 blocks summed in float64 (float64 for
    float64 input). Equals `stabkern.backends.reference.sq_error_reference` to floating-point
    tolerance. Any memory formats (a channels_last pair is read in place); y_hat may be
    bfloat16/float16 with a float32 y.
    """
    _check_error_args(y_hat, y, backend)
    return torch.ops.stabkern.sq_error(y_hat, y, backend)
