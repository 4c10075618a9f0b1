"""What every meter does around the model: argument checks, eval mode, precision, chunking.

A meter runs the model in eval mode under no_grad and restores each module's training flag
afterwards, exception or not. The clean pass always runs in float32 with TF32 off (the reference
every relative error is measured against); the noisy passes run in the requested precision, named
with the words of the ops and of torch.set_float32_matmul_precision, one meaning each:

    "highest" (alias "fp32")  float32, TF32 off
    "high"    (alias "tf32")  float32 with TF32 matmul/conv on (CUDA; CPU runs it as float32)
    "medium"  (alias "bf16")  torch.autocast(bfloat16), CPU or CUDA

Reports carry the first word ("highest", "high", "medium"), whichever word was passed.

Work is split into chunks of samples (and of trials, if one sample's trials do not fit) so that
the clean values kept for a chunk plus its noisy activations fit `memory_budget` bytes (default: half
the free memory of a CUDA device; on CPU 32 MiB, so each chunk's activations stay in cache).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
from torch import nn

from .._checks import check_choice, check_positive_int
from .layers import Layer, resolve_layers, trace_layers
from .propagate import build_propagator

PRECISIONS = ("highest", "high", "medium")
PRECISION_ALIASES = {"fp32": "highest", "tf32": "high", "bf16": "medium"}
# CPU: chunks small enough that a noisy pass's activations stay in cache (the digits net metered
# 25% faster in chunks of ~100 samples, ~35 MB, than in one 140 MB chunk of 449 samples).
CPU_DEFAULT_BUDGET = 32 << 20  # bytes
CUDA_BUDGET_FRACTION = 0.5  # of the free device memory


def check_model(model) -> tuple[torch.device, torch.dtype]:
    """(device, dtype) of the model's parameters; ValueError for what cannot be metered."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    params = [p for p in model.parameters()]
    if not params:
        raise ValueError(f"{type(model).__name__} has no parameters: nothing to meter")
    device, dtype = params[0].device, params[0].dtype
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"the model's parameters are {dtype}; meter a float32 or float64 model "
                         "(use precision='bf16' for reduced precision)")
    return device, dtype


def check_data(data) -> torch.Tensor:
    """data as a (N, ...) floating tensor with N >= 1 and finite values (it stays on its device)."""
    if not isinstance(data, torch.Tensor):
        raise TypeError(f"data must be a torch.Tensor batch (N, ...), got {type(data).__name__}")
    if data.dim() < 2:
        raise ValueError(f"data must be a batch (N, ...) with at least 2 dimensions; got shape {tuple(data.shape)}")
    if data.shape[0] == 0 or data[0].numel() == 0:
        raise ValueError(f"data is empty (shape {tuple(data.shape)})")
    if not data.is_floating_point():
        raise ValueError(f"data must be floating point, got {data.dtype}")
    if not torch.isfinite(data).all():
        raise ValueError("data contains NaN or Inf")
    if data.shape[0] >= (1 << 32):
        raise ValueError("data has 2^32 samples or more; the noise counters address fewer")
    return data


def check_precision(precision) -> str:
    """"highest", "high" or "medium" (see the module note); "fp32", "tf32", "bf16" are read as those."""
    if isinstance(precision, str) and precision in PRECISION_ALIASES:
        return PRECISION_ALIASES[precision]
    return check_choice("precision", precision, PRECISIONS + tuple(PRECISION_ALIASES))


@contextlib.contextmanager
def metering(model: nn.Module, channels_last: bool = False):
    """Eval mode, no_grad and cuDNN autotuning for the duration; every module's training flag (and the
    autotuning flag) restored on exit.

    channels_last: also store the model's 4-D parameters and buffers channels_last for the duration
    (their values unchanged; each tensor's original storage put back on exit), so convolutions, pools
    and activations run in that format (on CPU about twice as fast for small conv nets; what cuDNN's
    tensor-core kernels want on a GPU).
    """
    flags = [(m, m.training) for m in model.modules()]
    moved = []
    benchmark = torch.backends.cudnn.benchmark
    model.eval()
    try:
        # the noisy passes repeat the same shapes many times: let cuDNN pick its fastest algorithms
        torch.backends.cudnn.benchmark = True
        if channels_last:
            for t in list(model.parameters()) + list(model.buffers()):
                if t.dim() == 4 and not t.is_contiguous(memory_format=torch.channels_last):
                    moved.append((t, t.data))
                    t.data = t.data.contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            yield
    finally:
        torch.backends.cudnn.benchmark = benchmark
        for t, data in moved:
            t.data = data
        for m, flag in flags:
            m.training = flag


@contextlib.contextmanager
def precision_mode(precision: str, device: torch.device):
    """Run the enclosed ops in `precision` (see the module note); global flags restored on exit."""
    precision = check_precision(precision)
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    tf32 = precision == "high"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    try:
        if precision == "medium":
            with torch.autocast(device.type, dtype=torch.bfloat16):
                yield
        else:
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def check_finite(t: torch.Tensor, what: str) -> None:
    if not torch.isfinite(t).all():
        raise FloatingPointError(f"non-finite values (NaN or Inf) {what}")


@dataclass
class Prepared:
    """A model ready to meter: its layers in forward order and a propagator over them."""

    model: nn.Module
    layers: list[Layer]
    propagator: object
    device: torch.device
    dtype: torch.dtype
    channels_last: bool = False

    @property
    def names(self) -> list[str]:
        return [layer.name for layer in self.layers]

    def batch(self, data: torch.Tensor) -> torch.Tensor:
        """A chunk of data on the model's device and dtype (channels_last when metering in it)."""
        x = data.to(device=self.device, dtype=self.dtype)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.dim() == 4 else x


def prepare(model: nn.Module, data: torch.Tensor, layers=None, method: str = "auto",
            channels_last: bool = False) -> Prepared:
    """Checks model and data, finds the layers (forward order), builds the propagator.

    Call inside `metering(model, channels_last)`.
    """
    device, dtype = check_model(model)
    data = check_data(data)
    prep = Prepared(model, [], None, device, dtype, channels_last)
    sample = prep.batch(data[:1])
    chosen = resolve_layers(model, layers)
    prep.layers = trace_layers(model, sample, chosen)
    prep.propagator = build_propagator(model, prep.layers, sample, method)
    return prep


def default_budget(device: torch.device) -> int:
    """Bytes a meter may use: half the free memory of a CUDA device, 32 MiB (cache-sized chunks) on CPU."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * CUDA_BUDGET_FRACTION)
    return CPU_DEFAULT_BUDGET


def plan_chunks(layers: list[Layer], n: int, trials: int, element_size: int, budget: int | None,
                device: torch.device) -> tuple[int, int]:
    """(samples per chunk, trials per chunk) so a chunk's memory stays under budget (bytes).

    Per sample the clean pass keeps about twice each layer's input and output (the values the noisy
    passes read); a noisy pass holds about four activations of the largest layer per trial. The CPU
    default never goes below one sample with all its trials.
    """
    numel = [math.prod(layer.in_shape) + math.prod(layer.out_shape) for layer in layers]
    largest = max(max(math.prod(layer.in_shape), math.prod(layer.out_shape)) for layer in layers)
    kept = 2 * sum(numel) * element_size
    per_trial = 4 * largest * element_size
    if budget is None:
        budget = default_budget(device)
        if device.type != "cuda":
            budget = max(budget, kept + trials * per_trial)
    budget = check_positive_int("memory_budget", budget)
    samples = budget // (kept + trials * per_trial)
    if samples >= 1:
        return int(min(samples, n)), trials
    trial_chunk = (budget - kept) // per_trial
    if trial_chunk < 1:
        raise ValueError(f"memory_budget of {budget} bytes is too small for one sample and one trial "
                         f"(about {kept + per_trial} bytes)")
    return 1, int(trial_chunk)


def chunks(n: int, size: int):
    """(start, stop) pairs covering range(n) in steps of size."""
    for start in range(0, n, size):
        yield start, min(n, start + size)
