"""The compression bound of Arora et al. (2018, Theorem 4.1) and the norm-based bounds it was compared with.

Each bound has the form  L_0(f) <= L_hat_gamma(f) + O~( sqrt(capacity / m) )  for m training samples and
margin gamma (L_hat_gamma: the fraction of samples with margin f(x)[y] - max_{k != y} f(x)[k] <= gamma).
We report each `capacity` (an "effective number of parameters", as in the paper's Figure 4 bar chart),
computed in log10 so products of many norms cannot overflow, beside the model's parameter count.
d = number of metered layers; A^i their operators (stabkern/opnorms.py; conv layers as operators on the whole
feature map, max-pools and ReLUs taken as the 1-Lipschitz maps they are, and a residual net treated as
if its metered layers formed a chain). Constants and log factors hidden by O~ are dropped, as in the
paper's chart.

- ours (Arora, Ge, Neyshabur, Zhang 2018, Theorem 4.1):
      c^2 d^2 max_x ||f(x)||^2 sum_i 1 / (mu_i^2 mu_{i->}^2) / gamma^2
  with c the activation contraction, mu_i = min over data of the layer cushion and mu_{i->} of the
  interlayer cushion (meters.py).
- spectral (Bartlett, Foster, Telgarsky 2017, Theorem 1.1, reference matrices 0, 1-Lipschitz activations):
      (||X||_F^2 / m) prod_i ||A^i||_2^2 (sum_i ||A^i^T||_{2,1}^{2/3} / ||A^i||_2^{2/3})^3 / gamma^2
  ||A^T||_{2,1} = sum over output units of the l2 norm of the unit's row.
- PAC-Bayes (Neyshabur, Bhojanapalli, Srebro 2018, Theorem 1):
      B^2 d^2 h ln(d h) prod_i ||A^i||_2^2 sum_i ||A^i||_F^2 / ||A^i||_2^2 / gamma^2
  B = max_x ||x||_2, h = the largest layer dimension (input or output of any metered operator).
- l1 (Bartlett and Mendelson 2002, Theorem 18 with l1-bounded units; as listed by Neyshabur et al. 2017,
  "Exploring generalization in deep learning"):
      prod_i (2 ||A^i||_{1,inf})^2 * 2 ln(2 n_0) max_x ||x||_inf^2 / gamma^2
  ||A||_{1,inf} = the largest l1 norm of a row (of a unit's incoming weights), n_0 = input dimension.

The margin gamma (unless given): the `margin_quantile` (default 0.1) quantile of the margins over the
data, so L_hat_gamma is about that fraction; margins use the labels when given, else the model's own
prediction (top-1 minus top-2 logit). A quantile <= 0 (too many misclassified samples) is an error:
pass a larger quantile or gamma itself.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .. import opnorms


def margins(logits: torch.Tensor, labels: torch.Tensor | None = None) -> np.ndarray:
    """Per-sample margins f(x)[y] - max_{k != y} f(x)[k] (y = labels, or the argmax): (N, K) -> (N,)."""
    z = logits.detach().double().cpu().reshape(logits.shape[0], -1)
    if z.shape[1] < 2:
        raise ValueError(f"margins need at least 2 outputs per sample, got {z.shape[1]}")
    y = z.argmax(1) if labels is None else torch.as_tensor(labels).cpu().long().reshape(-1)
    if y.shape[0] != z.shape[0] or (y < 0).any() or (y >= z.shape[1]).any():
        raise ValueError(f"labels must be {z.shape[0]} class indices in [0, {z.shape[1]})")
    own = z.gather(1, y[:, None])[:, 0]
    other = z.scatter(1, y[:, None], -math.inf).max(1).values
    return (own - other).numpy()


def choose_margin(m: np.ndarray, quantile: float) -> float:
    """gamma = the `quantile` quantile of the margins; ValueError if it is not positive."""
    if not 0 < quantile < 1:
        raise ValueError(f"margin_quantile must lie in (0, 1), got {quantile}")
    gamma = float(np.quantile(m, quantile))
    if gamma <= 0:
        raise ValueError(f"the {quantile} quantile of the margins is {gamma:.3g} <= 0 (more than that fraction "
                         "of samples is misclassified); pass a larger margin_quantile or margin=gamma")
    return gamma


def _log10(x: float) -> float:
    return math.log10(x) if x > 0 else -math.inf


def compression_log10(c: float, d: int, max_output_norm: float, mu, mu_to, gamma: float) -> float:
    """log10 of Theorem 4.1's capacity c^2 d^2 max||f(x)||^2 sum_i 1/(mu_i^2 mu_{i->}^2) / gamma^2."""
    terms = sum(1.0 / (a * a * b * b) for a, b in zip(mu, mu_to))
    return 2 * _log10(c) + 2 * _log10(d) + 2 * _log10(max_output_norm) + _log10(terms) - 2 * _log10(gamma)


def spectral_log10(spec, l21, mean_sq_input_norm: float, gamma: float) -> float:
    """log10 of Bartlett et al. (2017)'s capacity (see the module note)."""
    s = sum((a / b) ** (2.0 / 3.0) for a, b in zip(l21, spec))
    return _log10(mean_sq_input_norm) + sum(2 * _log10(v) for v in spec) + 3 * _log10(s) - 2 * _log10(gamma)


def pac_bayes_log10(spec, frob, max_input_norm: float, d: int, h: int, gamma: float) -> float:
    """log10 of Neyshabur et al. (2018)'s capacity (see the module note)."""
    s = sum((f / v) ** 2 for f, v in zip(frob, spec))
    return (2 * _log10(max_input_norm) + 2 * _log10(d) + _log10(h) + _log10(math.log(d * h))
            + sum(2 * _log10(v) for v in spec) + _log10(s) - 2 * _log10(gamma))


def l1_log10(l1inf, max_input_abs: float, n0: int, gamma: float) -> float:
    """log10 of the Bartlett-Mendelson (2002) l1 capacity (see the module note)."""
    return (sum(2 * _log10(2 * v) for v in l1inf) + _log10(2 * math.log(2 * n0)) + 2 * _log10(max_input_abs)
            - 2 * _log10(gamma))


def bounds(*, layers, c: float, mu, mu_to, logits, data_stats: dict, gamma: float, parameters: int,
           spectral_iters: int = 500) -> dict:
    """All capacities for metered `layers` (graph.Layer list): {"log10": {...}, "value": {...}, inputs}.

    data_stats: {"max_norm", "mean_sq_norm", "max_abs", "input_dim"} of the data.
    """
    spec, frob, l21, l1inf = [], [], [], []
    for layer in layers:
        row_sq, row_abs = opnorms.row_norms(layer.module, layer.in_shape)
        frob.append(float(row_sq.sum().sqrt()))
        l21.append(float(row_sq.sqrt().sum()))
        l1inf.append(float(row_abs.max()))
        spec.append(opnorms.spectral(layer.module, layer.in_shape, iters=spectral_iters))
    d = len(layers)
    h = max(max(math.prod(layer.in_shape), math.prod(layer.out_shape)) for layer in layers)
    max_out = float(logits.detach().double().flatten(1).norm(dim=1).max())
    logs = {
        "ours": compression_log10(c, d, max_out, mu, mu_to, gamma),
        "parameters": _log10(parameters),
        "spectral_bartlett2017": spectral_log10(spec, l21, data_stats["mean_sq_norm"], gamma),
        "pac_bayes_neyshabur2018": pac_bayes_log10(spec, frob, data_stats["max_norm"], d, h, gamma),
        "l1_bartlett_mendelson2002": l1_log10(l1inf, data_stats["max_abs"], data_stats["input_dim"], gamma),
    }
    return {
        "log10": logs,
        "value": {k: (10.0 ** v if v < 308 else math.inf) for k, v in logs.items()},
        "gamma": gamma, "c": c, "d": d, "h": h, "max_output_norm": max_out,
        "mu": list(mu), "mu_to": list(mu_to),
        "operator_norms": {layer.name: {"spectral": s, "frobenius": f, "l21": a, "l1inf": b}
                           for layer, s, f, a, b in zip(layers, spec, frob, l21, l1inf)},
    }


def data_stats(data: torch.Tensor) -> dict:
    """Input statistics the norm-based bounds use: max ||x||_2, mean ||x||_2^2, max ||x||_inf, dimension."""
    flat = data.detach().double().flatten(1)
    norms = flat.norm(dim=1)
    return {"max_norm": float(norms.max()), "mean_sq_norm": float(norms.square().mean()),
            "max_abs": float(flat.abs().max()), "input_dim": int(flat.shape[1])}
