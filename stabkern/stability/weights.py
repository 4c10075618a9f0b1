"""What the weights alone say, per Conv2d / Linear layer: no data, no forward pass.

For layer i with weight W reshaped to the matrix W_m of shape (out, in) = (C_out, C_in/groups kh kw) for a
Conv2d (one row per filter) or the (out, in) weight of a Linear layer:

- singular_values: torch.linalg.svdvals(W_m), descending (the spectrum: trained conv layers have a few
  large values and many near zero, the seed note's VGG-19 figure);
- spectral ||W_m||_2 (the largest), frobenius ||W_m||_F, l1 (sum |w|, every entry), l21 (sum of the rows'
  l2 norms, ||W_m^T||_{2,1}) and l1inf (the largest l1 norm of a row);
- stable_rank ||W_m||_F^2 / ||W_m||_2^2, in [1, rank];
- noise_ratio ||W_m||_F / (sqrt(n) ||W_m||_2) with n = in, the matrix's input dimension: Gaussian noise
  eta in R^n gains E||W_m eta||^2 / ||eta||^2 = ||W_m||_F^2 / n, while an input along the top singular
  vector gains ||W_m||_2^2, so this is the noise's gain over the best signal's (Arora et al. 2018's noise
  stability of one layer, as the seed note recalls it): small when the spectrum is concentrated.
  noise_ratio^2 = stable_rank / n.

For a Conv2d these are norms of the reshaped matrix, not of the convolution's operator A on the whole
feature map (stabkern/opnorms.py): ||A||_2 and ||A||_F depend on the input size, padding and stride, so
they need an input shape; with data, the measure report's bound["operator_norms"] has them.

Capacities that need no data (`capacities`): each norm-based bound of stability/bound.py factors into
(the weights' part) x (data scale / margin)^2; the weights' part is the same function with the data
scale and the margin set to 1, on these matrices (so, for conv layers, on W_m rather than A):
Bartlett et al. 2017 prod ||W||_2^2 (sum (||W^T||_{2,1} / ||W||_2)^{2/3})^3, Neyshabur et al. 2018
d^2 h prod ||W||_2^2 sum ||W||_F^2 / ||W||_2^2 (h the largest matrix dimension), Bartlett-Mendelson
prod (2 ||W||_{1,inf})^2. What needs data: the scale max ||x|| (or mean ||x||^2, max |x|), the margin
gamma, and every meter of the compression bound (cushions, contraction, smoothness).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..tables import dataframe
from .bound import l1_log10, pac_bayes_log10, spectral_log10
from .layers import resolve_layers
from .report import json_value

NEEDS_DATA = ("noise attenuation", "layer and interlayer cushions", "activation contraction",
              "interlayer smoothness", "noise sensitivity", "the margin gamma and every capacity in effective "
              "parameters (the compression bound and the norm bounds' data factor (scale / gamma)^2)",
              "operator norms of conv layers on the feature map (they need the input size)",
              "choose_k and the measured compression errors", "accuracy vs k (with labels)")


CHUNK = 1 << 22  # entries converted to float64 at a time: a 4096 x 25088 Linear (VGG) is not copied whole
SVD_LIMIT = 1 << 22  # above this many entries the spectrum comes from the Gram matrix (singular_values)


def weight_matrix(module: nn.Module) -> torch.Tensor:
    """The layer's weight as a matrix view, in its own dtype: (C_out, C_in/groups kh kw) for a Conv2d, (out, in)
    for a Linear."""
    w = module.weight.detach()
    return w.reshape(w.shape[0], -1)


def _row_chunks(w: torch.Tensor):
    step = max(1, CHUNK // max(1, w.shape[1]))
    for start in range(0, w.shape[0], step):
        yield w[start:start + step].double().cpu()


def _col_chunks(w: torch.Tensor):
    step = max(1, CHUNK // max(1, w.shape[0]))
    for start in range(0, w.shape[1], step):
        yield w[:, start:start + step].double().cpu()


def singular_values(w: torch.Tensor, gram: bool | None = None) -> torch.Tensor:
    """Singular values of the matrix w (rows, cols), descending, float64 (min(rows, cols) of them).

    Up to SVD_LIMIT entries (or gram=False): torch.linalg.svdvals of w in float64. Above (or gram=True): the
    square roots of the eigenvalues of the smaller Gram matrix (w w^T or w^T w, accumulated in float64 over
    column or row chunks, then eigvalsh): min(rows, cols)^2 memory instead of rows x cols float64, and a GEMM
    instead of an SVD of the full matrix. Its error: the Gram's eigenvalues move by at most ||E||_2 <= about
    (length of its sums) eps ||w||_2^2, so s_i^2 is exact to that absolute amount (small s_i lose relative
    digits; a spectrum on a log scale down to ~1e-7 s_max is unaffected)."""
    rows, cols = w.shape
    if gram is None:
        gram = rows * cols > SVD_LIMIT
    if not gram:
        return torch.linalg.svdvals(w.double().cpu())
    small = min(rows, cols)
    g = torch.zeros(small, small, dtype=torch.float64)
    if rows <= cols:
        for c in _col_chunks(w):
            g += c @ c.T
    else:
        for r in _row_chunks(w):
            g += r.T @ r
    return torch.linalg.eigvalsh(g).clamp(min=0).sqrt().flip(0)


def layer_weights(name: str, module: nn.Module) -> dict:
    """The weights-only numbers of one layer (module note): a JSON-ready dict."""
    w = weight_matrix(module)
    s = singular_values(w)
    spectral, frobenius = float(s[0]), float(s.square().sum().sqrt())
    l1 = l21 = l1inf = 0.0
    for r in _row_chunks(w):
        l1 += float(r.abs().sum())
        l21 += float(r.norm(dim=1).sum())
        l1inf = max(l1inf, float(r.abs().sum(1).max()))
    rows, n = w.shape
    return json_value({
        "name": name, "type": type(module).__name__, "shape": list(module.weight.shape), "matrix": [rows, n], "n": n,
        "spectral": spectral, "frobenius": frobenius, "l1": l1, "l21": l21, "l1inf": l1inf,
        "stable_rank": frobenius ** 2 / spectral ** 2 if spectral > 0 else math.nan,
        "noise_ratio": frobenius / (math.sqrt(n) * spectral) if spectral > 0 else math.nan,
        "singular_values": s.tolist(),
    })


@dataclass
class WeightReport:
    """Per layer the weights-only numbers (layer_weights), and the capacities that need no data (log10)."""

    layers: list
    capacities: dict
    parameters: int

    def to_dict(self) -> dict:
        """{"layers": [layer_weights dicts], "capacities_log10": {bound: log10 weights' factor}, "parameters",
        "matrix": how conv weights are reshaped, "needs_data": what the weights cannot say}."""
        return json_value({"layers": self.layers, "capacities_log10": self.capacities, "parameters": self.parameters,
                           "matrix": "Conv2d: (C_out, C_in/groups kh kw), the reshaped weight, not the conv operator",
                           "needs_data": list(NEEDS_DATA)})

    def layer_rows(self) -> list:
        """One flat dict per layer, without the singular values (the layers.csv columns)."""
        return [{"layer": r["name"], **{k: v for k, v in r.items() if k not in ("name", "singular_values")}}
                for r in self.layers]

    def to_dataframe(self):
        """layer_rows() as a pandas DataFrame indexed by layer name (needs pandas; ImportError otherwise)."""
        return dataframe(self.layer_rows(), "WeightReport")


def weight_report(model: nn.Module, layers=None) -> WeightReport:
    """The weights-only section of `model` (module note): every Conv2d and Linear (or `layers`, names or
    modules, as measure takes them), in modules() order. Reads the weights only; nothing runs."""
    found = resolve_layers(model, layers)
    rows = [layer_weights(name, m) for name, m in found]
    spec = [r["spectral"] for r in rows]
    frob = [r["frobenius"] for r in rows]
    h = max(max(r["matrix"]) for r in rows)
    caps = {"spectral_bartlett2017": spectral_log10(spec, [r["l21"] for r in rows], 1.0, 1.0),
            "pac_bayes_neyshabur2018": pac_bayes_log10(spec, frob, 1.0, len(rows), h, 1.0),
            "l1_bartlett_mendelson2002": l1_log10([r["l1inf"] for r in rows], 1.0, 1.0)}
    return WeightReport(layers=rows, capacities=caps, parameters=sum(p.numel() for p in model.parameters()))


__all__ = ["WeightReport", "layer_weights", "singular_values", "weight_matrix", "weight_report"]
