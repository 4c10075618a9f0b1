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
the free memory of a CUDA device; on CPU 32 MiB, so each chunk's activations stay in cache, but never
fewer than 16 samples a chunk (up to 1 GiB): each conv call has a fixed cost that tiny chunks pay again and again).

Data (`DataSource`): a tensor (N, ...), a list of tensors, a DataLoader or any iterable of batches
(inputs, or (inputs, labels, ...) tuples) is streamed: its batches are cut and joined into the meters'
chunks, so a chunk holds the same samples whatever the batching, and a sample's index (its noise
counter) is its position in the stream. Only per-sample summaries outlive a chunk.
"""

from __future__ import annotations

import collections.abc
import contextlib
import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.autograd.forward_ad as fwAD
from torch import nn
from torch.utils._pytree import tree_leaves

from .._checks import check_choice, check_positive_int
from ..distributed import agree_on_failure, group_rank_size, merge_owned, owner
from ..progress import Tally
from .autodiff import differentiable
from .layers import Layer, resolve_layers, trace_layers
from .propagate import build_propagator

PRECISIONS = ("highest", "high", "medium")
PRECISION_ALIASES = {"fp32": "highest", "tf32": "high", "bf16": "medium"}
# CPU: chunks small enough that a noisy pass's activations stay in cache (the digits net metered
# 25% faster in chunks of ~100 samples, ~35 MB, than in one 140 MB chunk of 449 samples).
CPU_DEFAULT_BUDGET = 32 << 20  # bytes
CUDA_BUDGET_FRACTION = 0.5  # of the free device memory
CPU_MIN_CHUNK_SAMPLES = 16  # the CPU default budget never cuts chunks smaller than this (see plan_chunks) ...
CPU_MIN_CHUNK_CAP = 1 << 30  # ... unless they would need more than this many bytes


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


MAX_SAMPLES = 1 << 32  # the noise counters address fewer samples


class DataSource:
    """The samples a meter reads, streamed in chunks (see the module note).

    data: a floating (N, ...) tensor; or an iterable of batches, each a floating (b, ...) tensor or a
    tuple/list whose first item is one (its second, if a (b,) integer tensor, the labels). `start` offsets
    the sample indices (a chunk of a larger stream). A one-shot iterator (a generator) can be read once:
    a meter that needs a second pass says so. Batches are checked as they come (finite, floating, one
    sample shape); an iterable with no samples is a ValueError.
    """

    def __init__(self, data, start: int = 0):
        self.start = start
        self._first = None  # a one-shot iterator's first batch, read to trace the model
        self._consumed = False
        if isinstance(data, torch.Tensor):
            self._data = check_data(data)
            self.n = data.shape[0]
            self.one_shot = False
            return
        if isinstance(data, (str, bytes, dict, np.ndarray)) or not isinstance(data, collections.abc.Iterable):
            raise TypeError("data must be a torch.Tensor (N, ...), a list of tensors, a DataLoader or an iterable "
                            f"of batches, got {type(data).__name__}")
        self._data = data
        self.one_shot = isinstance(data, collections.abc.Iterator)
        self.n = _known_length(data)

    def batches(self):
        """(inputs, labels or None) of each non-empty batch, checked, in stream order."""
        if isinstance(self._data, torch.Tensor):
            yield self._data, None
            return
        if self.one_shot:
            if self._consumed:
                raise ValueError("data is a one-shot iterator (a generator) and this meter reads the data more "
                                 "than once: pass a list of batches, a DataLoader or a tensor")
            self._consumed = True
        items = self._data
        if self._first is not None:
            items, first, self._first = iter(items), self._first, None
            items = _chain(first, items)
        shape, seen = None, 0
        for item in items:
            x, y = _split_batch(item)
            if x.shape[0] == 0:
                continue
            check_data(x)
            if shape is None:
                shape = x.shape[1:]
            elif x.shape[1:] != shape:
                raise ValueError(f"data: a batch has samples of shape {tuple(x.shape[1:])}, the first had "
                                 f"{tuple(shape)}")
            seen += x.shape[0]
            if self.start + seen > MAX_SAMPLES:
                raise ValueError("data has 2^32 samples or more; the noise counters address fewer")
            yield x, y
        if seen == 0:
            raise ValueError("data is empty: the iterable yielded no samples")

    def first(self) -> torch.Tensor:
        """The first sample, (1, ...), for tracing the model (a one-shot iterator keeps its batch for later)."""
        if isinstance(self._data, torch.Tensor):
            return self._data[:1]
        if self.one_shot:
            if self._first is None:
                if self._consumed:
                    raise ValueError("data is a one-shot iterator that was already read")
                self._first = next(self._data, None)
                if self._first is None:
                    raise ValueError("data is empty: the iterable yielded no samples")
            x, _ = _split_batch(self._first)
            if x.shape[0] == 0:
                raise ValueError("data: the first batch has no samples")
            return check_data(x)[:1]
        for x, _ in self.batches():
            return x[:1]
        raise ValueError("data is empty: the iterable yielded no samples")  # unreachable: batches() raises

    def chunks(self, size: int):
        """(s0, inputs, labels or None) with `size` samples each but the last two; s0 is the index of the
        chunk's first sample in the stream (plus `start`).

        No chunk holds one sample unless size is 1 (or 2, an odd stream) or the stream one sample: a forward
        that calls `x.squeeze()` would drop the batch dimension. A stream of k size + 1 samples ends with
        chunks of size - 1 and 2 samples (as many chunks as k size + 1 in steps of size)."""
        pending, labels, held, s0 = [], [], 0, self.start
        for x, y in self.batches():
            pending.append(x)
            labels.append(y)
            held += x.shape[0]
            while held >= size + 2:  # hold one sample back beyond a chunk: the stream may end right after
                xs, ys = _take(pending, labels, size)
                held -= size
                yield s0, xs, ys
                s0 += size
        ends = [held] if held <= size else [size - 1, 2] if size >= 3 else [size, held - size]
        for count in ends:
            if count:
                xs, ys = _take(pending, labels, count)
                yield s0, xs, ys
                s0 += count


def _chain(first, rest):
    yield first
    yield from rest


def _known_length(data) -> int | None:
    """Samples in `data` when it says so without being read (a list of tensors, a DataLoader over a sized
    data set without a drop_last cut), else None."""
    if isinstance(data, (list, tuple)):
        try:
            return sum(_split_batch(item)[0].shape[0] for item in data)
        except (TypeError, ValueError):
            return None  # a bad item: batches() names it
    dataset = getattr(data, "dataset", None)
    if dataset is not None and not getattr(data, "drop_last", False):
        try:
            return len(dataset)
        except TypeError:
            return None
    return None


def _split_batch(item):
    """(inputs, labels or None) of one batch: a tensor, or a tuple/list (inputs, labels, ...)."""
    if isinstance(item, torch.Tensor):
        return item, None
    if isinstance(item, (tuple, list)) and item and isinstance(item[0], torch.Tensor):
        x = item[0]
        y = item[1] if len(item) > 1 and isinstance(item[1], torch.Tensor) else None
        if y is not None and (y.dim() != 1 or y.shape[0] != x.shape[0] or y.is_floating_point()):
            y = None  # not per-sample class indices (measure checks labels it uses)
        return x, y
    raise TypeError("data: each batch must be a tensor or a tuple/list (inputs, labels, ...) of tensors, got "
                    f"{type(item).__name__}")


def _take(pending: list, labels: list, size: int):
    """The first `size` samples of the pending batches (removed from them), with their labels."""
    xs, ys, need = [], [], size
    while need:
        x, y = pending[0], labels[0]
        if x.shape[0] <= need:
            xs.append(x)
            ys.append(y)
            need -= x.shape[0]
            pending.pop(0)
            labels.pop(0)
        else:
            xs.append(x[:need])
            ys.append(None if y is None else y[:need])
            pending[0], labels[0] = x[need:], (None if y is None else y[need:])
            need = 0
    x = xs[0] if len(xs) == 1 else torch.cat(xs)
    if any(y is None for y in ys):
        return x, None
    return x, ys[0] if len(ys) == 1 else torch.cat(ys)


def run_units(source: DataSource, batch: int, num: int, arrays: int, work, *, group=None,
              tally: Tally | None = None) -> list[np.ndarray]:
    """The outer loop every per-injection meter shares: over chunks of `batch` samples of `source`, and over
    the work units (chunk c, injection layer i), each computed by its owner rank
    (`distributed.owner(c num + i)`; everything, without a group).

    work(s0, x, injections) -> `arrays` float64 arrays (b, L, L) for the chunk x (stream index s0 on), rows
    `injections` filled (the others are ignored); it steps `tally` once per injection layer it computes.
    Returns the `arrays` arrays (N, L, L), every row from its owner rank: the same bits on every rank and
    for any number of ranks. A failure on one rank is raised on all (distributed.agree_on_failure).
    """
    rank, size = group_rank_size(group)
    if tally is not None:
        count = count_chunks(source.n, batch)
        tally.expect(None if count is None else count * num)
    parts, owners, error = [], [], None
    try:
        for c, (s0, x, _) in enumerate(source.chunks(batch)):
            units = [owner(c * num + i, size) for i in range(num)]
            mine = [i for i in range(num) if units[i] == rank]
            b = x.shape[0]
            parts.append(work(s0, x, mine) if mine else [np.full((b, num, num), np.nan)] * arrays)
            owners.append(np.broadcast_to(np.asarray(units), (b, num)))
            if tally is not None and len(mine) < num:
                tally.step(num - len(mine))
    except Exception as err:  # noqa: BLE001 - raised again below, on every rank
        error = err
    agree_on_failure(error, group)
    merged = [np.concatenate([p[k] for p in parts]) for k in range(arrays)]
    return merge_owned(merged, np.concatenate(owners), group)


def count_chunks(n: int | None, size: int) -> int | None:
    """Chunks of `size` samples that cover n samples (None when n is unknown)."""
    return None if n is None else -(-n // size)


def check_precision(precision) -> str:
    """"highest", "high" or "medium" (see the module note); "fp32", "tf32", "bf16" are read as those."""
    if isinstance(precision, str) and precision in PRECISION_ALIASES:
        return PRECISION_ALIASES[precision]
    return check_choice("precision", precision, PRECISIONS + tuple(PRECISION_ALIASES))


@contextlib.contextmanager
def metering(model: nn.Module, channels_last: bool = False, sample: torch.Tensor | None = None,
             autodiff: bool = False):
    """Eval mode, no_grad and cuDNN autotuning for the duration; every module's training flag (and the
    autotuning flag) restored on exit. Yields whether the model runs channels_last (below).

    channels_last: also store the model's 4-D parameters and buffers channels_last for the duration
    (their values unchanged; each tensor's original storage, so its bits and its layout, put back on exit,
    exception or not), so convolutions, pools and activations run in that format (on CPU about twice as
    fast for small conv nets; what cuDNN's tensor-core kernels want on a GPU). Not every forward runs in
    it: one that `.view()`s a 4-D weight or activation, or GroupNorm under forward-mode AD, raises "view
    size is not compatible". So with `sample` (a (1, ...) data sample) the model is first run on it
    channels_last (with `autodiff`, also a forward-mode pass and a backward, as the Jacobian meters do);
    if that raises and the same run in the model's own layout does not, the layout is the cause: the
    parameters are put back and the meter runs in the model's own layout (the yielded flag is then False).
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
            # (nothing moved and data not 4-D: the layout is the model's own, nothing to probe)
            if sample is not None and (moved or sample.dim() == 4) and not _runs(model, sample, True, autodiff):
                _restore(moved)
                if _runs(model, sample, False, autodiff):
                    channels_last = False
                else:  # it fails in its own layout too: not the layout's doing, the meter reports the failure
                    for t, data in moved:
                        t.data = data.contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            yield channels_last
    finally:
        torch.backends.cudnn.benchmark = benchmark
        _restore(moved)
        for m, flag in flags:
            m.training = flag


def _restore(moved: list) -> None:
    """Each moved tensor's original storage put back (its bits and its layout)."""
    for t, data in moved:
        t.data = data


def _runs(model: nn.Module, sample: torch.Tensor, channels_last: bool, autodiff: bool) -> bool:
    """Whether model runs on a copy of sample (channels_last if 4-D and asked), with autodiff also a forward-mode
    pass (zero tangent on the input) and a backward from its outputs, as the Jacobian meters differentiate it.
    Any exception is a no; the model's warnings are not shown (the metered passes show them)."""
    try:
        device, dtype = check_model(model)
    except (TypeError, ValueError):
        return True  # prepare names the problem
    x = sample.detach().to(device=device, dtype=dtype)
    x = x.clone(memory_format=torch.channels_last if channels_last and x.dim() == 4 else torch.contiguous_format)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with torch.no_grad():
                model(x.clone())
            if autodiff:
                with differentiable():
                    with fwAD.dual_level(), torch.no_grad():
                        model(fwAD.make_dual(x.clone(), torch.zeros_like(x)))
                    with torch.enable_grad():
                        leaf = x.requires_grad_(True)
                        out = [t for t in tree_leaves(model(leaf.clone()))
                               if isinstance(t, torch.Tensor) and t.requires_grad]
                        if out:
                            torch.autograd.grad(sum(t.sum() for t in out), leaf, allow_unused=True)
    except Exception:  # noqa: BLE001 - a probe: whatever stops it, the meter would meet too
        return False
    return True


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
        """A copy of a chunk of data on the model's device and dtype (channels_last when metering in it).

        Always a copy, never the caller's tensor: a forward may write into its input (`x.mul_(2)`), and the
        data a user passes is never written."""
        x = data.to(device=self.device, dtype=self.dtype)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x.clone() if _shares_memory(x, data) else x


def _shares_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.device == b.device and a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


def prepare(model: nn.Module, data, layers=None, method: str = "auto",
            channels_last: bool = False) -> Prepared:
    """Checks model and data (a DataSource, or what one takes), finds the layers (forward order), builds the
    propagator (on the first sample).

    Call inside `metering(model, channels_last)`.
    """
    device, dtype = check_model(model)
    source = data if isinstance(data, DataSource) else DataSource(data)
    prep = Prepared(model, [], None, device, dtype, channels_last)
    # two copies of the first sample: a forward that squeezes its batch (x.squeeze() on (B, C, 1, 1)) shows its
    # per-sample shapes only with more than one sample
    sample = prep.batch(source.first().repeat_interleave(2, dim=0))
    chosen = resolve_layers(model, layers)
    prep.layers = trace_layers(model, sample.clone(), chosen)
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
            # each conv call has a fixed cost (oneDNN reorders the weight) that small chunks pay again and again:
            # VGG-19 metered 2.6x slower in chunks of 2 samples than in one chunk of 16 (benchmarks/results)
            per_sample = kept + trials * per_trial
            budget = max(budget, min(min(n, CPU_MIN_CHUNK_SAMPLES) * per_sample, CPU_MIN_CHUNK_CAP), per_sample)
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
