"""Drop-in sketched layers: `SketchedLinear` and `SketchedConv2d` store only sign coefficients.

Design: a layer keeps the k coefficients <A, M_t> of Algorithm 1 (Arora et al., 2018), the
seed and stream that name its sign matrix (spec stabkern-sign-v1) and its shape; the weight
A_hat is regenerated from them by `sign_reconstruct` when needed. Regeneration costs k * n
sign-MACs, so the weight is cached per (device, dtype) together with a copy of the
coefficients, seed and stream it was built from, and reused only while they are equal in value,
shape, dtype and device. Version counters would not do: `load_state_dict(assign=True)`,
`coefficients.data = ...`, a new Parameter or buffer, `vector_to_parameters` all bring fresh
tensors at version 0, and writes through `.data` never bump a version. Comparing the stored
numbers costs O(k c_out) per forward against O(k n) to regenerate. `.to()` / `.half()` /
`.cuda()` (`_apply`) clear the cache.

k is at least 1 and below the entries one sketch covers (n in tensor mode, n / c_out in filter
mode): a larger k stores no fewer numbers than the dense weight, and is refused before anything
is allocated unless `allow_no_compression=True`; coefficients that would not fit in the device's
free memory are refused too, naming their bytes, before any allocation. A checkpoint's seed, stream and coefficients
are validated on load (`load_state_dict` raises naming the key).

Two modes, both with S the k x m matrix of (seed, stream):
- "tensor": the whole weight as one vector (m = n = weight.numel()), coefficients (k,):
  A_hat = reshape(c S / k). One GEMV-form projection.
- "filter": each output channel's filter (row of the (c_out, m) view, m = n / c_out) against
  the same S, coefficients (c_out, k): A_hat[o] = c[o] S / k. One GEMM-form projection.

Coefficients are a Parameter that does not require grad by default (counted by
`parameters()`, skipped by optimizers); `coefficients.requires_grad_(True)` fine-tunes them,
and then the weight is regenerated, with autograd, at every forward instead of cached.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ._checks import MASK32, check_choice, check_int, check_positive_int, check_seed
from .ops import (BACKEND_NAMES, MAX_ROWS, MAX_STREAM, PRECISIONS, check_result_size, sign_project,
                  sign_reconstruct)

MODES = ("tensor", "filter")
FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
_CHUNK = 1 << 22  # elements per piece when a whole-weight pass would need a full-size temporary


class NoCompressionWarning(UserWarning):
    """k is at least the number of entries it stands for: compress_model left such layers dense (one
    warning per call, naming them)."""


def check_mode(mode) -> str:
    return check_choice("mode", mode, MODES)


def check_k(k, name: str = "k") -> int:
    """k as an int in [1, 2^32] (the sign ops' row range), else a TypeError / ValueError naming it."""
    return check_int(name, k, 1, MAX_ROWS + 1)


def row_length(shape, mode: str) -> int:
    """Entries one sketch covers: the whole weight (tensor mode) or one output channel (filter)."""
    n = math.prod(shape)
    return n if mode == "tensor" else n // shape[0]


def compresses(k: int, shape, mode: str) -> bool:
    """k below the entries one sketch covers: the sketch stores fewer numbers than the dense weight."""
    return k < row_length(shape, mode)


def no_compression_message(k: int, shape, mode: str, name: str = "layer") -> str:
    what = "the weight" if mode == "tensor" else "each filter"
    return (f"{name}: k = {k} >= {row_length(shape, mode)} entries of {what} ({mode} mode): no compression "
            f"(the sketch would store at least as many numbers as the dense weight)")


def refuse_no_compression(k: int, shape, mode: str, name: str, allow: bool) -> None:
    """ValueError (naming the layer and the way out) when k >= the entries one sketch covers, unless allow."""
    if not allow and not compresses(k, shape, mode):
        raise ValueError(no_compression_message(k, shape, mode, name)
                         + ": keep the layer dense, lower k, or pass allow_no_compression=True")


def check_coefficients_fit(k: int, shape, mode: str, name: str, dtype, device, copies: int = 1) -> None:
    """ValueError naming the bytes when `copies` coefficient tensors of k (tensor mode) or c_out * k (filter
    mode) numbers would not fit in the device's free memory (`stabkern.ops.check_result_size`), before any
    is allocated: allow_no_compression=True takes k beyond the entries a sketch covers (the error keeps
    falling), but k = 2^32 on a small layer is 16 GiB of float32 coefficients."""
    coeff_shape = (k,) if mode == "tensor" else (shape[0], k)
    dtype = dtype or torch.get_default_dtype()
    device = torch.device(device) if device is not None else torch.get_default_device()
    what = f"{name}: k = {k}, {'the coefficients' if copies == 1 else 'the coefficients and their projection'}"
    check_result_size(what, (copies, *coeff_shape), dtype, device,
                      fix=f"lower k (the weight has {math.prod(shape)} entries; k beyond the "
                          f"{row_length(shape, mode)} one sketch covers stores more numbers than the dense weight)")


def check_weight(weight: torch.Tensor, name: str = "layer") -> None:
    """Refuse weights the sign ops cannot compress: uninitialized, non-float, empty or non-finite."""
    if isinstance(weight, nn.parameter.UninitializedParameter):
        raise ValueError(f"{name}: the weight is uninitialized (a lazy module): run one forward first")
    if weight.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name}: only float32/float64/float16/bfloat16 weights can be compressed, got {weight.dtype}")
    if weight.numel() == 0:
        raise ValueError(f"{name}: the weight is empty: there is nothing to compress")
    flat = weight.detach().reshape(-1)  # in pieces: isfinite of the whole weight is an n-byte temporary
    for i in range(0, flat.numel(), _CHUNK):
        if not bool(torch.isfinite(flat[i:i + _CHUNK]).all()):
            raise ValueError(f"{name}: the weight holds NaN or Inf")


def project_weight(weight: torch.Tensor, k: int, *, mode: str, seed: int, stream: int = 0,
                   backend: str = "auto", precision: str = "highest") -> torch.Tensor:
    """Coefficients of Algorithm 1: weight (c_out, ...) -> (k,) in tensor mode, (c_out, k) in filter mode.

    tensor: c = S vec(weight); filter: c[o] = S weight[o].reshape(-1), S = sign_matrix(k, m, seed, stream).
    In the weight's dtype (accumulated in float32, float64 for float64).
    """
    check_mode(mode)
    rows = weight.reshape(1 if mode == "tensor" else weight.shape[0], -1)
    c = sign_project(rows, check_k(k), seed=seed, stream=stream, backend=backend, precision=precision)
    return c[0] if mode == "tensor" else c


def reconstruct_weight(coefficients: torch.Tensor, shape, *, mode: str, seed: int, stream: int = 0,
                       backend: str = "auto", precision: str = "highest") -> torch.Tensor:
    """A_hat of the given shape from `project_weight`'s coefficients: (c S / k) reshaped.

    Unbiased: E A_hat = A over seeds; E||A_hat - A||_F^2 = (m - 1) ||A||_F^2 / k per sketched
    vector of m entries (m = n in tensor mode, n / c_out per filter in filter mode).
    """
    check_mode(mode)
    w = sign_reconstruct(coefficients, row_length(shape, mode), seed=seed, stream=stream, backend=backend,
                         precision=precision)
    return w.reshape(shape)


def relative_error(coefficients: torch.Tensor, weight: torch.Tensor, *, mode: str, seed: int, stream: int = 0,
                   backend: str = "auto", precision: str = "highest") -> float:
    """||A_hat - A||_F / ||A||_F (0 for A = 0), A_hat = reconstruct_weight(coefficients, weight.shape, ...).

    A_hat is regenerated piece by piece (row and 128-aligned column blocks of about 4M entries,
    the same numbers as the whole: the sign ops' offsets name the same S), each piece in float32
    (float64 for float64 weights) and the pieces summed in float64, so no temporary of the
    weight's size is made. float32 is ample: for k < m the error is about sqrt((m - 1) / k) >= 1,
    far above the float32 rounding of the difference.
    """
    check_mode(mode)
    rows = weight.detach().reshape(1 if mode == "tensor" else weight.shape[0], -1)
    c = coefficients.detach().reshape(len(rows), -1)
    r, m = rows.shape
    k = c.shape[1]
    acc = torch.float64 if weight.dtype == torch.float64 else torch.float32
    row_step = max(1, _CHUNK // m)
    col_step = min(m, _CHUNK)  # _CHUNK is a multiple of 128, as col_offset must be
    diff2 = norm2 = 0.0
    for i in range(0, r, row_step):
        for j in range(0, m, col_step):
            a = rows[i:i + row_step, j:j + col_step]
            a_hat = sign_reconstruct(c[i:i + row_step], a.shape[1], seed=seed, stream=stream, scale=1.0 / k,
                                     col_offset=j, backend=backend, precision=precision)
            d = a_hat.to(acc)  # in place from here: one piece at a time
            del a_hat
            diff2 += float(d.sub_(a).square_().sum())
            norm2 += float(d.copy_(a).square_().sum())
    return math.sqrt(diff2 / norm2) if norm2 > 0 else 0.0


class _SketchedLayer(nn.Module):
    """Shared state of the sketched layers: coefficients, seed, stream, weight shape, the cache."""

    def _init_sketch(self, weight_shape, k, mode, seed, stream, backend, precision, factory,
                     allow_no_compression):
        self.mode = check_mode(mode)
        self.k = check_k(k)
        self.weight_shape = tuple(int(s) for s in weight_shape)
        self.backend = check_choice("backend", backend, BACKEND_NAMES)
        self.precision = check_choice("precision", precision, PRECISIONS)
        seed = check_seed(seed)
        stream = check_int("stream", stream, 0, MAX_STREAM)
        # Before any allocation: k >= m would store k (or c_out * k) numbers for at most as many weights.
        refuse_no_compression(self.k, self.weight_shape, self.mode, type(self).__name__, allow_no_compression)
        check_coefficients_fit(self.k, self.weight_shape, self.mode, type(self).__name__, factory["dtype"],
                               factory["device"])
        coeff_shape = (self.k,) if mode == "tensor" else (self.weight_shape[0], self.k)
        self.coefficients = nn.Parameter(torch.zeros(coeff_shape, **factory), requires_grad=False)
        # Seeds span [0, 2^64) but int64 tops out at 2^63 - 1: keep the two 32-bit halves.
        device = factory["device"]
        self.register_buffer("seed", torch.tensor([seed & MASK32, seed >> 32], dtype=torch.int64, device=device))
        self.register_buffer("stream", torch.tensor(stream, dtype=torch.int64, device=device))
        self._ids = (seed, stream)  # the buffers' values as ints, for torch.compile (`_sign_ids`)
        self._weight_cache: dict = {}

    @property
    def seed_value(self) -> int:
        return _seed_from_buffer(self.seed, "seed")

    @property
    def stream_value(self) -> int:
        return _stream_from_buffer(self.stream, "stream")

    @property
    def n(self) -> int:
        """Entries of the dense weight."""
        return math.prod(self.weight_shape)

    @property
    def stored(self) -> int:
        """Numbers the sketch stores for the weight (k, or c_out * k in filter mode)."""
        return self.coefficients.numel()

    def _sign_ids(self) -> tuple[int, int]:
        """(seed, stream) as Python ints for the sign ops: read from the buffers (and remembered) in eager
        mode. Under torch.compile, reading a buffer's value into Python is a data-dependent guard that
        fullgraph=True refuses: there the remembered ints serve (constants to the compiler, which guards on
        them), with an in-graph check that the buffers still hold them."""
        if torch.compiler.is_compiling():
            seed, stream = self._ids
            same = (self.seed[0] == seed & MASK32) & (self.seed[1] == seed >> 32) & (self.stream == stream)
            torch._assert_async(same, "the seed or stream buffer changed since the layer last ran eagerly: run "
                                      "it once outside torch.compile, or change them through load_state_dict")
            return seed, stream
        self._ids = (self.seed_value, self.stream_value)
        return self._ids

    def _regenerate(self) -> torch.Tensor:
        seed, stream = self._sign_ids()
        return reconstruct_weight(self.coefficients, self.weight_shape, mode=self.mode, seed=seed, stream=stream,
                                  backend=self.backend, precision=self.precision)

    @property
    def weight(self) -> torch.Tensor:
        """A_hat, shape `weight_shape`, on the coefficients' device and in their dtype.

        Cached unless the coefficients are being trained (requires_grad under grad mode); the
        cache is reused only while the coefficients, seed and stream equal (value, shape, dtype,
        device) the copies it was built from, and the cached weight itself was not written to.
        Under torch.compile it is regenerated inside the graph at every call.
        """
        c = self.coefficients
        if torch.compiler.is_compiling() or (c.requires_grad and torch.is_grad_enabled()):
            return self._regenerate()  # a Python-side cache cannot live in a compiled graph
        key = (c.device, c.dtype)
        hit = self._weight_cache.get(key)
        if hit is None or not self._cache_valid(hit):
            # Built outside inference mode also when called in it: an inference tensor keeps no version
            # counter (the write check below) and could not be used by a later forward that records autograd.
            with torch.inference_mode(False), torch.no_grad():
                made_from = (c.detach().clone(), *self._sign_ids())
                w = self._regenerate()
            hit = (made_from, w, w._version)
            self._weight_cache[key] = hit
        return hit[1]

    def _cache_valid(self, hit) -> bool:
        (c0, seed, stream), w, version = hit
        c = self.coefficients
        return (w._version == version and c.shape == c0.shape and c.dtype == c0.dtype and c.device == c0.device
                and (seed, stream) == self._sign_ids() and bool(torch.equal(c.detach(), c0)))

    def clear_weight_cache(self) -> None:
        self._weight_cache.clear()

    def _apply(self, fn, *args, **kwargs):
        self._weight_cache.clear()
        return super()._apply(fn, *args, **kwargs)

    def __getstate__(self):
        # Pickling the whole module must not save the regenerated dense weight.
        state = self.__dict__.copy()
        state["_weight_cache"] = {}
        return state

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        """Refuse, naming the key, a seed, stream or coefficients that would silently regenerate other signs.

        seed: an integer tensor of shape (2,) with both halves in [0, 2^32); stream: an integer
        0-d tensor in [0, 2^32); coefficients: floating point and finite (shape is checked by torch).
        On an error nothing of this module is loaded.
        """
        errors = []
        for key, check in (("seed", _seed_from_buffer), ("stream", _stream_from_buffer)):
            if prefix + key in state_dict:
                try:
                    check(state_dict[prefix + key], prefix + key)
                except (TypeError, ValueError) as err:
                    errors.append(str(err))
        c = state_dict.get(prefix + "coefficients")
        if c is not None and not (isinstance(c, torch.Tensor) and c.dtype in FLOAT_DTYPES):
            errors.append(f"{prefix}coefficients must be a float32/float64/float16/bfloat16 tensor, got "
                          f"{getattr(c, 'dtype', type(c).__name__)}")
        elif c is not None and c.device.type != "meta":  # meta: no values to check
            bad = int((~torch.isfinite(c.detach())).sum())
            if bad:
                errors.append(f"{prefix}coefficients hold {bad} NaN or Inf of {c.numel()}: every weight regenerated "
                              "from them would be NaN; the checkpoint is damaged")
        if errors:
            error_msgs.extend(errors)
            return
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        if self.seed.device.type != "meta" and self.stream.device.type != "meta":  # meta: no values yet
            self._ids = (self.seed_value, self.stream_value)

    def _fill_from(self, module: nn.Module) -> None:
        """Coefficients from a dense module's weight, bias copied exactly."""
        with torch.no_grad():
            self.coefficients.copy_(project_weight(module.weight.detach(), self.k, mode=self.mode,
                                                   seed=self.seed_value, stream=self.stream_value,
                                                   backend=self.backend, precision=self.precision))
            if module.bias is not None:
                self.bias.copy_(module.bias.detach())
        if module.bias is not None:
            self.bias.requires_grad_(module.bias.requires_grad)

    def _sketch_repr(self) -> str:
        return (f"k={self.k}, mode={self.mode}, seed={self.seed_value}, stream={self.stream_value}, "
                f"stored={self.stored} of {self.n}")


def _integer_values(t, name: str, shape: tuple) -> list[int]:
    """The values of an integer tensor of the given shape, else a TypeError / ValueError naming it."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a tensor, got {type(t).__name__}")
    if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor, got {t.dtype} (a float seed would be truncated)")
    if tuple(t.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(t.shape)}")
    return [int(v) for v in t.reshape(-1).tolist()]


def _seed_from_buffer(t, name: str) -> int:
    """The seed held by a (2,) integer tensor [low 32 bits, high 32 bits], each half in [0, 2^32)."""
    lo, hi = _integer_values(t, name, (2,))
    for half, v in (("low", lo), ("high", hi)):
        if not 0 <= v <= MASK32:
            raise ValueError(f"{name}: the {half} 32-bit half must be in [0, 2^32), got {v} "
                             "(the buffer holds [seed & 0xFFFFFFFF, seed >> 32])")
    return lo | (hi << 32)


def _stream_from_buffer(t, name: str) -> int:
    """The stream held by a 0-d integer tensor, in [0, 2^32)."""
    (v,) = _integer_values(t, name, ())
    return check_int(name, v, 0, MAX_STREAM)


class SketchedLinear(_SketchedLayer):
    """Linear layer whose weight (out_features, in_features) is A_hat regenerated from k sign coefficients.

    x: (..., in_features) -> (..., out_features); forward equals
    `F.linear(x, reconstruct_weight(coefficients, ...), bias)`. Constructed empty (coefficients
    zero) for `load_state_dict`, or filled from a dense layer with `from_module`.
    state_dict: `coefficients`, `bias` (if any), `seed` (int64 [low 32 bits, high 32 bits]), `stream`.
    """

    def __init__(self, in_features: int, out_features: int, k: int, *, mode: str = "tensor", bias: bool = True,
                 seed: int = 0, stream: int = 0, backend: str = "auto", precision: str = "highest",
                 device=None, dtype=None, allow_no_compression: bool = False):
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.in_features = check_positive_int("in_features", in_features)
        self.out_features = check_positive_int("out_features", out_features)
        self._init_sketch((out_features, in_features), k, mode, seed, stream, backend, precision, factory,
                          allow_no_compression)
        self.bias = nn.Parameter(torch.zeros(out_features, **factory)) if bias else None

    @classmethod
    def from_module(cls, module: nn.Linear, k: int, *, mode: str = "tensor", seed: int = 0, stream: int = 0,
                    backend: str = "auto", precision: str = "highest", name: str = "layer",
                    allow_no_compression: bool = False) -> "SketchedLinear":
        """Sketch a dense nn.Linear (same device and dtype); the bias is kept exactly.

        k >= the entries one sketch covers is refused (ValueError) unless allow_no_compression.
        """
        if not isinstance(module, nn.Linear):
            raise TypeError(f"{name}: SketchedLinear.from_module takes an nn.Linear, got {type(module).__name__}")
        check_weight(module.weight, name)
        w = module.weight
        refuse_no_compression(check_k(k), tuple(w.shape), check_mode(mode), name, allow_no_compression)
        check_coefficients_fit(k, tuple(w.shape), mode, name, w.dtype, w.device, copies=2)
        out = cls(module.in_features, module.out_features, k, mode=mode, bias=module.bias is not None, seed=seed,
                  stream=stream, backend=backend, precision=precision, device=w.device, dtype=w.dtype,
                  allow_no_compression=allow_no_compression)
        out._fill_from(module)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, {self._sketch_repr()}")


def _pair(v, name: str = "size", low: int = 0) -> tuple[int, int]:
    """An int or a pair of ints, each >= low, as a pair (bools and floats refused)."""
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise ValueError(f"{name} must be an int or a pair of ints, got {v!r}")
        return (check_int(name, v[0], low), check_int(name, v[1], low))
    v = check_int(name, v, low)
    return (v, v)


def conv_padding(padding, kernel_size, dilation) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) zero-padding of a Conv2d's `padding` (ints, pair, 'valid' or 'same').

    'same' pads d * (kh - 1) in total, the extra pixel at the bottom/right, as torch does.
    """
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0, 0, 0)
        if padding != "same":
            raise ValueError(f"padding must be 'valid', 'same', an int or a pair, got {padding!r}")
        (kh, kw), (dh, dw) = _pair(kernel_size), _pair(dilation)
        th, tw = dh * (kh - 1), dw * (kw - 1)
        return (th // 2, th - th // 2, tw // 2, tw - tw // 2)
    ph, pw = _pair(padding)
    return (ph, ph, pw, pw)


class SketchedConv2d(_SketchedLayer):
    """Conv2d whose weight (c_out, c_in / groups, kh, kw) is A_hat regenerated from sign coefficients.

    x: (N, c_in, H, W) -> (N, c_out, H_out, W_out); forward equals nn.Conv2d's with the weight
    `reconstruct_weight(coefficients, ...)`: every stride, padding (ints, 'same', 'valid'),
    padding_mode, dilation and groups that nn.Conv2d takes. state_dict as SketchedLinear's.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, k: int, *, stride=1, padding=0,
                 dilation=1, groups: int = 1, bias: bool = True, padding_mode: str = "zeros", mode: str = "tensor",
                 seed: int = 0, stream: int = 0, backend: str = "auto", precision: str = "highest",
                 device=None, dtype=None, allow_no_compression: bool = False):
        super().__init__()
        in_channels = check_positive_int("in_channels", in_channels)
        out_channels = check_positive_int("out_channels", out_channels)
        groups = check_positive_int("groups", groups)
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"in_channels ({in_channels}) and out_channels ({out_channels}) must be divisible "
                             f"by groups ({groups})")
        if padding_mode not in ("zeros", "reflect", "replicate", "circular"):
            raise ValueError(f"padding_mode must be 'zeros', 'reflect', 'replicate' or 'circular', got {padding_mode!r}")
        factory = {"device": device, "dtype": dtype}
        self.in_channels, self.out_channels, self.groups = int(in_channels), int(out_channels), int(groups)
        self.kernel_size = _pair(kernel_size, "kernel_size", 1)
        self.stride, self.dilation = _pair(stride, "stride", 1), _pair(dilation, "dilation", 1)
        self.padding = padding if isinstance(padding, str) else _pair(padding, "padding")
        self.padding_mode = padding_mode
        top, bottom, left, right = conv_padding(self.padding, self.kernel_size, self.dilation)
        self._pad_lrtb = (left, right, top, bottom)  # F.pad order: last dimension first
        shape = (out_channels, in_channels // groups, *self.kernel_size)
        self._init_sketch(shape, k, mode, seed, stream, backend, precision, factory, allow_no_compression)
        self.bias = nn.Parameter(torch.zeros(out_channels, **factory)) if bias else None

    @classmethod
    def from_module(cls, module: nn.Conv2d, k: int, *, mode: str = "tensor", seed: int = 0, stream: int = 0,
                    backend: str = "auto", precision: str = "highest", name: str = "layer",
                    allow_no_compression: bool = False) -> "SketchedConv2d":
        """Sketch a dense nn.Conv2d (same hyper-parameters, device and dtype); the bias is kept exactly.

        k >= the entries one sketch covers is refused (ValueError) unless allow_no_compression.
        """
        if not isinstance(module, nn.Conv2d):
            raise TypeError(f"{name}: SketchedConv2d.from_module takes an nn.Conv2d, got {type(module).__name__}")
        check_weight(module.weight, name)
        w = module.weight
        refuse_no_compression(check_k(k), tuple(w.shape), check_mode(mode), name, allow_no_compression)
        check_coefficients_fit(k, tuple(w.shape), mode, name, w.dtype, w.device, copies=2)
        out = cls(module.in_channels, module.out_channels, module.kernel_size, k, stride=module.stride,
                  padding=module.padding, dilation=module.dilation, groups=module.groups,
                  bias=module.bias is not None, padding_mode=module.padding_mode, mode=mode, seed=seed,
                  stream=stream, backend=backend, precision=precision, device=w.device, dtype=w.dtype,
                  allow_no_compression=allow_no_compression)
        out._fill_from(module)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.padding_mode != "zeros":
            x = F.pad(x, self._pad_lrtb, mode=self.padding_mode)
            return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}, "
                f"padding_mode={self.padding_mode}, bias={self.bias is not None}, {self._sketch_repr()}")


SKETCHED_TYPES = (SketchedLinear, SketchedConv2d)
