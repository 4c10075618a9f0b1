"""`measure`: every meter of the stability package on one model and data set, in one report.

It checks every argument and the data (labels included) before any metering work (a stream's batches as
they are read), reads the data once, chunk by chunk, running the meters of meters.py and the attenuation
on each chunk, and computes the bounds of bound.py. It is not a meter itself: each
quantity is defined and documented in meters.py and bound.py.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch

from .._checks import check_choice, check_float, check_int, check_names, check_positive, check_positive_int, \
    check_seed
from ..progress import Tally
from .attenuation import attenuation_report, attenuation_sums
from .bound import bounds, check_labels, choose_margin, hypotheses, logits_of, margins, small_margin
from .context import MAX_SAMPLES, DataSource, check_precision, count_chunks, metering, plan_chunks, prepare
from .meters import (activation_contraction_dict, check_meterable, clean_batch, clean_meters, interlayer_cushion_dict,
                     jacobian_meters, jacobian_units, layer_cushion_dict, max_or_nan, min_or_nan,
                     noise_sensitivity_dict, smoothness_dict, spread_dict)
from .report import StabilityReport, interval95, t_quantile95


def _check_flag(name: str, value):
    if value is not None and not isinstance(value, bool):
        raise TypeError(f"{name} must be True, False or None, got {type(value).__name__} ({value!r})")
    return value


def _length(labels) -> int | None:
    """len(labels) for checking labels against a stream of unknown length (None: check_labels refuses it)."""
    try:
        return len(labels) if labels is not None and np.ndim(labels) == 1 else None
    except TypeError:
        return None


def _measure_units(prep, n: int, outer: int, trials: int, probes: int, draws: int, budget) -> int:
    """Progress units of `measure` on n samples read in chunks of `outer`: per chunk of each meter, one
    (clean pass) or one per layer (attenuation, forward-mode meters, reverse sweeps); then one per layer
    for the operator norms of the bounds."""
    element = torch.finfo(prep.dtype).bits // 8
    att = plan_chunks(prep.layers, n, trials, element, budget, prep.device)[0]
    batches = [clean_batch(prep, n, budget)]
    num = len(prep.layers)
    total = 0
    for s0 in range(0, n, outer):
        b = min(outer, n - s0)
        total += sum(count_chunks(b, size) for size in batches) + num * count_chunks(b, att)
        total += jacobian_units(prep, b, probes, draws, budget)
    return total + num


def conservative_mu_to(mu: np.ndarray, mu_rse: np.ndarray, probes: int) -> np.ndarray:
    """(L,) mu_{i->} for the bound: min over samples and j >= i of the lower end mu (1 - t rse) of each
    sample's 95% interval (report.interval95: t the Student-t quantile at probes - 1 degrees of freedom;
    `min_ci95[0]` of the report), clamped at 0. mu, mu_rse: (N, L, L), NaN where undefined (j < i, or j not
    downstream of i). If each sample's lower end is below its exact mu_{i,j} with probability 1 - a, the data
    minimum is below the exact minimum with at least that probability (it is, whenever the sample and pair
    holding the exact minimum is)."""
    low, _ = interval95(mu, mu_rse, probes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices cannot happen: mu_{i,i} is defined
        return np.nanmin(np.nanmin(low, axis=2), axis=0)


def rse_summary(mu_rse: np.ndarray, probes: int) -> dict:
    """The relative standard error of the sampled mu_{i,j} (j > i) in this run, over samples and pairs:
    its median, q95 and max, the probes and the t quantile of each sample's 95% interval mu (1 +- t rse).
    It depends on the net and the data (a random vgg19_cifar gave 1.9% at 4 probes, the trained digits net
    12.5%), so every report gives its own."""
    rows, cols = np.triu_indices(mu_rse.shape[1], 1)
    upper = mu_rse[:, rows, cols].reshape(-1)
    upper = upper[~np.isnan(upper)]
    if upper.size == 0:  # one metered layer: mu_{i,i} is exact
        return {"probes": probes, "t_quantile": t_quantile95(probes), "median": 0.0, "q95": 0.0, "max": 0.0}
    return {"probes": probes, "t_quantile": t_quantile95(probes), "median": float(np.median(upper)),
            "q95": float(np.quantile(upper, 0.95)), "max": float(upper.max())}


def measure(model, data, labels=None, *, alpha: float = 0.1, trials: int = 8, probes: int = 4, draws: int = 1,
            layers=None, seed: int = 0, margin: float | None = None, margin_quantile: float = 0.1,
            precision: str = "highest", floor: bool | None = None, memory_budget: int | None = None,
            method: str = "auto", backend: str = "auto", spectral_iters: int = 500, spectral_tol: float = 1e-3,
            channels_last: bool = True, group=None, progress=None) -> StabilityReport:
    """Layer and interlayer cushions, activation contraction, interlayer smoothness (bias-aware and
    literal), the well-distributed-Jacobian constant beta, noise sensitivity, the attenuation matrix and
    the bounds (bound.py: the chain bound "ours" and the conv bound "ours_conv") of `model` on `data`.

    data: (N, ...) model inputs, the training data (the theorem's bound is over the training sample), or a
    list of tensors, a DataLoader or any iterable of batches or (inputs, labels) pairs, read once in chunks
    (every meter runs on a chunk before the next is read: only per-sample summaries are kept);
    labels: (N,) integer class indices for the margins (None: the labels of (inputs, labels) pairs, else the
    model's own predictions); group, progress: as in `noise_attenuation` (one stage, "measure"); alpha,
    trials, seed, precision, floor, memory_budget, method, backend, channels_last: as in
    `noise_attenuation` (alpha also sizes the smoothness noise); probes (>= 2: the bound uses the lower
    end of each sample's 95% interval, mu (1 - t rse) with t the Student-t quantile at probes - 1 degrees of
    freedom: 12.7 at 2 probes, 3.18 at 4): reverse-mode Hutchinson probes per sample and output layer for ||J||_F and
    beta (the cost of `measure` grows with probes and draws, a forward and a backward over the net per
    probe, about one suffix pass per draw; more probes narrow each sample's interval as 1/sqrt(probes));
    draws: noise draws per sample and layer for the smoothness (min over them); margin: gamma, or None to
    take the margin_quantile quantile of the margins; spectral_iters, spectral_tol: the most iterations
    and the relative tolerance of the spectral norms (Lanczos, stabkern/opnorms.py; the report's
    bound["operator_norms"] gives the iterations used).
    The model may return a tensor of logits, a tuple (its first tensor) or a dict ("logits", else "out").
    Every argument, the data and the labels are checked before any work (a stream's batches as they come,
    and its labels' count at its end); a UserWarning says when gamma
    is below bound.GAMMA_WARN_FRACTION of max_x ||f(x)|| (every bound is then meaningless).
    Per-layer entries of `to_dict()` are keyed by module name (d["layer_cushion"]["features.0"]["min"]).
    """
    alpha = check_positive("alpha", alpha)
    trials = check_positive_int("trials", trials)
    probes = check_int("probes", probes, 2)
    draws = check_positive_int("draws", draws)
    seed = check_seed(seed)
    if margin is not None:
        margin = check_positive("margin", margin)
    margin_quantile = check_float("margin_quantile", margin_quantile, 0.0, 1.0, low_open=True, high_open=True)
    precision = check_precision(precision)
    floor = _check_flag("floor", floor)
    if memory_budget is not None:
        memory_budget = check_positive_int("memory_budget", memory_budget)
    method = check_choice("method", method, ("auto", "graph", "hooks"))
    spectral_iters = check_positive_int("spectral_iters", spectral_iters)
    spectral_tol = check_float("spectral_tol", spectral_tol, 0.0)
    channels_last = bool(_check_flag("channels_last", channels_last))
    layers = check_names("layers", layers)
    source = DataSource(data)
    labels = check_labels(labels, source.n if source.n is not None else _length(labels))
    floor = precision != "highest" if floor is None else floor
    tally = Tally(progress, "measure")
    with metering(model, channels_last, source.first(), autodiff=True) as channels_last:
        prep = prepare(model, source, layers, method, channels_last)
        check_meterable(prep)
        classes = logits_of(prep.propagator.clean(prep.batch(source.first())).logits)[0].numel()
        if classes < 2:
            raise ValueError(f"the model's logits have {classes} entry per sample; margins need at least 2")
        if labels is not None:
            labels = check_labels(labels, labels.shape[0], classes)
        element = torch.finfo(prep.dtype).bits // 8
        # Outer chunks as large as the clean pass allows, in whole attenuation chunks so that the
        # attenuation sees the chunks noise_attenuation would; each meter re-chunks within them.
        outer, _ = plan_chunks(prep.layers, source.n or MAX_SAMPLES, 1, element, memory_budget, prep.device)
        inner, _ = plan_chunks(prep.layers, source.n or MAX_SAMPLES, trials, element, memory_budget, prep.device)
        outer = max(inner, outer - outer % inner)
        if source.n is not None:
            tally.fix(_measure_units(prep, source.n, outer, trials, probes, draws, memory_budget))
        parts, pair_labels, norms, max_abs = [], [], [], 0.0
        for s0, xc, yc in source.chunks(outer):
            sub = DataSource(xc, start=s0)
            clean = clean_meters(prep, sub, memory_budget, tally)
            att = attenuation_sums(prep, sub, alpha=alpha, trials=trials, seed=seed, precision=precision,
                                   floor=floor, memory_budget=memory_budget, backend=backend, group=group,
                                   tally=tally)
            jac = jacobian_meters(prep, sub, probes=probes, draws=draws, alpha=alpha, seed=seed,
                                  budget=memory_budget, backend=backend, group=group, tally=tally)
            parts.append((clean, att, jac))
            pair_labels.append(yc)
            flat = xc.detach().double().flatten(1)
            norms.append(flat.norm(dim=1).cpu())
            max_abs = max(max_abs, float(flat.abs().max()))
            input_dim = flat.shape[1]
        parameters = sum(p.numel() for p in model.parameters())
    clean = {key: (torch.cat if key == "logits" else np.concatenate)([p[0][key] for p in parts])
             for key in ("cushion", "contraction", "logits")}
    clean["frobenius"] = parts[0][0]["frobenius"]
    sum_r, sum_r2, floor_r = (None if parts[0][1][k] is None else np.concatenate([p[1][k] for p in parts])
                              for k in range(3))
    jac = {key: np.concatenate([p[2][key] for p in parts]) for key in parts[0][2] if key != "positions"}
    spread = {"beta": jac["beta"], "positions": parts[0][2]["positions"]}
    n = clean["cushion"].shape[0]
    if labels is None and all(y is not None for y in pair_labels):
        labels = check_labels(torch.cat(pair_labels), n, classes)
    elif labels is not None and labels.shape[0] != n:
        raise ValueError(f"labels must have shape ({n},) (one class index per sample), got {tuple(labels.shape)}")
    norms = torch.cat(norms)
    stats = {"max_norm": float(norms.max()), "mean_sq_norm": float(norms.square().mean()), "max_abs": max_abs,
             "input_dim": int(input_dim), "n": n}
    names = prep.names
    att = attenuation_report(prep, sum_r, sum_r2, floor_r, alpha=alpha, trials=trials, seed=seed, precision=precision)
    m = margins(clean["logits"], labels)
    notes = []
    try:
        gamma = margin if margin is not None else choose_margin(m, margin_quantile)
        warning = small_margin(gamma, clean["logits"])
    except ValueError as err:  # no positive margin: the meters stand, the margin bounds are undefined
        gamma = math.nan
        warning = f"{err}; every capacity is undefined (NaN); the meters are unaffected"
    if warning is not None:
        warnings.warn(warning, UserWarning, stacklevel=2)
        notes.append(warning)
    contraction = activation_contraction_dict(names, clean["contraction"])
    c = contraction.get("c", math.nan)
    if math.isnan(c):
        c = 1.0
        notes.append("no activation module follows any metered layer: c taken as 1")
    elif math.isinf(c):
        notes.append("activation contraction is infinite: an activation zeroes a whole sample's input, so the "
                     "compression bound is vacuous on this data")
    mu = np.nanmin(clean["cushion"], axis=0)
    mu_to = conservative_mu_to(jac["mu"], jac["mu_rse"], probes)
    if np.any(mu_to == 0):
        notes.append("a 95% interval of an interlayer cushion reaches 0: the compression bounds are infinite; "
                     "raise probes")
    beta = max_or_nan(spread["beta"])
    beta = 1.0 if math.isnan(beta) else beta  # one metered layer: no pair i < j, beta = 1
    bound = bounds(layers=prep.layers, c=c, mu=mu, mu_to=mu_to, logits=clean["logits"], data_stats=stats,
                   gamma=gamma, parameters=parameters, spectral_iters=spectral_iters, spectral_tol=spectral_tol,
                   beta=beta, tally=tally)
    tally.finish()
    bound["mu_to_convention"] = ("min_ci95 lower end (data minimum of each sample's 95% interval lower end, "
                                 f"Student-t quantile {t_quantile95(probes):.3g} at {probes} probes)")
    bound["mu_rse"] = rse_summary(jac["mu_rse"], probes)
    bound["margin_loss"] = float(np.mean(m <= gamma)) if gamma == gamma else math.nan
    bound["rho"] = min_or_nan(jac["rho"])
    bound["rho_literal"] = min_or_nan(jac["rho_literal"])
    bound["psi"] = float(np.nanmax(att.per_sample_sq[:, :, -1]) / alpha ** 2)
    bound["hypotheses"] = hypotheses(bound["log10"], rho=bound["rho"], d=bound["d"], layer_k=bound["layer_k_log10"],
                                     layer_weights=bound["layer_weights"])
    settings = {"alpha": alpha, "trials": trials, "probes": probes, "draws": draws, "seed": seed,
                "margin_quantile": margin_quantile if margin is None else None, "precision": precision,
                "method": prep.propagator.method, "device": str(prep.device), "n_samples": n,
                "channels_last": channels_last,
                "notes": notes}
    return StabilityReport(
        layers=names,
        layer_cushion=layer_cushion_dict(names, clean["cushion"], clean["frobenius"]),
        interlayer_cushion=interlayer_cushion_dict(names, jac["mu"], jac["mu_rse"], probes),
        activation_contraction=contraction,
        interlayer_smoothness=smoothness_dict(names, jac["rho"]),
        noise_sensitivity=noise_sensitivity_dict(names, att.per_sample_sq, alpha),
        attenuation=att, bound=bound, settings=settings,
        interlayer_smoothness_literal=smoothness_dict(names, jac["rho_literal"]),
        jacobian_spread=spread_dict(names, spread["beta"], spread["positions"]))


__all__ = ["conservative_mu_to", "measure", "rse_summary"]
