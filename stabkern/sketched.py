"""Drop-in sketched layers: `SketchedLinear` and `SketchedConv2d` store only sign coefficients.

Design: a layer keeps the k coefficients <A, M_t> of Algorithm 1 (Arora et al., 2018), the
seed and stream that name its sign matrix (spec stabkern-sign-v1) and its shape; the weight
A_hat is regenerated from them by `sign_reconstruct` when needed. Regeneration costs k * n
sign-MACs, so the weight is cached per (device, dtype); the cache is keyed on the version
counters of the coefficients, seed and stream (any in-place change, `load_state_dict`
included, invalidates it) and cleared by `.to()` / `.half()` / `.cuda()` (`_apply`).

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
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from .ops import sign_project, sign_reconstruct

MODES = ("tensor", "filter")
_MASK32 = 0xFFFFFFFF


class NoCompressionWarning(UserWarning):
    """k is at least the number of entries it stands for: the sketch stores no fewer numbers."""


def check_mode(mode) -> str:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    return mode


def check_int(name: str, value, low: int, high: int | None = None) -> int:
    """value as an int in [low, high) (numpy ints accepted), else a clear TypeError / ValueError."""
    if isinstance(value, bool) or not isinstance(value, int):
        if type(value).__module__ == "numpy" and hasattr(value, "item") and isinstance(value.item(), int):
            value = value.item()
        else:
            raise TypeError(f"{name} must be an int, got {type(value).__name__} ({value!r})")
    if value < low or (high is not None and value >= high):
        raise ValueError(f"{name} must be in [{low}, {high if high is not None else 'inf'}), got {value}")
    return value


def check_k(k, name: str = "k") -> int:
    """k as a positive int, else a clear TypeError / ValueError."""
    return check_int(name, k, 1)


def row_length(shape, mode: str) -> int:
    """Entries one sketch covers: the whole weight (tensor mode) or one output channel (filter)."""
    n = math.prod(shape)
    return n if mode == "tensor" else n // shape[0]


def warn_if_no_compression(k: int, shape, mode: str, name: str = "layer") -> None:
    m = row_length(shape, mode)
    if k >= m:
        what = "the weight" if mode == "tensor" else "each filter"
        warnings.warn(f"{name}: k = {k} >= {m} entries of {what} ({mode} mode): this is no compression "
                      f"(the sketch stores at least as many numbers as the dense weight)",
                      NoCompressionWarning, stacklevel=4)


def check_weight(weight: torch.Tensor, name: str = "layer") -> None:
    """Refuse weights the sign ops cannot compress: uninitialized, non-float, empty or non-finite."""
    if isinstance(weight, nn.parameter.UninitializedParameter):
        raise ValueError(f"{name}: the weight is uninitialized (a lazy module): run one forward first")
    if weight.dtype not in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        raise TypeError(f"{name}: only float32/float64/float16/bfloat16 weights can be compressed, got {weight.dtype}")
    if weight.numel() == 0:
        raise ValueError(f"{name}: the weight is empty: there is nothing to compress")
    if not bool(torch.isfinite(weight).all()):
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


class _SketchedLayer(nn.Module):
    """Shared state of the sketched layers: coefficients, seed, stream, weight shape, the cache."""

    def _init_sketch(self, weight_shape, k, mode, seed, stream, backend, precision, factory):
        self.mode = check_mode(mode)
        self.k = check_k(k)
        self.weight_shape = tuple(int(s) for s in weight_shape)
        self.backend = backend
        self.precision = precision
        seed = check_int("seed", seed, 0, 1 << 64)
        stream = check_int("stream", stream, 0, 1 << 32)
        coeff_shape = (self.k,) if mode == "tensor" else (self.weight_shape[0], self.k)
        self.coefficients = nn.Parameter(torch.zeros(coeff_shape, **factory), requires_grad=False)
        # Seeds span [0, 2^64) but int64 tops out at 2^63 - 1: keep the two 32-bit halves.
        device = factory["device"]
        self.register_buffer("seed", torch.tensor([seed & _MASK32, seed >> 32], dtype=torch.int64, device=device))
        self.register_buffer("stream", torch.tensor(stream, dtype=torch.int64, device=device))
        self._weight_cache: dict = {}

    @property
    def seed_value(self) -> int:
        lo, hi = (int(v) for v in self.seed.tolist())
        return lo | (hi << 32)

    @property
    def stream_value(self) -> int:
        return int(self.stream.item())

    @property
    def n(self) -> int:
        """Entries of the dense weight."""
        return math.prod(self.weight_shape)

    @property
    def stored(self) -> int:
        """Numbers the sketch stores for the weight (k, or c_out * k in filter mode)."""
        return self.coefficients.numel()

    def _regenerate(self) -> torch.Tensor:
        return reconstruct_weight(self.coefficients, self.weight_shape, mode=self.mode, seed=self.seed_value,
                                  stream=self.stream_value, backend=self.backend, precision=self.precision)

    @property
    def weight(self) -> torch.Tensor:
        """A_hat, shape `weight_shape`, on the coefficients' device and in their dtype.

        Cached unless the coefficients are being trained (requires_grad under grad mode).
        """
        c = self.coefficients
        if c.requires_grad and torch.is_grad_enabled():
            return self._regenerate()
        key = (c.device, c.dtype)
        versions = (c._version, self.seed._version, self.stream._version)
        hit = self._weight_cache.get(key)
        if hit is None or hit[0] != versions:
            with torch.no_grad():
                hit = (versions, self._regenerate())
            self._weight_cache[key] = hit
        return hit[1]

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

    def _fill_from(self, module: nn.Module, name: str) -> None:
        """Coefficients from a dense module's weight (with warnings/refusals), bias copied exactly."""
        warn_if_no_compression(self.k, self.weight_shape, self.mode, name)
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


class SketchedLinear(_SketchedLayer):
    """Linear layer whose weight (out_features, in_features) is A_hat regenerated from k sign coefficients.

    x: (..., in_features) -> (..., out_features); forward equals
    `F.linear(x, reconstruct_weight(coefficients, ...), bias)`. Constructed empty (coefficients
    zero) for `load_state_dict`, or filled from a dense layer with `from_module`.
    state_dict: `coefficients`, `bias` (if any), `seed` (int64 [low 32 bits, high 32 bits]), `stream`.
    """

    def __init__(self, in_features: int, out_features: int, k: int, *, mode: str = "tensor", bias: bool = True,
                 seed: int = 0, stream: int = 0, backend: str = "auto", precision: str = "highest",
                 device=None, dtype=None):
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.in_features, self.out_features = int(in_features), int(out_features)
        self._init_sketch((out_features, in_features), k, mode, seed, stream, backend, precision, factory)
        self.bias = nn.Parameter(torch.zeros(out_features, **factory)) if bias else None

    @classmethod
    def from_module(cls, module: nn.Linear, k: int, *, mode: str = "tensor", seed: int = 0, stream: int = 0,
                    backend: str = "auto", precision: str = "highest", name: str = "layer") -> "SketchedLinear":
        """Sketch a dense nn.Linear (same device and dtype); the bias is kept exactly.

        Warns (NoCompressionWarning) when k >= the entries one sketch covers.
        """
        if not isinstance(module, nn.Linear):
            raise TypeError(f"{name}: SketchedLinear.from_module takes an nn.Linear, got {type(module).__name__}")
        check_weight(module.weight, name)
        w = module.weight
        out = cls(module.in_features, module.out_features, k, mode=mode, bias=module.bias is not None, seed=seed,
                  stream=stream, backend=backend, precision=precision, device=w.device, dtype=w.dtype)
        out._fill_from(module, name)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, {self._sketch_repr()}")


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


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
                 device=None, dtype=None):
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"in_channels ({in_channels}) and out_channels ({out_channels}) must be divisible "
                             f"by groups ({groups})")
        if padding_mode not in ("zeros", "reflect", "replicate", "circular"):
            raise ValueError(f"padding_mode must be 'zeros', 'reflect', 'replicate' or 'circular', got {padding_mode!r}")
        factory = {"device": device, "dtype": dtype}
        self.in_channels, self.out_channels, self.groups = int(in_channels), int(out_channels), int(groups)
        self.kernel_size, self.stride, self.dilation = _pair(kernel_size), _pair(stride), _pair(dilation)
        self.padding = padding if isinstance(padding, str) else _pair(padding)
        self.padding_mode = padding_mode
        top, bottom, left, right = conv_padding(self.padding, self.kernel_size, self.dilation)
        self._pad_lrtb = (left, right, top, bottom)  # F.pad order: last dimension first
        shape = (out_channels, in_channels // groups, *self.kernel_size)
        self._init_sketch(shape, k, mode, seed, stream, backend, precision, factory)
        self.bias = nn.Parameter(torch.zeros(out_channels, **factory)) if bias else None

    @classmethod
    def from_module(cls, module: nn.Conv2d, k: int, *, mode: str = "tensor", seed: int = 0, stream: int = 0,
                    backend: str = "auto", precision: str = "highest", name: str = "layer") -> "SketchedConv2d":
        """Sketch a dense nn.Conv2d (same hyper-parameters, device and dtype); the bias is kept exactly.

        Warns (NoCompressionWarning) when k >= the entries one sketch covers.
        """
        if not isinstance(module, nn.Conv2d):
            raise TypeError(f"{name}: SketchedConv2d.from_module takes an nn.Conv2d, got {type(module).__name__}")
        check_weight(module.weight, name)
        w = module.weight
        out = cls(module.in_channels, module.out_channels, module.kernel_size, k, stride=module.stride,
                  padding=module.padding, dilation=module.dilation, groups=module.groups,
                  bias=module.bias is not None, padding_mode=module.padding_mode, mode=mode, seed=seed,
                  stream=stream, backend=backend, precision=precision, device=w.device, dtype=w.dtype)
        out._fill_from(module, name)
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
