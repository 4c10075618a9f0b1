"""`measure`: every meter of the stability package on one model and data set, in one report."""

from __future__ import annotations

import math

import numpy as np

from .bound import bounds, choose_margin, data_stats, margins
from .._checks import check_positive, check_positive_int, check_seed
from .context import check_precision, metering, prepare
from .meters import (_clean_meters, _jacobian_meters, activation_contraction_dict, check_meterable,
                     interlayer_cushion_dict, layer_cushion_dict, noise_sensitivity_dict, smoothness_dict)
from .attenuation import attenuation_report, attenuation_sums
from .report import StabilityReport


def measure(model, data, labels=None, *, alpha: float = 0.1, trials: int = 8, probes: int = 16, draws: int = 4,
            layers=None, seed: int = 0, margin: float | None = None, margin_quantile: float = 0.1,
            precision: str = "fp32", floor: bool | None = None, memory_budget: int | None = None,
            method: str = "auto", backend: str = "auto", spectral_iters: int = 500,
            channels_last: bool = True) -> StabilityReport:
    """Layer and interlayer cushions, activation contraction, interlayer smoothness, noise sensitivity,
    the attenuation matrix and the bounds (bound.py) of `model` on `data`, in one `StabilityReport`.

    data: (N, ...) model inputs; labels: (N,) class indices for the margins (None: the model's own
    predictions); alpha, trials, seed, precision, floor, memory_budget, method, backend, channels_last: as
    in `noise_attenuation` (alpha also sizes the smoothness noise); probes: Hutchinson probes per sample
    and layer for ||J||_F; draws: noise draws per sample for the smoothness; margin: gamma, or None to
    take the margin_quantile quantile of the margins; spectral_iters: power-iteration steps.
    Per-layer entries of `to_dict()` are keyed by module name (d["layer_cushion"]["features.0"]["min"]).
    """
    alpha = check_positive("alpha", alpha)
    trials = check_positive_int("trials", trials)
    probes = check_positive_int("probes", probes)
    draws = check_positive_int("draws", draws)
    seed = check_seed(seed)
    if margin is not None:
        margin = check_positive("margin", margin)
    with metering(model, channels_last):
        prep = prepare(model, data, layers, method, channels_last)
        check_meterable(prep)
        precision = check_precision(precision)
        floor = precision != "highest" if floor is None else bool(floor)
        clean = _clean_meters(prep, data, memory_budget)
        sum_r, sum_r2, floor_r = attenuation_sums(prep, data, alpha=alpha, trials=trials, seed=seed,
                                                  precision=precision, floor=floor, memory_budget=memory_budget,
                                                  backend=backend)
        jac = _jacobian_meters(prep, data, probes=probes, draws=draws, alpha=alpha, seed=seed, budget=memory_budget,
                               backend=backend)
        parameters = sum(p.numel() for p in model.parameters())
    names = prep.names
    att = attenuation_report(prep, sum_r, sum_r2, floor_r, alpha=alpha, trials=trials, seed=seed, precision=precision)
    m = margins(clean["logits"], labels)
    gamma = margin if margin is not None else choose_margin(m, margin_quantile)
    contraction = activation_contraction_dict(names, clean["contraction"])
    notes = []
    c = contraction.get("c", math.nan)
    if math.isnan(c):
        c = 1.0
        notes.append("no activation module follows any metered layer: c taken as 1")
    elif math.isinf(c):
        notes.append("activation contraction is infinite: an activation zeroes a whole sample's input, so the "
                     "compression bound is vacuous on this data")
    mu = np.nanmin(clean["cushion"], axis=0)
    mu_to = np.nanmin(np.nanmin(jac["mu"], axis=2), axis=0)
    bound = bounds(layers=prep.layers, c=c, mu=mu, mu_to=mu_to, logits=clean["logits"], data_stats=data_stats(data),
                   gamma=gamma, parameters=parameters, spectral_iters=spectral_iters)
    bound["margin_loss"] = float(np.mean(m <= gamma))
    bound["rho"] = float(np.nanmin(jac["rho"])) if len(names) > 1 else math.nan
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
        attenuation=att, bound=bound, settings=settings)
