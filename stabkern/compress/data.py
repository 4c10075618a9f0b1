"""Running data through a dense model for the compressors: batches, hooks, the layers' output errors.

`run_with_hooks` is the one place the compressors run the user's model: in eval mode, without
grad, with temporary forward hooks; every module's training flag and the hooks are restored
whatever happens. It is not a meter: the stability meters live in stabkern.stability.
"""

from __future__ import annotations

import contextlib
from typing import Iterable

import torch
from torch import nn

from ..sketched import SketchedConv2d
from .report import OutputError


def iter_batches(data, batch_size: int, device: torch.device) -> Iterable[torch.Tensor]:
    """Batches of model inputs from a tensor (split along dim 0) or an iterable of tensors / (x, ...) tuples."""
    if isinstance(data, torch.Tensor):
        if data.numel() == 0:
            raise ValueError("data is empty")
        batches = (data[i:i + batch_size] for i in range(0, len(data), batch_size))
    else:
        batches = (b[0] if isinstance(b, (tuple, list)) else b for b in data)
    seen = False
    for x in batches:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"data must be a tensor or an iterable of tensors / (x, ...) tuples, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"data must be floating point, got {x.dtype}")
        if not bool(torch.isfinite(x).all()):
            raise ValueError("data holds NaN or Inf")
        seen = True
        yield x.to(device)
    if not seen:
        raise ValueError("data is empty")


@contextlib.contextmanager
def eval_mode(model: nn.Module):
    """Every module in eval mode for the duration; each module's own training flag restored on exit
    (a frozen BatchNorm or Dropout inside a training model stays as it was), also on an exception."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


def run_with_hooks(model: nn.Module, hooks: dict, data, batch_size: int, keep=None, tally=None) -> None:
    """Run `data` through `model` in eval mode without grad, with forward hooks {module: hook}.

    keep: None, or keep(index) -> bool says which batches (numbered from 0) to run (the others are read and
    skipped: a rank's share); tally: a progress.Tally stepped once per batch.
    The hooks are removed and every module's training flag restored whatever happens.
    """
    handles = []
    try:
        with eval_mode(model), torch.no_grad():
            handles = [module.register_forward_hook(hook) for module, hook in hooks.items()]
            for index, x in enumerate(iter_batches(data, batch_size, model_device(model))):
                if keep is None or keep(index):
                    model(x)
                if tally is not None:
                    tally.step()
    finally:
        for h in handles:
            h.remove()


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU for a model with neither)."""
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    return torch.device("cpu")


def linear_part(module: nn.Module, out: torch.Tensor) -> torch.Tensor:
    """A z from a Conv2d / Linear layer's output A z + b (bias broadcast over channels / the last dimension)."""
    if module.bias is None:
        return out
    if isinstance(module, (nn.Conv2d, SketchedConv2d)):
        return out - module.bias.reshape(1, -1, 1, 1)
    return out - module.bias


def measure_output_errors(dense: nn.Module, sketched: dict[str, nn.Module], data, *, eps: float | None = None,
                          batch_size: int = 256) -> dict[str, OutputError]:
    """name -> relative output error of sketched[name] against dense's layer `name`, on its own input.

    Runs `data` through `dense` (in eval mode, no grad) with a forward hook on each named layer
    that feeds the layer's input z to the sketched layer too: per sample
    ||A_hat z - A z|| / ||A z||, A without bias. A layer whose output A z is zero on every sample
    has no relative error: its OutputError is undefined (NaN, samples = 0), and the others go on.
    While the data runs, each sketched layer holds its regenerated weight; the caches are cleared
    before returning, so the sketched layers keep only their coefficients.
    """
    modules = dict(dense.named_modules())
    diffs: dict[str, list] = {name: [] for name in sketched}
    norms: dict[str, list] = {name: [] for name in sketched}

    def hook_for(name):
        def hook(module, inputs, out):
            diff = (sketched[name](inputs[0]) - out).flatten(1).norm(dim=1)
            diffs[name].append(diff.double().cpu())
            norms[name].append(linear_part(module, out).flatten(1).norm(dim=1).double().cpu())
        return hook

    try:
        run_with_hooks(dense, {modules[name]: hook_for(name) for name in sketched}, data, batch_size)
    finally:
        for sk in sketched.values():
            sk.clear_weight_cache()
    result = {}
    for name in sketched:
        if not diffs[name]:  # never called on the data (a branch the data does not take): undefined
            result[name] = OutputError.from_samples(torch.zeros(0), 0, eps)
            continue
        diff, norm = torch.cat(diffs[name]), torch.cat(norms[name])
        keep = norm > 0
        result[name] = OutputError.from_samples(diff[keep] / norm[keep], int((~keep).sum()), eps)
    return result
