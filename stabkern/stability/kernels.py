"""The meters' fused noise and error kernels: dispatch, and the float64 reference each one equals.

Two memory-bound steps dominate the noisy passes besides the model's own layers:

- `sphere_noise(x, radius, ...)`: the noisy inputs of T trials, out[t B + b] = x[b] + radius[b] z / ||z||
  with z the counter-based Gaussian vector of (sample, trial) (spec `stabkern-noise-v1`, below), so
  ||out[t B + b] - x[b]|| = radius[b] exactly (to rounding). The noise is regenerated from counters where
  it is consumed and never stored on its own.
- `sq_error(y_hat, y)`: per-row ||y_hat[r] - y[r mod B]||^2 in one pass, the clean activation broadcast
  over the trials (rows r = t B + b).

Backends: `cpu` (C++/OpenMP, `stabkern._noise`, csrc/noise), `triton` (`stabkern.triton_noise`, CUDA tensors,
or CPU under TRITON_INTERPRET=1) and `reference` (plain torch: int64 Philox and float64 Box-Muller for the
noise; slow, the oracle of the tests). They agree to floating-point tolerance, not bit for bit.

Spec stabkern-noise-v1: element j of the noise vector of sample s, trial t, under (seed, stream) is
    (w0, w1, w2, w3) = Philox4x32-10(key=(seed & 0xffffffff, seed >> 32), counter=(j >> 2, s, t, stream + 1))
    (a, b) = (w_{2p}, w_{2p+1}) with p = (j >> 1) & 1
    u = (2 (a >> 9) + 1) / 2^24,  v = (2 (b >> 9) + 1) / 2^24          (in (0, 1), exact in float32)
    z_j = sqrt(-2 ln u) cos(2 pi v) if j is even, sqrt(-2 ln u) sin(2 pi v) if j is odd   (Box-Muller).
Four Gaussians per Philox call; |z| <= sqrt(48 ln 2) = 5.77 (the tail beyond, probability 8e-9, is cut).
Counter word 3 is stream + 1, never 0 as in the sign spec, so noise and signs never share a counter.
Element order within a sample: (h, w, c) for a 4-D activation (C, H, W), i.e. j = (h W + w) C + c, the
memory order of channels_last, whichever memory format the tensor has; row-major for other shapes.
"""

from __future__ import annotations

import importlib
import math
import os

import torch

from ..spec import philox4x32_10

NOISE_SPEC = "stabkern-noise-v1"
BACKENDS = ("reference", "cpu", "triton")
MAX_STREAM = (1 << 32) - 1  # stream + 1 must fit the 32-bit counter word
_MASK32 = 0xFFFFFFFF

_noise_module = None
_noise_error = None


def _cpu_module():
    """stabkern._noise, or None (with the reason kept for the error message)."""
    global _noise_module, _noise_error
    if _noise_module is None and _noise_error is None:
        try:
            _noise_module = importlib.import_module("stabkern._noise")
        except ImportError as err:
            _noise_error = str(err)
    return _noise_module


def _triton_usable(device: torch.device) -> bool:
    if device.type == "cuda":
        return importlib.util.find_spec("triton") is not None
    return device.type == "cpu" and os.environ.get("TRITON_INTERPRET", "0") == "1" and \
        importlib.util.find_spec("triton") is not None


def select_backend(backend: str, device: torch.device) -> str:
    """The backend that runs on `device`: `auto` takes triton on CUDA, cpu on CPU, else reference."""
    if backend not in ("auto", *BACKENDS):
        raise ValueError(f"backend must be one of auto, {', '.join(BACKENDS)}; got {backend!r}")
    if backend == "auto":
        if device.type == "cuda" and _triton_usable(device):
            return "triton"
        if device.type == "cpu" and _cpu_module() is not None:
            return "cpu"
        return "reference"
    if backend == "cpu":
        if device.type != "cpu":
            raise ValueError(f"backend 'cpu' takes CPU tensors; the input is on {device}")
        if _cpu_module() is None:
            raise RuntimeError(f"stabkern._noise is not built or does not load ({_noise_error}); reinstall "
                               "stabkern with a C++17 compiler (`pip install -e .`) or use backend='reference'")
    if backend == "triton" and not _triton_usable(device):
        raise RuntimeError("backend 'triton' needs triton and a CUDA tensor (or TRITON_INTERPRET=1 for CPU "
                           f"tensors); the input is on {device}")
    return backend


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
                      seed & _MASK32, seed >> 32)
    z = []
    for p in range(2):
        u = ((w[2 * p] >> 9) * 2 + 1).double() * 2.0 ** -24
        v = ((w[2 * p + 1] >> 9) * 2 + 1).double() * 2.0 ** -24
        r = torch.sqrt(-2.0 * torch.log(u))
        z += [r * torch.cos(2 * math.pi * v), r * torch.sin(2 * math.pi * v)]
    start = j0 - 4 * g0
    return torch.stack(z, dim=-1).reshape(len(samples), -1)[:, start:start + n]


def _flat_rows(t: torch.Tensor) -> torch.Tensor:
    """(N, ...) -> (N, m) in the spec's element order: (h, w, c) for 4-D tensors (a view when t is
    channels_last), row-major otherwise (a view when contiguous)."""
    if t.dim() == 4:
        return t.permute(0, 2, 3, 1).reshape(t.shape[0], -1)
    return t.reshape(t.shape[0], -1)


def _unflat_rows(flat: torch.Tensor, like: torch.Tensor, rows: int) -> torch.Tensor:
    """Inverse of `_flat_rows` for `rows` rows shaped like `like`'s samples (4-D: a channels_last tensor)."""
    if like.dim() == 4:
        _, c, h, w = like.shape
        return flat.reshape(rows, h, w, c).permute(0, 3, 1, 2)
    return flat.reshape(rows, *like.shape[1:])


def _paired_rows(y_hat: torch.Tensor, y: torch.Tensor):
    """(N, m) views of y_hat and y with the same element order, without copying y_hat: a sum over a
    row does not care which order, only that both agree."""
    if y_hat.dim() == 4 and y_hat.is_contiguous(memory_format=torch.channels_last) and not y_hat.is_contiguous():
        return _flat_rows(y_hat), _flat_rows(y)
    return y_hat.reshape(y_hat.shape[0], -1), y.reshape(y.shape[0], -1)


def sphere_noise_reference(x: torch.Tensor, radius: torch.Tensor, *, trials: int, seed: int, stream: int,
                           sample0: int = 0, trial0: int = 0) -> torch.Tensor:
    """float64 `sphere_noise`: x (B, ...) , radius (B,) -> (trials * B, ...) float64."""
    b = x.shape[0]
    rows = _flat_rows(x)
    samples = torch.arange(b, device=x.device).repeat(trials) + sample0
    trial_ids = torch.arange(trials, device=x.device).repeat_interleave(b) + trial0
    z = gaussian_reference(seed, stream, samples, trial_ids, rows.shape[1])
    z = z * (radius.double().repeat(trials) / z.norm(dim=1))[:, None]
    return _unflat_rows(rows.double().repeat(trials, 1) + z, x, trials * b)


def sq_error_reference(y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """float64 `sq_error`: y_hat (T B, ...), y (B, ...) -> (T B,) float64."""
    b = y.shape[0]
    d = y_hat.reshape(-1, b, y[0].numel()).double() - y.reshape(1, b, -1).double()
    return d.square().sum(-1).reshape(-1)


def _check_sample_counters(sample0: int, trial0: int, batch: int, trials: int) -> None:
    if sample0 < 0 or sample0 + batch > (1 << 32):
        raise ValueError(f"sample indices [{sample0}, {sample0 + batch}) must lie in [0, 2^32)")
    if trial0 < 0 or trial0 + trials > (1 << 32):
        raise ValueError(f"trial indices [{trial0}, {trial0 + trials}) must lie in [0, 2^32)")


def sphere_noise(x: torch.Tensor, radius: torch.Tensor, *, trials: int, seed: int, stream: int, sample0: int = 0,
                 trial0: int = 0, out_dtype: torch.dtype | None = None, backend: str = "auto") -> torch.Tensor:
    """Noisy copies of x at exact distance radius: x (B, ...), radius (B,) -> (trials * B, ...).

    out[t B + b] = x[b] + radius[b] z / ||z||, z = the stabkern-noise-v1 vector of sample sample0 + b,
    trial trial0 + t (4-D x: elements in (h, w, c) order, and out is channels_last).
    Equals `sphere_noise_reference` to floating-point tolerance. out_dtype defaults to x's dtype.
    """
    if x.dim() < 2 or x.shape[0] == 0 or x[0].numel() == 0:
        raise ValueError(f"x must be (B, ...) with B >= 1 and non-empty rows; got shape {tuple(x.shape)}")
    if not x.is_floating_point() or radius.shape != (x.shape[0],):
        raise ValueError(f"x must be floating and radius of shape ({x.shape[0]},); got {x.dtype}, "
                         f"{tuple(radius.shape)}")
    if trials < 1:
        raise ValueError(f"trials must be >= 1, got {trials}")
    if not 0 <= stream <= MAX_STREAM - 1:
        raise ValueError(f"stream must lie in [0, 2^32 - 1), got {stream}")
    if not 0 <= seed < (1 << 64):
        raise ValueError(f"seed must lie in [0, 2^64), got {seed}")
    _check_sample_counters(sample0, trial0, x.shape[0], trials)
    out_dtype = out_dtype or x.dtype
    name = select_backend(backend, x.device)
    b = x.shape[0]
    rows = _flat_rows(x)
    if name == "reference":
        flat = sphere_noise_reference(rows, radius, trials=trials, seed=seed, stream=stream, sample0=sample0,
                                      trial0=trial0).to(out_dtype)
    elif name == "cpu":
        kernel_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        src = rows.to(kernel_dtype).contiguous()
        flat = torch.empty(trials * b, src.shape[1], dtype=kernel_dtype)
        fn = _cpu_module().sphere_noise_f64 if kernel_dtype == torch.float64 else _cpu_module().sphere_noise_f32
        rad = radius.detach().to(torch.float64).contiguous()
        fn(src.data_ptr(), rad.data_ptr(), flat.data_ptr(), b, src.shape[1], trials, sample0, trial0, seed,
           stream, torch.get_num_threads())
        flat = flat.to(out_dtype)
    else:
        from ..backends.triton import noise as triton_noise
        flat = triton_noise.sphere_noise(rows.contiguous(), radius, trials, seed, stream, sample0, trial0,
                                         out_dtype)
    return _unflat_rows(flat, x, trials * b)


def sq_error(y_hat: torch.Tensor, y: torch.Tensor, *, backend: str = "auto") -> torch.Tensor:
    """Per-row squared distance to the clean row: y_hat (T B, ...), y (B, ...) -> (T B,) float64.

    out[r] = ||y_hat[r] - y[r mod B]||^2, accumulated in float32 blocks summed in float64 (float64 for
    float64 input). Equals `sq_error_reference` to floating-point tolerance. Any memory formats (a
    channels_last pair is read in place); y_hat may be bfloat16/float16 with a float32 y.
    """
    if y.dim() < 1 or y.shape[0] == 0 or y_hat.shape[0] % y.shape[0] or y_hat.shape[1:] != y.shape[1:]:
        raise ValueError(f"y_hat must be (T B, ...) over y (B, ...); got {tuple(y_hat.shape)} and {tuple(y.shape)}")
    name = select_backend(backend, y.device)
    a, c = _paired_rows(y_hat, y)
    if name == "reference" or (name == "cpu" and y_hat.dtype not in (torch.float32, torch.float64, torch.bfloat16)):
        return sq_error_reference(a, c)
    if name == "cpu":
        out = torch.empty(a.shape[0], dtype=torch.float64)
        if y_hat.dtype == torch.float64:
            a, c, fn = a.contiguous(), c.double().contiguous(), _cpu_module().sq_error_f64
        elif y_hat.dtype == torch.bfloat16:
            a, c, fn = a.contiguous(), c.float().contiguous(), _cpu_module().sq_error_bf16
        else:
            a, c, fn = a.contiguous(), c.float().contiguous(), _cpu_module().sq_error_f32
        fn(a.data_ptr(), c.data_ptr(), out.data_ptr(), a.shape[0], c.shape[0], c.shape[1], torch.get_num_threads())
        return out
    from ..backends.triton import noise as triton_noise
    return triton_noise.sq_error(a.contiguous(), c.contiguous())
