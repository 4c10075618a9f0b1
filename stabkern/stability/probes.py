"""What a few forwards on a data sample show about a model, before the meters run: which metered layers
noise injected at a layer reaches (`probe_downstream`, for the hooks path), and whether each sample's
outputs depend on that sample alone (`check_samples_independent`, for every path).

Every probe runs the model on its own copy of the sample (a forward may write into its input) under
no_grad. It is not the propagation of noise (propagate.py).
"""

from __future__ import annotations

import warnings

import torch
import torch.autograd.forward_ad as fwAD
from torch import nn
from torch.utils._pytree import tree_leaves

from .layers import Layer


def tensors_of(v) -> list:
    return [t for t in tree_leaves(v) if isinstance(t, torch.Tensor)]


def close_f32(ours: torch.Tensor, theirs: torch.Tensor) -> bool:
    """Same values up to float32 rounding of a differently fused or ordered computation."""
    if ours.shape != theirs.shape:
        return False
    scale = float(torch.nan_to_num(theirs.float(), nan=0.0, posinf=0.0, neginf=0.0).abs().max()) if theirs.numel() else 0.0
    return bool(torch.allclose(ours, theirs, rtol=1e-4, atol=1e-6 * scale, equal_nan=True))


def probe_downstream(model: nn.Module, layers: list[Layer], sample: torch.Tensor) -> list[list[int]]:
    """For each layer i, the layers j whose output depends on layer i's input on the sample: those reached by
    a forward-mode tangent (every differentiable path) and those whose output changes when layer i's input is
    perturbed (paths no tangent follows: `.detach()`, a mask or an index computed from the value)."""
    reached = _tangent_reach(model, layers, sample)
    changed = _perturbation_reach(model, layers, sample)
    return [sorted(set(a) | set(b)) for a, b in zip(reached, changed)]


def _tangent_reach(model: nn.Module, layers: list[Layer], sample: torch.Tensor) -> list[list[int]]:
    """For each layer i, the layers j whose output carries a forward-mode tangent when layer i's input is made
    a dual tensor (zero tangent); none for a layer i whose path has an op without forward AD (GroupNorm on a
    channels_last input raises in torch 2.13): its reach is then the perturbation's alone (counting every
    j >= i instead took parallel branches for downstream ones, with r = 0 reported instead of undefined)."""
    found = []
    with warnings.catch_warnings():  # a probe: the model's own warnings come from the metered passes
        warnings.simplefilter("ignore")
        for layer in layers:
            seen = []
            handles = [layer.module.register_forward_pre_hook(
                lambda m, a: (fwAD.make_dual(a[0], torch.zeros_like(a[0])), *a[1:]))]
            handles += [other.module.register_forward_hook(
                lambda m, a, o, j=other.index: seen.append(j) if fwAD.unpack_dual(o).tangent is not None
                else None) for other in layers]
            try:
                with fwAD.dual_level(), torch.no_grad():
                    model(sample.clone())
            except (RuntimeError, NotImplementedError, TypeError):  # an op without forward AD on this path
                seen = []
            finally:
                for h in handles:
                    h.remove()
            found.append(sorted(set(seen)))
    return found


def _layer_outputs(model: nn.Module, layers: list[Layer], x: torch.Tensor, pre_hooks=()) -> tuple[list, object]:
    """Copies of every layer's output of model(x.clone()) (None for a layer not called), and what the model
    returned, with `pre_hooks` ((module, hook) pairs) in place for the call."""
    outputs = [None] * len(layers)

    def keep(module, args, output, j):
        outputs[j] = output.detach().clone()
    handles = [module.register_forward_pre_hook(hook) for module, hook in pre_hooks]
    handles += [layer.module.register_forward_hook(lambda m, a, o, j=layer.index: keep(m, a, o, j))
                for layer in layers]
    try:
        with torch.no_grad():
            result = model(x.clone())
    finally:
        for h in handles:
            h.remove()
    return outputs, result


def _perturbation_reach(model: nn.Module, layers: list[Layer], sample: torch.Tensor) -> list[list[int]]:
    """For each layer i, the layers j whose output on the sample changes (any bit) when a Gaussian
    perturbation as large as layer i's input is added to it: noise reaches them, whatever the path.
    Every j >= i when the perturbed forward raises."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clean, _ = _layer_outputs(model, layers, sample)
        found = []
        for layer in layers:
            def perturb(module, args):
                x = args[0]
                gen = torch.Generator(device=x.device).manual_seed(0)
                eta = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
                size = x.norm()
                return (x + (eta * (size / eta.norm()) if size > 0 else eta), *args[1:])
            try:
                noisy, _ = _layer_outputs(model, layers, sample, [(layer.module, perturb)])
            except Exception:  # noqa: BLE001 - a forward that rejects the perturbation: assume every later layer
                found.append(list(range(layer.index, len(layers))))
                continue
            found.append([j for j, (a, b) in enumerate(zip(noisy, clean))
                          if a is not None and not (a.shape == b.shape and torch.equal(a, b))])
    return found


def check_samples_independent(model: nn.Module, layers: list[Layer], sample: torch.Tensor) -> None:
    """ValueError when one sample's layer outputs or model output change with the other samples in its batch
    (batch statistics such as `h.mean(0)`, a layer in training mode): the meters perturb each sample alone
    and batch its trials, so a sample's result must depend on that sample only.

    Checked with two forwards of two-sample batches made from s = sample[:1] and two perturbations u, v of it:
    s's rows of (s, u) must equal its rows of (v, s) (up to float32 rounding), whatever its partner and place."""
    s = sample[:1]
    gen = torch.Generator(device=s.device).manual_seed(0)
    scale = float(s.float().std()) if s.numel() > 1 else 1.0
    u, v = (s + (scale or 1.0) * torch.randn(s.shape, generator=gen, device=s.device, dtype=s.dtype)
            for _ in range(2))

    def outputs(x):
        layer_outputs, result = _layer_outputs(model, layers, x)
        return ([(f"layer {layer.name!r}", y) for layer, y in zip(layers, layer_outputs)]
                + [("the model", t) for t in tensors_of(result)])

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        first, second = outputs(torch.cat([s, u])), outputs(torch.cat([v, s]))
    for (name, a), (_, b) in zip(first, second):
        if a is None or b is None or a.dim() == 0 or a.shape[0] != 2 or a.shape != b.shape:
            continue
        if not close_f32(a[0], b[1]):
            raise ValueError(f"{type(model).__name__} couples the samples of a batch: {name}'s output for one "
                             "sample changes with the other samples (batch statistics such as x.mean(0), or a "
                             "layer in training mode); the meters perturb each sample alone and carry its trials "
                             "in the batch, so each sample's output must depend on that sample only")

__all__ = ["check_samples_independent", "close_f32", "probe_downstream", "tensors_of"]
