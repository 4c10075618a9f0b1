"""The obvious noise-attenuation meter: per layer, per trial, a full forward with hooks.

The oracle of tests/stability/ (attenuation and the propagation battery) and the baseline of benchmarks/bench_stability.py.
No batching, no graph, no fused kernels: for each injection layer i and trial t, a forward pre-hook
adds eta (||eta|| = alpha ||x|| per sample) to layer i's input, forward hooks record every layer's
output, and the relative errors are computed with plain torch.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from stabkern.spec import gaussian_reference


def layers_in_forward_order(model: nn.Module, x: torch.Tensor) -> list[nn.Module]:
    """Conv2d and Linear modules in the order model(x) calls them."""
    order = []
    handles = [m.register_forward_pre_hook(lambda m, a: order.append(m)) for m in model.modules()
               if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            model(x[:1].clone())  # a forward may write into its input
    finally:
        for h in handles:
            h.remove()
    return order


def _record(model, x, layers, pre_hook=None, target=None):
    """(inputs, outputs) of every layer for model(x), with pre_hook on `target` if given."""
    inputs, outputs = {}, {}

    def record(module, args, output, k):
        inputs[k], outputs[k] = args[0].clone(), output.clone()

    handles = [m.register_forward_hook(lambda m, a, o, k=k: record(m, a, o, k)) for k, m in enumerate(layers)]
    if pre_hook is not None:
        handles.append(target.register_forward_pre_hook(pre_hook))
    try:
        model(x.clone())  # each pass on its own copy: a forward may write into its input
    finally:
        for h in handles:
            h.remove()
    return inputs, outputs


def attenuation_reference(model: nn.Module, x: torch.Tensor, *, alpha: float, trials: int, seed: int = 0,
                          spec_noise: bool = False) -> torch.Tensor:
    """r[t, b, i, j] = ||x_hat^j - x^j|| / ||x^j|| for trial t, sample b, injection i, observation j >= i
    (NaN for j < i), float64 (trials, N, L, L).

    Noise: torch.randn from a generator seeded with `seed` (independent of stabkern's), or with
    spec_noise the stabkern-noise-v1 vectors of (seed, stream = i, sample b, trial t), the noise the
    fast path uses.
    """
    model.eval()
    layers = layers_in_forward_order(model, x)
    n, num = x.shape[0], len(layers)
    r = torch.full((trials, n, num, num), float("nan"), dtype=torch.float64)
    gen = torch.Generator(device=x.device).manual_seed(seed)  # noise drawn where the data is (a GPU baseline)
    with torch.no_grad():
        clean_in, clean_out = _record(model, x, layers)
        for i, target in enumerate(layers):
            x_in = clean_in[i]
            for t in range(trials):
                if spec_noise:
                    eta = gaussian_reference(seed, i, torch.arange(n), torch.full((n,), t), x_in[0].numel())
                    eta = eta.to(x.device)
                else:
                    eta = torch.randn(n, x_in[0].numel(), generator=gen, dtype=torch.float64, device=x.device)
                eta = eta * (alpha * x_in.flatten(1).double().norm(dim=1) / eta.norm(dim=1))[:, None]
                if x_in.dim() == 4:  # the spec orders a (C, H, W) sample's elements as (h, w, c)
                    _, c, h, w = x_in.shape
                    eta = eta.reshape(n, h, w, c).permute(0, 3, 1, 2)
                eta = eta.reshape(x_in.shape).to(x_in.dtype)
                _, noisy_out = _record(model, x, layers, lambda m, a: (a[0] + eta, *a[1:]), target)
                for j in range(i, num):
                    y = clean_out[j].flatten(1).double()
                    r[t, :, i, j] = (noisy_out[j].flatten(1).double() - y).norm(dim=1) / y.norm(dim=1)
    return r


U32 = 2.0 ** -24  # float32 unit roundoff


def _fan_in(module: nn.Module) -> int:
    """Length of the dot products behind one output of a Linear or Conv2d."""
    if isinstance(module, nn.Linear):
        return module.in_features
    return module.in_channels // module.groups * math.prod(module.kernel_size)


def _abs_output(module: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """|W| |z| + |b|: what bounds the rounding error of each output of module(z)."""
    w, b = module.weight.abs(), None if module.bias is None else module.bias.abs()
    if isinstance(module, nn.Linear):
        return F.linear(z.abs(), w, b)
    return F.conv2d(z.abs(), w, b, module.stride, module.padding, module.dilation, module.groups)


def rounding_tolerance(model: nn.Module, x: torch.Tensor, rep, lam: float = 4.0) -> np.ndarray:
    """(L, L) bound on |r - r'| for two float32 evaluations of the same r[i, j] that round differently
    (other batch sizes, blockings, memory formats, CPU ISAs), derived from the arithmetic:

    - a length-n float32 dot product w.z + b has error <= lam sqrt(n) u (|w|.|z| + |b|) with probability
      >= 1 - 2 exp(-lam^2 / 2) per output (Higham & Mary 2019, probabilistic rounding analysis), so
      layer l's output y gets a relative error e_l <= lam sqrt(n_l) u kappa_l with the condition
      estimate kappa_l = max over samples of || |W| |z| + |b| || / ||y||; BatchNorm, ReLU, pooling and
      adds add O(u) each, inside lam;
    - an error made at layer l reaches layer j scaled by at most max(1, r[l, j] / alpha), the measured
      attenuation (its relative-perturbation gain), so x^j carries eps_j <= sum_{l <= j} e_l max(1, g_lj);
    - r = ||x_hat^j - x^j|| / ||x^j|| with both vectors off by eps_j relative: |r - r'| <= 2 eps_j (1 + r)
      per evaluation, 4 eps_j (1 + r) between two of them.
    """
    modules = dict(model.named_modules())
    kappa = {}

    def hook(module, args, output, name):
        ratio = _abs_output(module, args[0]).flatten(1).double().norm(dim=1) / output.flatten(1).double().norm(dim=1)
        kappa[name] = float(ratio.max())

    handles = [modules[n].register_forward_hook(lambda m, a, o, n=n: hook(m, a, o, n)) for n in rep.layers]
    try:
        with torch.no_grad():
            model(x.clone())  # a forward may write into its input
    finally:
        for h in handles:
            h.remove()
    e = np.array([lam * math.sqrt(_fan_in(modules[n])) * U32 * kappa[n] for n in rep.layers])
    gain = np.maximum(1.0, np.nan_to_num(rep.mean / rep.alpha, nan=1.0))
    eps = np.array([sum(e[l] * gain[l, j] for l in range(j + 1)) for j in range(len(e))])
    return 4 * eps[None, :] * (1 + np.nan_to_num(rep.mean, nan=0.0))
