"""One trained net's generalization gap and every measure stabkern has, as plain numbers.

`net_measures(model, train, test)` runs the model on its training and held-out data (accuracy, mean
cross-entropy) and `stabkern.measure` on a sample of the training data, and reduces each meter to the one
number per net that a ranking study compares (MEASURES says how). The gap is the training accuracy minus
the test accuracy (Jiang et al. 2020's generalization gap, in accuracy); the loss gap is beside it.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class Measure(NamedTuple):
    """name: the key in the study's JSON; sign: the direction the theory expects against the gap (+1: a
    larger value goes with a larger gap, -1: with a smaller one); text: what the number is."""

    name: str
    sign: int
    text: str


MEASURES: tuple[Measure, ...] = (
    Measure("attenuation_first_to_output", +1,
            "relative noise at the output from noise at the first layer (attenuation mean[0, -1])"),
    Measure("attenuation_median_to_output", +1,
            "median over injection layers of the relative noise they leave at the output"),
    Measure("layer_cushion", -1, "least over layers of the median layer cushion mu_i"),
    Measure("interlayer_cushion", -1, "least over layers of the median interlayer cushion mu_{i->}"),
    Measure("activation_contraction", +1, "activation contraction c of the bound (the largest median)"),
    Measure("interlayer_smoothness", -1, "interlayer smoothness rho of the bound"),
    Measure("log10_ours", +1, "log10 of Arora et al. 2018's compression bound (chain)"),
    Measure("log10_ours_conv", +1, "log10 of Arora et al. 2018's conv bound (form unverified)"),
    Measure("log10_spectral", +1, "log10 of the spectral bound (Bartlett et al. 2017)"),
    Measure("log10_pac_bayes", +1, "log10 of the PAC-Bayes bound (Neyshabur et al. 2018)"),
    Measure("log10_l1", +1, "log10 of the l1 path bound (Bartlett and Mendelson 2002)"),
    Measure("log10_parameters", +1, "log10 of the parameter count"),
)
BOUND_KEYS = {"log10_ours": "ours", "log10_ours_conv": "ours_conv", "log10_spectral": "spectral_bartlett2017",
              "log10_pac_bayes": "pac_bayes_neyshabur2018", "log10_l1": "l1_bartlett_mendelson2002",
              "log10_parameters": "parameters"}


def _number(v) -> float:
    return math.nan if v is None else float(v)


def _least_median(per_layer: dict) -> float:
    medians = [_number(s.get("median")) for s in per_layer.values()]
    medians = [m for m in medians if math.isfinite(m)]
    return min(medians) if medians else math.nan


def accuracy_and_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 512) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of `model` on inputs x (N, ...) and labels y (N,) int64, under
    no_grad; the model must already be in eval mode (it is not changed)."""
    correct, loss = 0, 0.0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            logits = model(x[i:i + batch])
            correct += (logits.argmax(1) == y[i:i + batch]).sum().item()
            loss += F.cross_entropy(logits.float(), y[i:i + batch], reduction="sum").item()
    return correct / len(x), loss / len(x)


def summarize(report: dict) -> dict[str, float]:
    """The MEASURES of one `measure` report (its to_dict()), NaN where the report leaves one undefined."""
    att = np.array(report["attenuation"]["mean"], dtype=np.float64)  # (L, L), NaN/None below the diagonal
    to_output = att[:, -1]
    out = {
        "attenuation_first_to_output": float(to_output[0]),
        "attenuation_median_to_output": float(np.nanmedian(to_output)) if np.isfinite(to_output).any()
        else math.nan,
        "layer_cushion": _least_median(report["layer_cushion"]),
        "interlayer_cushion": _least_median(report["interlayer_cushion"]),
        "activation_contraction": _number(report["bound"].get("c")),
        "interlayer_smoothness": _number(report["bound"].get("rho")),
    }
    for name, key in BOUND_KEYS.items():
        out[name] = _number(report["bound"]["log10"].get(key))
    return out


def net_measures(model: nn.Module, train: tuple[torch.Tensor, torch.Tensor], test: tuple[torch.Tensor, torch.Tensor],
                 *, samples: int = 256, seed: int = 0, **measure_kwargs) -> dict:
    """Accuracy, loss and gaps of `model` on train (x (N, ...), y (N,)) and test, and the MEASURES on the first
    `samples` training samples (`stabkern.measure(..., seed=seed, **measure_kwargs)`). The model is put in
    eval mode for the call and given back as it came (measure never changes it)."""
    from .. import measure
    from ..compress.data import eval_mode

    with eval_mode(model):
        train_acc, train_loss = accuracy_and_loss(model, *train)
        test_acc, test_loss = accuracy_and_loss(model, *test)
        report = measure(model, train[0][:samples], train[1][:samples], seed=seed, **measure_kwargs).to_dict()
    return {"train_accuracy": train_acc, "test_accuracy": test_acc, "train_loss": train_loss,
            "test_loss": test_loss, "gap": train_acc - test_acc, "loss_gap": test_loss - train_loss,
            "measures": summarize(report)}
