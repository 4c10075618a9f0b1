"""`stabkern.measure` on every zoo family: finite where the meters are defined, NaN exactly where the docs
say they are undefined.

Undefined (stabkern/stability/meters.py, report.py, docs/card.md): a pair (i, j) with j before i or j not
downstream of i (a parallel branch): its attenuation, interlayer cushion mu_{i,j} and smoothness rho_{i,j}
are NaN (the interlayer cushion's diagonal is exact and defined); a layer not followed by an activation
module has no activation contraction; the margin capacities are undefined only without a positive margin,
which cannot happen here (no labels: the margins are the model's own). Which pairs are downstream is read
off the hook-loop reference (helpers/stability_reference.py), independently of stabkern's graph: r[i, j]
is exactly 0 there when layer j does not see layer i's noise.
"""

import math

import numpy as np
import pytest
import torch
from torch import nn

from helpers.conformance_nets import (ALPHA, SAMPLES, SEED, TRIALS, assert_matches_reference,
                                     forward_with_pre_hooks, reference_of)
from stabkern import measure

# elementwise activations with phi(0) = 0 (what the contraction ||phi(z)|| / ||z|| is about); gates
# (Sigmoid, Hardsigmoid) and normalizations are not activations
ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.Hardswish)


def followed_by_activation(model, x) -> set:
    """Names of the Conv2d / Linear modules whose forward is followed by an activation module's call
    before the next Conv2d / Linear call."""
    watched = {n: m for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear) + ACTIVATIONS)}
    events = []
    forward_with_pre_hooks(model, x, watched, lambda name, a: events.append(name))
    return {a for a, b in zip(events, events[1:])
            if isinstance(watched[a], (nn.Conv2d, nn.Linear)) and isinstance(watched[b], ACTIVATIONS)}


def test_finite_where_defined_nan_where_undefined(arch, net, inputs):
    # probes = 2: the fewest measure takes; spectral_iters = 20: the operator norms need not converge here
    rep = measure(net, inputs, alpha=ALPHA, trials=TRIALS, seed=SEED, probes=2, spectral_iters=20)
    r = reference_of(arch)
    assert_matches_reference(net, inputs, rep.attenuation, r)
    names = rep.layers
    num = len(names)
    downstream = np.nan_to_num(r.mean((0, 1)).numpy()) != 0  # [i, j]: j sees layer i's noise (j >= i)

    def defined(summary):
        if summary["n"] == SAMPLES and math.isfinite(summary["median"]) and math.isfinite(summary["min"]):
            return True
        assert summary["n"] == 0 and math.isnan(summary["median"]), summary  # all or nothing, no partial NaN
        return False

    for i, name in enumerate(names):
        assert defined(rep.layer_cushion[name]) and math.isfinite(rep.layer_cushion[name]["frobenius"])
        assert defined(rep.noise_sensitivity[name])
        to = rep.interlayer_cushion[name]["to"]
        assert [defined(to[names[j]]) for j in range(i, num)] == list(downstream[i, i:]), name
        if i < num - 1:
            to = rep.interlayer_smoothness[name]["to"]
            assert [defined(to[names[j]]) for j in range(i + 1, num)] == list(downstream[i, i + 1:]), name
    contraction = rep.activation_contraction
    assert set(contraction) - {"c"} == followed_by_activation(net, inputs)
    assert all(defined(contraction[n]) for n in contraction if n != "c")
    assert math.isfinite(contraction["c"]) and contraction["c"] > 0
    bound = rep.bound
    assert bound["gamma"] > 0 and math.isfinite(bound["gamma"])
    for key, value in bound["log10"].items():
        # "ours" / "ours_conv" are +inf when a cushion's 95% interval reaches 0 (2 probes: t = 12.7), never NaN
        assert math.isfinite(value) or (key in ("ours", "ours_conv") and value == math.inf), (key, value)
