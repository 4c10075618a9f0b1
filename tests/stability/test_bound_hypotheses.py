"""Every bound says whether its hypotheses hold (bound.hypotheses), on inputs built directly, and in a report."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from stabkern.schemas import validate
from stabkern.stability import bound, measure

WEIGHTS = {"conv": 144, "fc": 640}  # two layers: d = 2, Theorem 4.1 asks rho >= 6


def _hyp(rho, k_ours, k_conv, log10):
    return bound.hypotheses(log10, rho=rho, d=2, layer_k={"ours": k_ours, "ours_conv": k_conv},
                            layer_weights=WEIGHTS)


def test_every_hypothesis_holds():
    log10 = {"ours": 2.0, "ours_conv": 2.5, "parameters": math.log10(784), "spectral_bartlett2017": 1.0}
    h = _hyp(7.0, [1.5, 1.9], [2.0, 2.1], log10)
    assert set(h) == {"ours", "ours_conv", "spectral_bartlett2017"}  # every capacity, not the count itself
    ours = h["ours"]
    assert ours["holds"] is True
    assert ours["checks"]["rho_at_least_3d"] == {"holds": True, "measured": 7.0, "required": 6}
    assert ours["checks"]["compresses_at_k"] == {"holds": True, "layers_not_compressed": []}
    below = ours["checks"]["below_parameter_count"]
    assert below["holds"] is True and below["log10_over_parameters"] == pytest.approx(2.0 - math.log10(784))
    assert "rho = 7 >= 3d = 6" in ours["text"] and "below the parameter count" in ours["text"]
    # the conv bound's form is not checked against the paper: said in words wherever it appears
    assert h["ours_conv"]["holds"] is True and h["ours_conv"]["text"].startswith("unverified")
    # a norm bound: non-vacuous, but what it assumes of the net is not checked, so not "holds"
    spectral = h["spectral_bartlett2017"]
    assert spectral["checks"]["below_parameter_count"]["holds"] is True
    assert spectral["checks"]["structure"] == {"holds": None} and spectral["holds"] is None


def test_each_hypothesis_fails():
    """The demo nets' case: rho 0.6 < 3d, k above the weight count, the bound above the parameter count."""
    log10 = {"ours": 7.5, "ours_conv": 9.0, "parameters": math.log10(784), "spectral_bartlett2017": 11.0}
    h = _hyp(0.6, [7.4, math.log10(640) - 0.01], [8.9, math.log10(640)], log10)
    ours = h["ours"]
    assert ours["holds"] is False
    assert ours["checks"]["rho_at_least_3d"] == {"holds": False, "measured": 0.6, "required": 6}
    assert ours["checks"]["compresses_at_k"] == {"holds": False, "layers_not_compressed": ["conv"]}
    assert h["ours_conv"]["checks"]["compresses_at_k"]["layers_not_compressed"] == ["conv", "fc"]  # k = n: none saved
    assert ours["checks"]["below_parameter_count"]["holds"] is False
    assert "(fails)" in ours["text"] and "1 of 2 layers" in ours["text"] and "(vacuous)" in ours["text"]
    assert h["spectral_bartlett2017"]["holds"] is False  # vacuous, whatever its unchecked assumptions


def test_undefined_margin_and_one_layer():
    log10 = {"ours": math.nan, "parameters": 3.0}
    h = bound.hypotheses(log10, rho=math.nan, d=2, layer_k={"ours": [math.nan, math.nan]}, layer_weights=WEIGHTS)
    assert h["ours"]["holds"] is None
    assert all(c["holds"] is None for c in h["ours"]["checks"].values())
    one = bound.hypotheses({"ours": 1.0, "parameters": 3.0}, rho=math.nan, d=1, layer_k={"ours": [1.0]},
                           layer_weights={"fc": 640})
    assert one["ours"]["checks"]["rho_at_least_3d"]["holds"] is True  # no pair of layers: nothing to ask
    assert one["ours"]["holds"] is True


def test_layer_terms_sum_to_the_capacity():
    """layer_k_log10 (the k per layer the bound assumes) sums to the capacity, ours and conv alike."""
    c, d, out, gamma, beta = 1.7, 3, 12.0, 0.8, 2.5
    mu, mu_to, overlaps = [0.1, 0.2, 0.3], [0.05, 0.3, 0.5], [9, 4, 1]
    ks = bound.layer_k_log10(c, d, out, mu, mu_to, gamma, beta=beta, overlaps=overlaps)
    want = [(c * d * out * beta * k / (a * b * gamma)) ** 2 for a, b, k in zip(mu, mu_to, overlaps)]
    assert ks == pytest.approx([math.log10(w) for w in want], rel=1e-12)
    assert bound.conv_compression_log10(c, d, out, mu, mu_to, gamma, beta=beta, overlaps=overlaps) == pytest.approx(
        math.log10(sum(want)), rel=1e-12)
    assert bound.compression_log10(c, d, out, [0.1, 0.0], [0.2, 0.3], gamma) == math.inf  # a zero cushion


def test_report_carries_hypotheses_for_every_bound():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(48, 3)).eval()
    x = torch.randn(6, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    rep = measure(net, x, trials=1, probes=4, spectral_iters=3, margin_quantile=0.5)
    b = rep.to_dict()["bound"]
    assert set(b["hypotheses"]) == set(b["log10"]) - {"parameters"}
    assert b["layer_weights"] == {"0": 27, "3": 144}  # 3 x 1 x 3 x 3 and 3 x 48
    rho = b["hypotheses"]["ours"]["checks"]["rho_at_least_3d"]
    assert rho["measured"] == pytest.approx(rep.bound["rho"]) and rho["required"] == 6
    assert rho["holds"] == (rep.bound["rho"] >= 6)
    below = b["hypotheses"]["ours"]["checks"]["below_parameter_count"]
    if b["log10"]["ours"] is None:  # infinite (a lower end of mu at 0): JSON null, and vacuous
        assert below["log10_over_parameters"] is None and below["holds"] is False
    else:
        assert below["log10_over_parameters"] == pytest.approx(b["log10"]["ours"] - b["log10"]["parameters"])
    assert "ours_conv" in b["unverified"] and "ours" not in b["unverified"]
    assert b["mu_rse"]["probes"] == 4 and b["mu_rse"]["t_quantile"] == pytest.approx(3.182446305284263)
    validate(rep.to_dict())
