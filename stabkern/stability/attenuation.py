"""Noise attenuation (Arora et al. 2018, Figure 3; README, "Noise-stability meters"), batched.

For every injection layer i and sample x: Gaussian noise eta with ||eta|| = alpha ||x^{i-1}|| exactly
is added to layer i's input x^{i-1}, and the relative error r[i, j] = ||x_hat^j - x^j|| / ||x^j|| is
recorded at the output x^j of every layer j >= i (the last Linear's output is the logits).

How it is fast (see propagate.py for the propagation): per chunk of samples the clean pass runs once, in
float32; for each i the T trials ride in the batch (rows t B + b) through the part of the model
downstream of layer i only; the noisy input is written by one fused kernel from counters
(`stabkern.ops.sphere_noise`, Philox -> Box-Muller, exact norm) and each observed output is reduced to
per-row squared errors by one fused kernel against the clean output broadcast over trials
(`stabkern.ops.sq_error`). Nothing per (sample, trial, layer) but those sums leaves the device until a
chunk is done. The noise of (sample s, trial t, layer i) depends only on (seed, i, s, t), so results
do not depend on the chunking.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch

from .. import ops
from .._checks import check_positive, check_positive_int, check_seed
from ..progress import Tally
from .context import (MAX_SAMPLES, DataSource, Prepared, check_finite, check_precision, chunks, metering,
                      plan_chunks, precision_mode, prepare, run_units)
from .report import AttenuationReport


def _noise_dtype(prep: Prepared, precision: str) -> torch.dtype:
    # "medium" (bf16) on CUDA: the noisy input is written in bf16, the dtype autocast feeds the convs anyway
    if precision == "medium" and prep.device.type == "cuda":
        return torch.bfloat16
    return prep.dtype


def attenuation_sums(prep: Prepared, data, *, alpha: float, trials: int, seed: int,
                     precision: str, floor: bool, memory_budget, backend: str, group=None, tally: Tally | None = None):
    """Per-sample sums over trials of r and r^2, (N, L, L) float64 numpy, and the alpha = 0 floor
    (N, L, L) or None. NaN where r is undefined: layer j does not depend on layer i's input (below the
    diagonal, or a parallel branch: nothing propagates, so there is no attenuation to report) or
    layer j's clean output is zero.

    data: a DataSource (or what one takes), streamed in chunks. group: the work units (chunk, injection
    layer i) are shared over its ranks (distributed.owner) and every entry taken from its owner, so the
    result is the same bits on any number of ranks. tally: stepped once per (chunk, injection layer)."""
    source = data if isinstance(data, DataSource) else DataSource(data)
    num = len(prep.layers)
    element = torch.finfo(prep.dtype).bits // 8
    batch, trial_chunk = plan_chunks(prep.layers, source.n or MAX_SAMPLES, trials, element, memory_budget,
                                     prep.device)
    noise_dtype = _noise_dtype(prep, precision)
    undefined = torch.ones(num, num, dtype=torch.bool, device=prep.device)  # [i, j]: j not downstream of i
    for i in range(num):
        undefined[i, prep.propagator.downstream(i)] = False

    def work(s0, x, injections):
        return _attenuation_chunk(prep, x, s0, injections, alpha=alpha, trials=trials, seed=seed,
                                  precision=precision, floor=floor, trial_chunk=trial_chunk, noise_dtype=noise_dtype,
                                  undefined=undefined, backend=backend, tally=tally)

    sum_r, sum_r2, floor_r = run_units(source, batch, num, 3, work, group=group, tally=tally)
    return sum_r, sum_r2, (floor_r if floor else None)


def _attenuation_chunk(prep: Prepared, data: torch.Tensor, s0: int, injections: list, *, alpha, trials, seed,
                       precision, floor, trial_chunk, noise_dtype, undefined, backend, tally):
    """sum_r, sum_r2, floor_r (b, L, L) of one chunk of samples (stream index s0 on), for the injection layers
    `injections` (the other rows: NaN)."""
    num = len(prep.layers)
    prop = prep.propagator
    b = data.shape[0]
    xb = prep.batch(data)
    with precision_mode("highest", prep.device):
        clean = prop.clean(xb)
    for layer in prep.layers:
        check_finite(clean.outputs[layer.index], f"at the output of layer {layer.name!r} "
                     f"({type(layer.module).__name__}) on the clean pass")
    y_norm = [y.flatten(1).double().norm(dim=1) for y in clean.outputs]
    acc = torch.zeros(2, b, num, num, dtype=torch.float64, device=prep.device)
    acc_floor = torch.full((b, num, num), math.nan, dtype=torch.float64, device=prep.device)
    bad = torch.zeros(num, num, dtype=torch.bool, device=prep.device)
    for i in range(num):
        if i not in injections:
            continue
        x_in = clean.inputs[i]
        radius = alpha * x_in.flatten(1).double().norm(dim=1)
        for t0, t1 in chunks(trials, trial_chunk):
            t = t1 - t0
            noisy = ops.sphere_noise(x_in, radius, trials=t, seed=seed, stream=i, sample0=s0, trial0=t0,
                                         out_dtype=noise_dtype, backend=backend)
            if not prep.channels_last and noisy.dim() == 4:  # the noise op writes channels_last: a net metered in
                noisy = noisy.contiguous()  # its own layout (it .view()s activations) gets that layout

            def observe(j, y_hat, i=i, t=t):
                e2 = ops.sq_error(y_hat, clean.outputs[j], backend=backend).view(t, b)
                bad[i, j] |= ~torch.isfinite(e2).all()
                r = e2.sqrt() / y_norm[j]
                acc[0, :, i, j] += r.sum(0)
                acc[1, :, i, j] += r.square().sum(0)

            with precision_mode(precision, prep.device):
                prop.suffix(clean, i, noisy, "input", observe)
        if floor:
            def observe_floor(j, y_hat, i=i):
                e2 = ops.sq_error(y_hat, clean.outputs[j], backend=backend)
                acc_floor[:, i, j] = e2.sqrt() / y_norm[j]

            with precision_mode(precision, prep.device):
                prop.suffix(clean, i, x_in.to(noise_dtype).clone(), "input", observe_floor)
        if tally is not None:
            tally.step()
    bad &= ~undefined
    if bad.any():
        i, j = [int(v) for v in bad.nonzero()[0]]
        raise FloatingPointError(f"non-finite values (NaN or Inf) at the output of layer "
                                 f"{prep.layers[j].name!r} with noise injected at layer {prep.layers[i].name!r} "
                                 f"(alpha={alpha}, {precision})")
    zero = torch.stack(y_norm, dim=1) == 0  # (B, L): relative error undefined there
    acc[:, zero[:, None, :].expand(b, num, num)] = math.nan
    acc[:, :, undefined] = math.nan
    acc_floor[:, undefined] = math.nan
    return acc[0].cpu().numpy(), acc[1].cpu().numpy(), acc_floor.cpu().numpy()


def _stats(sum_r, sum_r2, trials: int):
    """mean, std, ci_low, ci_high, mc_se (L, L) and per-sample means of r and r^2 (N, L, L)."""
    m = sum_r / trials
    m2 = sum_r2 / trials
    count = np.sum(~np.isnan(m), axis=0)
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN cells (below the diagonal) give NaN
        mean = np.nanmean(m, axis=0)
        std = np.sqrt(np.maximum(np.nanmean(m2, axis=0) - mean ** 2, 0.0))
        se_data = np.nanstd(m, axis=0, ddof=1) / np.sqrt(count)
        within = (sum_r2 - sum_r ** 2 / trials) / (trials - 1) if trials > 1 else np.full_like(m, math.nan)
        mc_se = np.sqrt(np.maximum(np.nanmean(within, axis=0), 0.0) / (trials * count))
    return mean, std, mean - 1.96 * se_data, mean + 1.96 * se_data, mc_se, m, m2


def _lower_nan(a: np.ndarray) -> np.ndarray:
    """a (..., L, L) with NaN below the diagonal (observation before injection)."""
    a = np.array(a, dtype=np.float64)
    a[..., np.tril(np.ones(a.shape[-2:], dtype=bool), -1)] = np.nan
    return a


def noise_attenuation(model, data, *, alpha: float = 0.1, trials: int = 8, layers=None, seed: int = 0,
                      precision: str = "highest", floor: bool | None = None, memory_budget: int | None = None,
                      method: str = "auto", backend: str = "auto", channels_last: bool = True, group=None,
                      progress=None) -> AttenuationReport:
    """Attenuation of Gaussian noise injected at each layer's input, observed at every later layer.

    model: an nn.Module on CPU or CUDA (float32/float64), metered in eval mode (its training flags
    are restored); data: (N, ...) the batch model(data) takes, or a list of such batches, a DataLoader or any
iterable of batches or (inputs, labels) pairs, streamed (context.DataSource; moved to the model's device
chunk by chunk; a sample's noise depends on its position in the stream, not on the batching).
    alpha: ||eta|| / ||x|| per sample (> 0); trials: noise draws per sample and layer (>= 1);
    layers: None (every Conv2d and Linear, forward order) or a list of module names / modules;
    seed: noise seed in [0, 2^64) (noise of (seed, layer i, sample s, trial t) is fixed, spec
    stabkern-noise-v1); precision: "highest" (float32), "high" (TF32) or "medium" (bf16) for the noisy
    passes, "fp32"/"tf32"/"bf16" accepted for them (context.py; the clean pass is always float32);
    floor: also measure alpha = 0 (default: on for "high"/"medium"); memory_budget: bytes (>= 1)
    per chunk of work (default: half the free CUDA memory; 32 MiB on CPU, cache-sized); method: "auto",
    "graph" (torch.fx; exact under in-place ops, see propagate.py) or "hooks";
    backend: the noise ops' backend ("auto", "cpu", "triton", "reference"); channels_last: run the model with
    4-D tensors in channels_last memory format (its parameters restored after; see context.metering).
    group: None (one process), a ProcessGroup or "world": the (chunk, injection layer) units are shared
    over its ranks, every rank passing the same data and arguments, and every rank gets the same report,
    bitwise equal to the one-process report (stabkern.distributed); progress: None (silent) or a callable
    progress(stage, done, total) (stabkern.progress), called once per chunk and injection layer.

    Returns an `AttenuationReport` with (L, L) arrays [injection, observation], NaN where layer j does
    not depend on layer i's input. The hook-loop reference it equals within Monte Carlo error is
    tests/helpers/stability_reference.py.
    """
    alpha = check_positive("alpha", alpha)
    trials = check_positive_int("trials", trials)
    seed = check_seed(seed)
    if memory_budget is not None:
        memory_budget = check_positive_int("memory_budget", memory_budget)
    tally = Tally(progress, "attenuation")
    source = DataSource(data)
    with metering(model, channels_last, source.first()) as channels_last:
        precision = check_precision(precision)
        prep = prepare(model, source, layers, method, channels_last)
        floor = precision != "highest" if floor is None else bool(floor)
        sum_r, sum_r2, floor_r = attenuation_sums(prep, source, alpha=alpha, trials=trials, seed=seed,
                                                  precision=precision, floor=floor, memory_budget=memory_budget,
                                                  backend=backend, group=group, tally=tally)
    tally.finish()
    return attenuation_report(prep, sum_r, sum_r2, floor_r, alpha=alpha, trials=trials, seed=seed,
                              precision=precision)


def attenuation_report(prep: Prepared, sum_r, sum_r2, floor_r, *, alpha: float, trials: int, seed: int,
                       precision: str) -> AttenuationReport:
    """The report of `attenuation_sums`' output."""
    mean, std, lo, hi, mc_se, m, m2 = _stats(sum_r, sum_r2, trials)
    floor_mean = None
    if floor_r is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            floor_mean = _lower_nan(np.nanmean(floor_r, axis=0))
    return AttenuationReport(
        layers=prep.names, layer_types=[type(layer.module).__name__ for layer in prep.layers], alpha=alpha,
        trials=trials, seed=seed, precision=precision, method=prep.propagator.method, device=str(prep.device),
        mean=_lower_nan(mean), std=_lower_nan(std), ci_low=_lower_nan(lo), ci_high=_lower_nan(hi),
        mc_se=_lower_nan(mc_se), per_sample=_lower_nan(m), per_sample_sq=_lower_nan(m2), floor=floor_mean)
