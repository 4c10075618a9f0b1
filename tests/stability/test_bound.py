"""The bounds of `stabkern.stability.bound` against the formulas written out by hand on small nets."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from stabkern.stability import bound, measure
from stabkern.stability.layers import resolve_layers, trace_layers


def test_margins_and_gamma():
    logits = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 2.5], [1.0, 1.0, -1.0]])
    np.testing.assert_allclose(bound.margins(logits), [2.0, 0.5, 0.0])
    np.testing.assert_allclose(bound.margins(logits, torch.tensor([0, 1, 2])), [2.0, -0.5, -2.0])
    m = np.arange(1, 101, dtype=float)
    assert bound.choose_margin(m, 0.1) == pytest.approx(np.quantile(m, 0.1))
    with pytest.raises(ValueError, match="<= 0"):
        bound.choose_margin(np.array([-1.0, -0.5, 2.0]), 0.5)
    with pytest.raises(ValueError, match="margin_quantile"):
        bound.choose_margin(m, 1.0)
    with pytest.raises(ValueError, match="labels"):
        bound.margins(logits, torch.tensor([0, 3, 1]))
    with pytest.raises(ValueError, match="2 outputs"):
        bound.margins(torch.ones(3, 1))


def test_compression_capacity_formula():
    got = bound.compression_log10(c=2.0, d=3, max_output_norm=5.0, mu=[0.5, 0.25, 0.1], mu_to=[0.1, 0.2, 1.0],
                                  gamma=0.5)
    want = 4 * 9 * 25 * (1 / (0.25 * 0.01) + 1 / (0.0625 * 0.04) + 1 / (0.01 * 1.0)) / 0.25
    assert got == pytest.approx(math.log10(want), rel=1e-12)


def test_norm_bounds_on_a_linear_chain_match_numpy():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4)).eval()
    x = torch.randn(30, 6)
    layers = trace_layers(net, x[:1], resolve_layers(net))
    w = [net[0].weight.detach().double().numpy(), net[2].weight.detach().double().numpy()]
    with torch.no_grad():
        logits = net(x)
    stats = bound.data_stats(x)
    out = bound.bounds(layers=layers, c=1.5, mu=[0.3, 0.4], mu_to=[0.2, 0.5], logits=logits, data_stats=stats,
                       gamma=0.7, parameters=54)
    spec = [np.linalg.norm(a, 2) for a in w]
    fro = [np.linalg.norm(a) for a in w]
    l21 = [np.linalg.norm(a, axis=1).sum() for a in w]
    l1inf = [np.abs(a).sum(1).max() for a in w]
    xs = x.double().numpy()
    mean_sq = (np.linalg.norm(xs, axis=1) ** 2).mean()
    b, binf, h, d = np.linalg.norm(xs, axis=1).max(), np.abs(xs).max(), 6, 2
    want = {
        "spectral_bartlett2017": mean_sq * np.prod(np.square(spec)) * sum((a / s) ** (2 / 3) for a, s in
                                                                         zip(l21, spec)) ** 3 / 0.49,
        # log factors dropped by one convention for every bound (bound.py): ln(d h) and 2 ln(2 n_0) here
        "pac_bayes_neyshabur2018": b ** 2 * d ** 2 * h * np.prod(np.square(spec))
        * sum((f / s) ** 2 for f, s in zip(fro, spec)) / 0.49,
        "l1_bartlett_mendelson2002": np.prod([(2 * v) ** 2 for v in l1inf]) * binf ** 2 / 0.49,
        "parameters": 54.0,
        "ours": 1.5 ** 2 * 4 * logits.double().norm(dim=1).max().item() ** 2
        * (1 / (0.09 * 0.04) + 1 / (0.16 * 0.25)) / 0.49,
    }
    for key, value in want.items():
        assert out["log10"][key] == pytest.approx(math.log10(value), abs=1e-6), key
        assert out["value"][key] == pytest.approx(value, rel=1e-5)
    assert out["operator_norms"]["0"]["spectral"] == pytest.approx(spec[0], rel=1e-6)
    # Lanczos ends within dim(input) iterations (6 and 5), converged (issue 11, item 1)
    norms = out["operator_norms"]
    assert 1 <= norms["0"]["spectral_iterations"] <= 6 and 1 <= norms["2"]["spectral_iterations"] <= 5
    assert norms["0"]["spectral_converged"] and norms["2"]["spectral_converged"]
    assert out["spectral_tol"] == 1e-3
    logs = out["log_factors_log10"]  # what each bound dropped, so it can be put back
    assert logs["spectral_bartlett2017"] == pytest.approx(2 * math.log10(math.log(2 * h) * math.log(30)))
    assert logs["pac_bayes_neyshabur2018"] == pytest.approx(math.log10(math.log(d * h)))
    assert logs["l1_bartlett_mendelson2002"] == pytest.approx(math.log10(2 * math.log(2 * 6)))
    assert "ours_conv" not in out["log10"]  # no beta given


def test_bound_chart(tmp_path):
    pytest.importorskip("matplotlib")
    from stabkern.stability.plots import plot_bounds
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4)).eval()
    x = torch.randn(30, 6)
    rep = measure(net, x, trials=2, probes=2, draws=1, spectral_iters=50)
    ax = plot_bounds(rep.bound, path=tmp_path / "b.png")
    assert (tmp_path / "b.png").stat().st_size > 1000 and len(ax.patches) == 6
    heights = [p.get_height() for p in ax.patches]
    want = [rep.bound["log10"][k] for k in ("ours", "ours_conv", "parameters", "spectral_bartlett2017",
                                            "pac_bayes_neyshabur2018", "l1_bartlett_mendelson2002")]
    assert heights == pytest.approx([v if math.isfinite(v) else 0.0 for v in want])


def test_report_plot_draws_every_figure_readably_with_many_layers(tmp_path):
    """StabilityReport.plot() writes all its figures; with more layers than a legend can hold (a 40-layer
    chain) the attenuation figure has a colorbar and no legend covering the curves."""
    import matplotlib

    matplotlib.use("Agg")
    torch.manual_seed(0)
    net = torch.nn.Sequential(*[m for _ in range(20) for m in (torch.nn.Linear(6, 6), torch.nn.ReLU())],
                              torch.nn.Linear(6, 3))
    rep = measure(net, torch.randn(6, 6), trials=2, probes=2, draws=1, spectral_iters=10)
    paths = rep.plot(tmp_path)
    assert set(paths) == {"attenuation", "cushions", "bounds"}
    assert all((tmp_path / f"{k}.png").stat().st_size > 1000 for k in paths)
    figs = rep.plot()
    att = figs["attenuation"]
    assert att.axes[0].get_legend() is None and len(att.axes) == 2  # the curves' axes and the colorbar
    assert len(att.axes[0].get_xticklabels()) <= 30
