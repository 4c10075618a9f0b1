"""The compression bounds of Arora et al. (2018) and the norm-based bounds they were compared with.

Each bound has the form  L_0(f) <= L_hat_gamma(f) + O~( sqrt(capacity / m) )  for m training samples and
margin gamma (L_hat_gamma: the fraction of samples with margin f(x)[y] - max_{k != y} f(x)[k] <= gamma).
We report each `capacity` (an "effective number of parameters", as in the paper's Figure 4 bar chart),
computed in log10 so products of many norms cannot overflow, beside the model's parameter count.
d = number of metered layers; A^i their operators (stabkern/opnorms.py; conv layers as operators on the whole
feature map, max-pools and ReLUs taken as the 1-Lipschitz maps they are, and a residual net treated as
if its metered layers formed a chain).

Convention, the same for every bound: constant factors and every logarithmic factor (in m, in the
depth, in layer or input dimensions) are dropped, as the O~ of Theorem 4.1 hides them and as the paper's
chart does; polynomial factors are kept. The dropped log factors are listed per bound below and their
log10 is reported in bounds()["log_factors_log10"], so a reader can put them back.

- ours (Arora, Ge, Neyshabur, Zhang 2018, Theorem 4.1, fully connected nets; "ours" in the chart):
      c^2 d^2 max_x ||f(x)||^2 sum_i 1 / (mu_i^2 mu_{i->}^2) / gamma^2
  with c the activation contraction, mu_i the data minimum of the layer cushion and mu_{i->} of the
  interlayer cushion (meters.py). mu_{i->} is sampled (Hutchinson probes): `measure` passes the
  conservative estimate, the data minimum of the lower ends of each sample's 95% interval
  (interlayer_cushion[...]["to"][...]["min_ci95"][0]), clamped at 0. Dropped: the log factors in O~.
- ours_conv (the same paper, section 5, its bound for convolutional nets):
      c^2 d^2 max_x ||f(x)||^2 beta^2 sum_i ceil(kappa_i / s_i)^2 / (mu_i^2 mu_{i->}^2) / gamma^2
  with kappa_i the filter size and s_i the stride of layer i (1 for a Linear layer; for a kh x kw filter
  with strides (sh, sw) the factor is ceil(kh/sh) ceil(kw/sw), the largest number of output positions
  one input position feeds, `overlap`) and beta the well-distributed-Jacobian constant, measured
  (meters.jacobian_spread: max over data and layer pairs). With beta = 1 and every factor 1 (Linear or
  1x1 stride-1 layers) it is exactly "ours". NOT verified against the paper's text: this is the form the
  project's design notes recall (the paper could not be read here); beta is measured, not assumed, and
  mu_i, mu_{i->} are the operator cushions above, which may differ from the paper's conv normalization.
- spectral (Bartlett, Foster, Telgarsky 2017, Theorem 1.1, reference matrices 0, 1-Lipschitz activations):
      (||X||_F^2 / m) prod_i ||A^i||_2^2 (sum_i ||A^i^T||_{2,1}^{2/3} / ||A^i||_2^{2/3})^3 / gamma^2
  ||A^T||_{2,1} = sum over output units of the l2 norm of the unit's row. Dropped: (ln(2W) ln m)^2,
  W the largest layer width (here h below), m = the number of samples metered.
- PAC-Bayes (Neyshabur, Bhojanapalli, Srebro 2018, Theorem 1):
      B^2 d^2 h prod_i ||A^i||_2^2 sum_i ||A^i||_F^2 / ||A^i||_2^2 / gamma^2
  B = max_x ||x||_2, h = the largest layer dimension (input or output of any metered operator).
  Dropped: ln(d h).
- l1 (Bartlett and Mendelson 2002, Theorem 18 with l1-bounded units; as listed by Neyshabur et al. 2017,
  "Exploring generalization in deep learning"):
      prod_i (2 ||A^i||_{1,inf})^2 max_x ||x||_inf^2 / gamma^2
  ||A||_{1,inf} = the largest l1 norm of a row (of a unit's incoming weights), n_0 = input dimension.
  Dropped: 2 ln(2 n_0).

The bar chart (plots.plot_bounds) shows "ours" (Theorem 4.1), the headline, and, when present, "ours_conv"
beside it, labelled unverified (its form is not checked against the paper: `UNVERIFIED`).

Hypotheses (`hypotheses`, bounds()["hypotheses"] in a report): each bound says whether what it assumes
holds on the measured net, check by check ("holds": true, false, or null where not checked or undefined):
- ours, ours_conv: "rho_at_least_3d", Theorem 4.1's interlayer smoothness rho >= 3d (the measured rho,
  bias-aware, data minimum); "compresses_at_k", the k the bound assumes for each layer (its term of the
  capacity sum, `layer_k_log10`) is below that layer's weight count, else the compression that proves the
  bound stores more numbers than the layer it replaces (the log factors are dropped, so the real k is
  larger still: "holds" is necessary, not sufficient); "below_parameter_count", the capacity is below the
  model's parameter count (else the bound is vacuous: counting the parameters says more).
- the norm bounds: "below_parameter_count"; what their theorems assume of the net (a chain of layers,
  1-Lipschitz activations; stabkern treats a residual net as a chain) is not checked ("holds": null).

The margin gamma (unless given): the `margin_quantile` (default 0.1) quantile of the margins over the
data, so L_hat_gamma is about that fraction; margins use the labels when given, else the model's own
prediction (top-1 minus top-2 logit). A quantile <= 0 (too many misclassified samples) is an error:
pass a larger quantile or gamma itself. `small_margin` says when gamma is below GAMMA_WARN_FRACTION of
the logit scale max_x ||f(x)||: every capacity divides by gamma^2, so such a gamma (an untrained net's
near-equal logits) makes every bound meaningless.

The model's output: a tensor, or (as `noise_attenuation` accepts) a tuple/list, whose first tensor is
taken, or a dict, whose "logits" entry (else "out") is taken (`logits_of`).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .. import opnorms
from .._checks import check_float, check_positive_int


GAMMA_WARN_FRACTION = 1e-3  # warn when gamma < this fraction of max_x ||f(x)||
UNVERIFIED = {"ours_conv": "unverified: the section-5 form is recalled from the design notes, not checked against "
                           "the paper's text; the chain bound (Theorem 4.1) is the headline"}


def logits_of(output) -> torch.Tensor:
    """The logits in a model's output: the tensor itself, a tuple's/list's first tensor, or a dict's
    "logits" entry (else its "out" entry); TypeError otherwise."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)):
        for item in output:
            if isinstance(item, torch.Tensor):
                return item
        raise TypeError(f"the model returned a {type(output).__name__} with no tensor; measure needs the logits")
    if isinstance(output, dict):
        for key in ("logits", "out"):
            if isinstance(output.get(key), torch.Tensor):
                return output[key]
        raise TypeError(f"the model returned a dict with keys {sorted(map(str, output))}; measure takes the logits "
                        "from its 'logits' or 'out' entry")
    raise TypeError(f"the model returned {type(output).__name__}; measure needs a tensor of logits, a tuple whose "
                    "first tensor is the logits, or a dict with a 'logits' or 'out' entry")


def small_margin(gamma: float, logits: torch.Tensor) -> str | None:
    """A warning text when gamma < GAMMA_WARN_FRACTION max_x ||f(x)||, else None."""
    scale = float(logits.detach().double().flatten(1).norm(dim=1).max())
    if gamma < GAMMA_WARN_FRACTION * scale:
        return (f"margin gamma = {gamma:.3g} is below {GAMMA_WARN_FRACTION:g} of the logit scale max ||f(x)|| = "
                f"{scale:.3g}: every bound divides by gamma^2 and is meaningless (an untrained net, or labels=None "
                "on near-equal logits?); pass labels, a larger margin_quantile or margin=gamma")
    return None


def check_labels(labels, n: int, classes: int | None = None) -> torch.Tensor | None:
    """labels as an (n,) int64 CPU tensor of class indices in [0, classes) (range unchecked when classes is
    None), or None. Integer tensors/arrays/lists only: float or bool labels are a TypeError."""
    if labels is None:
        return None
    if not isinstance(labels, torch.Tensor):
        try:
            labels = torch.as_tensor(np.asarray(labels))
        except (TypeError, ValueError, RuntimeError) as err:
            raise TypeError(f"labels must be integer class indices (a tensor or array), got {type(labels).__name__}"
                            ) from err
    if labels.dtype == torch.bool or labels.is_floating_point() or labels.is_complex():
        raise TypeError(f"labels must be integer class indices, got dtype {labels.dtype}")
    if tuple(labels.shape) != (n,):
        raise ValueError(f"labels must have shape ({n},) (one class index per sample), got {tuple(labels.shape)}")
    y = labels.detach().cpu().long()
    if classes is not None and n and (int(y.min()) < 0 or int(y.max()) >= classes):
        raise ValueError(f"labels must be class indices in [0, {classes}), got values in [{int(y.min())}, "
                         f"{int(y.max())}]")
    return y


def margins(logits: torch.Tensor, labels: torch.Tensor | None = None) -> np.ndarray:
    """Per-sample margins f(x)[y] - max_{k != y} f(x)[k] (y = labels, or the argmax): (N, K) -> (N,)."""
    z = logits.detach().double().cpu().reshape(logits.shape[0], -1)
    if z.shape[1] < 2:
        raise ValueError(f"margins need at least 2 outputs per sample, got {z.shape[1]}")
    y = z.argmax(1) if labels is None else check_labels(labels, z.shape[0], z.shape[1])
    own = z.gather(1, y[:, None])[:, 0]
    other = z.scatter(1, y[:, None], -math.inf).max(1).values
    return (own - other).numpy()


def choose_margin(m: np.ndarray, quantile: float) -> float:
    """gamma = the `quantile` quantile of the margins; ValueError if it is not positive."""
    quantile = check_float("margin_quantile", quantile, 0.0, 1.0, low_open=True, high_open=True)
    gamma = float(np.quantile(m, quantile))
    if gamma <= 0:
        raise ValueError(f"the {quantile} quantile of the margins is {gamma:.3g} <= 0 (more than that fraction "
                         "of samples is misclassified); pass a larger margin_quantile or margin=gamma")
    return gamma


def _log10(x: float) -> float:
    """log10 of a capacity: -inf for 0, NaN for NaN (an undefined margin), never an error."""
    if math.isnan(x):
        return math.nan
    return math.log10(x) if x > 0 else -math.inf


def compression_log10(c: float, d: int, max_output_norm: float, mu, mu_to, gamma: float) -> float:
    """log10 of Theorem 4.1's capacity c^2 d^2 max||f(x)||^2 sum_i 1/(mu_i^2 mu_{i->}^2) / gamma^2."""
    return conv_compression_log10(c, d, max_output_norm, mu, mu_to, gamma, beta=1.0, overlaps=[1] * len(mu))


def conv_compression_log10(c: float, d: int, max_output_norm: float, mu, mu_to, gamma: float, *, beta: float,
                           overlaps) -> float:
    """log10 of the conv capacity c^2 d^2 max||f(x)||^2 beta^2 sum_i overlap_i^2/(mu_i^2 mu_{i->}^2) / gamma^2
    (overlap_i = ceil(kappa_i / s_i) per spatial dimension, multiplied; see the module note).
    A zero cushion gives an infinite capacity (log10 = inf)."""
    terms = layer_k_log10(c, d, max_output_norm, mu, mu_to, gamma, beta=beta, overlaps=overlaps)
    if any(math.isnan(t) for t in terms):
        return math.nan
    top = max(terms)
    if math.isinf(top):
        return top
    return top + math.log10(sum(10.0 ** (t - top) for t in terms))


def layer_k_log10(c: float, d: int, max_output_norm: float, mu, mu_to, gamma: float, *, beta: float = 1.0,
                  overlaps=None) -> list:
    """log10 of each layer's term of the capacity sum, c^2 d^2 max||f(x)||^2 beta^2 overlap_i^2 /
    (mu_i^2 mu_{i->}^2 gamma^2): the number of parameters the compression behind the bound keeps for layer i
    (its k, log factors dropped). inf for a zero cushion, NaN for an undefined margin."""
    overlaps = [1] * len(mu) if overlaps is None else overlaps
    scale = 2 * _log10(c) + 2 * _log10(d) + 2 * _log10(max_output_norm) + 2 * _log10(beta) - 2 * _log10(gamma)
    out = []
    for a, b, k in zip(mu, mu_to, overlaps):
        if not a > 0 or not b > 0:
            out.append(math.nan if math.isnan(scale) else math.inf)
        else:
            out.append(scale + 2 * _log10(k) - 2 * _log10(a) - 2 * _log10(b))
    return out


def overlap(module) -> int:
    """ceil(kappa/s) per spatial dimension, multiplied: the largest number of output positions of a Conv2d
    that read one input position (for dilation 1; a dilated filter counts its taps that can land on one
    position, max over residues mod the stride). 1 for a Linear layer."""
    if not isinstance(module, torch.nn.Conv2d):
        return 1
    total = 1
    for k, s, dil in zip(module.kernel_size, module.stride, module.dilation):
        total *= max(sum(1 for t in range(k) if (t * dil) % s == r) for r in range(s))
    return total


def spectral_log10(spec, l21, mean_sq_input_norm: float, gamma: float) -> float:
    """log10 of Bartlett et al. (2017)'s capacity without its log factor (see the module note)."""
    s = sum((a / b) ** (2.0 / 3.0) for a, b in zip(l21, spec))
    return _log10(mean_sq_input_norm) + sum(2 * _log10(v) for v in spec) + 3 * _log10(s) - 2 * _log10(gamma)


def pac_bayes_log10(spec, frob, max_input_norm: float, d: int, h: int, gamma: float) -> float:
    """log10 of Neyshabur et al. (2018)'s capacity without its log factor (see the module note)."""
    s = sum((f / v) ** 2 for f, v in zip(frob, spec))
    return (2 * _log10(max_input_norm) + 2 * _log10(d) + _log10(h) + sum(2 * _log10(v) for v in spec) + _log10(s)
            - 2 * _log10(gamma))


def l1_log10(l1inf, max_input_abs: float, gamma: float) -> float:
    """log10 of the Bartlett-Mendelson (2002) l1 capacity without its log factor (see the module note)."""
    return sum(2 * _log10(2 * v) for v in l1inf) + 2 * _log10(max_input_abs) - 2 * _log10(gamma)


def log_factors_log10(*, m: int, d: int, h: int, n0: int) -> dict:
    """log10 of the log factors each bound's capacity drops (see the module note); "ours" hides its own
    in O~ and has no explicit one."""
    return {"spectral_bartlett2017": 2 * _log10(math.log(2 * h) * math.log(m)) if m > 1 else -math.inf,
            "pac_bayes_neyshabur2018": _log10(math.log(d * h)),
            "l1_bartlett_mendelson2002": _log10(2 * math.log(2 * n0))}


def bounds(*, layers, c: float, mu, mu_to, logits, data_stats: dict, gamma: float, parameters: int,
           spectral_iters: int = 500, spectral_tol: float = 1e-3, beta: float | None = None, tally=None) -> dict:
    """All capacities for metered `layers` (layers.Layer list): {"log10": {...}, "value": {...}, inputs}.

    data_stats: {"max_norm", "mean_sq_norm", "max_abs", "input_dim", "n"} of the data; beta: the measured
    well-distributed-Jacobian constant (None: no conv bound). mu_to: the interlayer cushions to use.
    Spectral norms: `opnorms.spectral_norm` to relative tolerance spectral_tol within spectral_iters
    iterations; "operator_norms" reports the iterations each used and whether it converged. tally: None or a
    progress.Tally stepped once per layer's norms (on a VGG's 25088 x 4096 Linear, seconds each).
    """
    spectral_iters = check_positive_int("spectral_iters", spectral_iters)
    spectral_tol = check_float("spectral_tol", spectral_tol, 0.0)
    spec, frob, l21, l1inf, runs = [], [], [], [], []
    if tally is not None:
        tally.expect(len(layers))
    for layer in layers:
        row_sq, row_abs = opnorms.row_norms(layer.module, layer.in_shape)
        frob.append(float(row_sq.sum().sqrt()))
        l21.append(float(row_sq.sqrt().sum()))
        l1inf.append(float(row_abs.max()))
        runs.append(opnorms.spectral_norm(layer.module, layer.in_shape, tol=spectral_tol, iters=spectral_iters))
        spec.append(runs[-1].value)
        if tally is not None:
            tally.step()
    d = len(layers)
    h = max(max(math.prod(layer.in_shape), math.prod(layer.out_shape)) for layer in layers)
    max_out = float(logits.detach().double().flatten(1).norm(dim=1).max())
    overlaps = [overlap(layer.module) for layer in layers]
    logs = {
        "ours": compression_log10(c, d, max_out, mu, mu_to, gamma),
        "parameters": _log10(parameters),
        "spectral_bartlett2017": spectral_log10(spec, l21, data_stats["mean_sq_norm"], gamma),
        "pac_bayes_neyshabur2018": pac_bayes_log10(spec, frob, data_stats["max_norm"], d, h, gamma),
        "l1_bartlett_mendelson2002": l1_log10(l1inf, data_stats["max_abs"], gamma),
    }
    ks = {"ours": layer_k_log10(c, d, max_out, mu, mu_to, gamma)}
    if beta is not None:
        logs["ours_conv"] = conv_compression_log10(c, d, max_out, mu, mu_to, gamma, beta=beta, overlaps=overlaps)
        ks["ours_conv"] = layer_k_log10(c, d, max_out, mu, mu_to, gamma, beta=beta, overlaps=overlaps)
    return {
        "log10": logs,
        "value": {k: (10.0 ** v if v < 308 else math.inf) for k, v in logs.items()},
        "log_factors_log10": log_factors_log10(m=data_stats.get("n", 1), d=d, h=h, n0=data_stats["input_dim"]),
        "gamma": gamma, "c": c, "d": d, "h": h, "max_output_norm": max_out,
        "mu": list(mu), "mu_to": list(mu_to), "beta": beta, "overlap": overlaps,
        "operator_norms": {layer.name: {"spectral": s, "frobenius": f, "l21": a, "l1inf": b,
                                        "spectral_iterations": r.iterations, "spectral_converged": r.converged}
                           for layer, s, f, a, b, r in zip(layers, spec, frob, l21, l1inf, runs)},
        "spectral_tol": spectral_tol,
        "layer_k_log10": ks,
        "layer_weights": {layer.name: _weight_count(layer.module) for layer in layers},
        "unverified": {k: v for k, v in UNVERIFIED.items() if k in logs},
    }


def _weight_count(module) -> int:
    """Entries of a layer's weight (what Algorithm 1 compresses; the bias is kept exact)."""
    weight = getattr(module, "weight", None)
    return int(weight.numel()) if isinstance(weight, torch.Tensor) else sum(p.numel() for p in module.parameters())


def _overall(checks: dict):
    """False if any check fails, None if none fails but one is unchecked or undefined, else True."""
    values = [c["holds"] for c in checks.values()]
    return False if False in values else None if None in values else True


def hypotheses(log10: dict, *, rho: float, d: int, layer_k: dict, layer_weights: dict) -> dict:
    """Per bound in `log10` (except "parameters"): {"holds", "checks": {name: {"holds", ...}}, "text"}, whether
    what the bound assumes holds on the measured net (module note). rho: the measured interlayer smoothness
    (NaN with one layer: no pair, nothing to ask); d: the metered layers; layer_k: bound key -> log10 k per layer
    (`layer_k_log10`); layer_weights: layer name -> weight count, in layer order. "holds" is null where a
    value is undefined (no positive margin: NaN) or the hypothesis is not checked."""
    params = log10.get("parameters")
    out = {}
    for key, value in log10.items():
        if key == "parameters":
            continue
        checks, words = {}, []
        if key in layer_k:
            required = 3 * d
            if d < 2:
                checks["rho_at_least_3d"] = {"holds": True, "measured": None, "required": required}
                words.append("one layer: no interlayer smoothness to ask")
            else:
                ok = None if rho is None or math.isnan(rho) else bool(rho >= required)
                checks["rho_at_least_3d"] = {"holds": ok, "measured": rho, "required": required}
                words.append(f"rho = {rho:.3g} {'>=' if ok else '<'} 3d = {required}" + ("" if ok else " (fails)")
                             if ok is not None else "rho undefined")
            names = list(layer_weights)
            k = layer_k[key]
            if any(math.isnan(v) for v in k):
                checks["compresses_at_k"] = {"holds": None, "layers_not_compressed": None}
                words.append("k per layer undefined")
            else:
                over = [n for n, v in zip(names, k) if not v < math.log10(layer_weights[n])]
                checks["compresses_at_k"] = {"holds": not over, "layers_not_compressed": over}
                words.append("every layer's k is below its weight count" if not over else
                             f"k exceeds the weight count in {len(over)} of {len(names)} layers (no compression there)")
        if value is None or params is None or math.isnan(value):
            checks["below_parameter_count"] = {"holds": None, "log10_over_parameters": None}
            words.append("undefined")
        else:
            excess = value - params
            checks["below_parameter_count"] = {"holds": bool(excess < 0), "log10_over_parameters": excess}
            words.append(f"{excess:.1f} orders above the parameter count (vacuous)" if excess >= 0 else
                         f"{-excess:.1f} orders below the parameter count")
        if key not in layer_k:
            checks["structure"] = {"holds": None}
            words.append("its assumptions on the net (a chain, 1-Lipschitz activations) not checked")
        text = "; ".join(words)
        if key in UNVERIFIED:
            text = "unverified form; " + text
        out[key] = {"holds": _overall(checks), "checks": checks, "text": text}
    return out


def data_stats(data: torch.Tensor) -> dict:
    """Input statistics the norm-based bounds use: max ||x||_2, mean ||x||_2^2, max ||x||_inf, dimension."""
    flat = data.detach().double().flatten(1)
    norms = flat.norm(dim=1)
    return {"max_norm": float(norms.max()), "mean_sq_norm": float(norms.square().mean()),
            "max_abs": float(flat.abs().max()), "input_dim": int(flat.shape[1]), "n": int(flat.shape[0])}
