"""`measure`: every meter of the stability package on one model and data set, in one report.

It checks every argument and the data (labels included) before any metering work, runs the meters of
meters.py and the attenuation, and computes the bounds of bound.py. It is not a meter itself: each
quantity is defined and documented in meters.py and bound.py.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from .._checks import check_choice, check_float, check_int, check_names, check_positive, check_positive_int, \
    check_seed
from .attenuation import attenuation_report, attenuation_sums
from .bound import bounds, check_labels, choose_margin, data_stats, logits_of, margins, small_margin
from .context import check_data, check_precision, metering, prepare
from .meters import (activation_contraction_dict, check_meterable, clean_meters, interlayer_cushion_dict,
                     jacobian_meters, jacobian_spread, layer_cushion_dict, max_or_nan, min_or_nan,
                     noise_sensitivity_dict, smoothness_dict, spread_dict)
from .report import StabilityReport

CI95 = 1.96  # the normal 97.5% quantile: each sample's 95% interval of mu_{i,j} is mu (1 +- CI95 rse)


def _check_flag(name: str, value):
    if value is not None and not isinstance(value, bool):
        raise TypeError(f"{name} must be True, False or None, got {type(value).__name__} ({value!r})")
    return value


def conservative_mu_to(mu: np.ndarray, mu_rse: np.ndarray) -> np.ndarray:
    """(L,) mu_{i->} for the bound: min over samples and j >= i of the lower end mu (1 - CI95 rse) of each
    sample's 95% interval (`min_ci95[0]` of the report), clamped at 0. mu, mu_rse: (N, L, L), NaN where
    undefined (j < i, or j not downstream of i)."""
    low = np.maximum(mu * (1 - CI95 * mu_rse), 0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices cannot happen: mu_{i,i} is defined
        return np.nanmin(np.nanmin(low, axis=2), axis=0)


def measure(model, data, labels=None, *, alpha: float = 0.1, trials: int = 8, probes: int = 16, draws: int = 4,
            layers=None, seed: int = 0, margin: float | None = None, margin_quantile: float = 0.1,
            precision: str = "highest", floor: bool | None = None, memory_budget: int | None = None,
            method: str = "auto", backend: str = "auto", spectral_iters: int = 500, spectral_tol: float = 1e-3,
            channels_last: bool = True) -> StabilityReport:
    """Layer and interlayer cushions, activation contraction, interlayer smoothness (bias-aware and
    literal), the well-distributed-Jacobian constant beta, noise sensitivity, the attenuation matrix and
    the bounds (bound.py: the chain bound "ours" and the conv bound "ours_conv") of `model` on `data`.

    data: (N, ...) model inputs, the training data (the theorem's bound is over the training sample);
    labels: (N,) integer class indices for the margins (None: the model's own predictions); alpha,
    trials, seed, precision, floor, memory_budget, method, backend, channels_last: as in
    `noise_attenuation` (alpha also sizes the smoothness noise); probes (>= 2: the bound uses each
    sample's 95% interval): Hutchinson probes per sample and layer for ||J||_F and beta; draws: noise
    draws per sample for the smoothness; margin: gamma, or None to take the margin_quantile quantile of
    the margins; spectral_iters, spectral_tol: the most iterations and the relative tolerance of the spectral
    norms (Lanczos, stabkern/opnorms.py; the report's bound["operator_norms"] gives the iterations used).
    The model may return a tensor of logits, a tuple (its first tensor) or a dict ("logits", else "out").
    Every argument, the data and the labels are checked before any work; a UserWarning says when gamma
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
    data = check_data(data)
    labels = check_labels(labels, data.shape[0])
    floor = precision != "highest" if floor is None else floor
    with metering(model, channels_last):
        prep = prepare(model, data, layers, method, channels_last)
        check_meterable(prep)
        classes = logits_of(prep.propagator.clean(prep.batch(data[:1])).logits)[0].numel()
        if classes < 2:
            raise ValueError(f"the model's logits have {classes} entry per sample; margins need at least 2")
        labels = check_labels(labels, data.shape[0], classes)
        clean = clean_meters(prep, data, memory_budget)
        sum_r, sum_r2, floor_r = attenuation_sums(prep, data, alpha=alpha, trials=trials, seed=seed,
                                                  precision=precision, floor=floor, memory_budget=memory_budget,
                                                  backend=backend)
        jac = jacobian_meters(prep, data, probes=probes, draws=draws, alpha=alpha, seed=seed, budget=memory_budget,
                              backend=backend)
        spread = jacobian_spread(prep, data, probes=probes, seed=seed, budget=memory_budget, backend=backend)
        parameters = sum(p.numel() for p in model.parameters())
    names = prep.names
    att = attenuation_report(prep, sum_r, sum_r2, floor_r, alpha=alpha, trials=trials, seed=seed, precision=precision)
    m = margins(clean["logits"], labels)
    gamma = margin if margin is not None else choose_margin(m, margin_quantile)
    notes = []
    warning = small_margin(gamma, clean["logits"])
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
    mu_to = conservative_mu_to(jac["mu"], jac["mu_rse"])
    if np.any(mu_to == 0):
        notes.append("a 95% interval of an interlayer cushion reaches 0: the compression bounds are infinite; "
                     "raise probes")
    beta = max_or_nan(spread["beta"])
    beta = 1.0 if math.isnan(beta) else beta  # one metered layer: no pair i < j, beta = 1
    bound = bounds(layers=prep.layers, c=c, mu=mu, mu_to=mu_to, logits=clean["logits"], data_stats=data_stats(data),
                   gamma=gamma, parameters=parameters, spectral_iters=spectral_iters, spectral_tol=spectral_tol, beta=beta)
    bound["mu_to_convention"] = "min_ci95 lower end (data minimum of each sample's 95% interval lower end)"
    bound["margin_loss"] = float(np.mean(m <= gamma))
    bound["rho"] = min_or_nan(jac["rho"])
    bound["rho_literal"] = min_or_nan(jac["rho_literal"])
    bound["psi"] = float(np.nanmax(att.per_sample_sq[:, :, -1]) / alpha ** 2)
    settings = {"alpha": alpha, "trials": trials, "probes": probes, "draws": draws, "seed": seed,
                "margin_quantile": margin_quantile if margin is None else None, "precision": precision,
                "method": prep.propagator.method, "device": str(prep.device), "n_samples": int(data.shape[0]),
                "channels_last": channels_last,
                "notes": notes}
    return StabilityReport(
        layers=names,
        layer_cushion=layer_cushion_dict(names, clean["cushion"], clean["frobenius"]),
        interlayer_cushion=interlayer_cushion_dict(names, jac["mu"], jac["mu_rse"]),
        activation_contraction=contraction,
        interlayer_smoothness=smoothness_dict(names, jac["rho"]),
        noise_sensitivity=noise_sensitivity_dict(names, att.per_sample_sq, alpha),
        attenuation=att, bound=bound, settings=settings,
        interlayer_smoothness_literal=smoothness_dict(names, jac["rho_literal"]),
        jacobian_spread=spread_dict(names, spread["beta"], spread["positions"]))


__all__ = ["conservative_mu_to", "measure"]
