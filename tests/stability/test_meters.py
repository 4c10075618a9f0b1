"""The meters of `stabkern.stability.meters` against direct per-sample computations and closed forms.

Direct computations use explicit operator matrices (opnorms.operator_matrix), torch.autograd's exact
Jacobians and hooks, one sample at a time. Hutchinson: the meter reports each sample's relative standard
error rse of mu_{i,j} (delta method from the probes' spread); we require |mu_hat - mu| <= 5 rse mu_hat
per sample and pair (with 64 probes the mean of ||J^T v||^2 is close to normal; < 1e-4 false failures over
the ~100 comparisons).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

import stabkern
from stabkern.zoo.digits import DigitsNet
from stabkern.zoo.cifar import resnet_cifar
from stabkern import opnorms
from stabkern import ops as kernels
from stabkern.stability import (activation_contraction, interlayer_cushion, interlayer_smoothness,
                                layer_cushion, measure, noise_attenuation, noise_sensitivity)
from stabkern.stability.context import metering, prepare
from stabkern.stability.meters import jacobian_meters


def chain_net(bias: bool = True) -> nn.Sequential:
    """conv-relu-pool-conv-relu-flatten-linear-relu-linear on (2, 6, 6): every layer a small operator."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, bias=bias), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(3, 4, 3, padding=1, bias=bias), nn.ReLU(), nn.Flatten(),
                         nn.Linear(36, 8, bias=bias), nn.ReLU(), nn.Linear(8, 5, bias=bias)).eval()


LAYER_POS = [0, 3, 6, 8]  # positions of the metered layers in chain_net


def data(n=12, shape=(2, 6, 6), seed=1):
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed)) + 0.3


def _per_sample_jacobians(net, x, i, j):
    """(J x^i, ||J||_F) per sample for the map from layer i's output to layer j's output of chain_net."""
    with torch.no_grad():
        xi = net[:LAYER_POS[i] + 1](x)
    suffix = net[LAYER_POS[i] + 1:LAYER_POS[j] + 1]
    jx, fro = [], []
    for b in range(len(x)):
        jac = torch.autograd.functional.jacobian(lambda z: suffix(z[None])[0], xi[b]).reshape(-1, xi[b].numel())
        jx.append((jac @ xi[b].flatten()).norm().item())
        fro.append(jac.norm().item())
    return np.array(jx), np.array(fro), xi.flatten(1).norm(dim=1).numpy()


def test_layer_cushion_matches_explicit_operator():
    net, x = chain_net(), data()
    d = layer_cushion(net, x)
    assert list(d) == ["0", "3", "6", "8"]
    for name, pos in zip(d, LAYER_POS):
        module = net[pos]
        with torch.no_grad():
            z = net[:pos](x).double()
        a = opnorms.operator_matrix(module, tuple(z.shape[1:]))
        mu = (z.flatten(1) @ a.T).norm(dim=1) / (a.norm() * z.flatten(1).norm(dim=1))
        assert d[name]["min"] == pytest.approx(mu.min().item(), rel=1e-5)
        assert d[name]["median"] == pytest.approx(mu.median().item() if len(mu) % 2 else np.median(mu), rel=1e-5)
        assert d[name]["max"] == pytest.approx(mu.max().item(), rel=1e-5)
        assert d[name]["frobenius"] == pytest.approx(a.norm().item(), rel=1e-10)
        assert d[name]["n"] == len(x)


@pytest.mark.parametrize("method", ["graph", "hooks"])
def test_relu_net_without_bias_is_its_jacobian(method):
    """Positive homogeneity: M^{i,j}(x^i) = J^{i,j} x^i, so ||J x^i|| = ||x^j|| exactly."""
    net, x = chain_net(bias=False), data()
    with metering(net):
        prep = prepare(net, x, method=method)
        m = jacobian_meters(prep, x, probes=4, draws=2, alpha=0.1, seed=0, budget=None, backend="auto")
        outs = [y.flatten(1).double().norm(dim=1).numpy() for y in prep.propagator.clean(x).outputs]
    for i in range(4):
        for j in range(i + 1, 4):
            np.testing.assert_allclose(m["jx_norm"][:, i, j], outs[j], rtol=1e-5)


def test_interlayer_cushion_hutchinson_within_its_interval():
    net, x = chain_net(), data(6)
    with metering(net):
        prep = prepare(net, x)
        m = jacobian_meters(prep, x, probes=64, draws=1, alpha=0.1, seed=4, budget=None, backend="auto")
    for i in range(4):
        h = prep.layers[i].out_shape
        np.testing.assert_allclose(m["mu"][:, i, i], 1 / math.sqrt(math.prod(h)))
        for j in range(i + 1, 4):
            jx, fro, xn = _per_sample_jacobians(net, x, i, j)
            exact = jx / (fro * xn)
            np.testing.assert_allclose(m["jx_norm"][:, i, j], jx, rtol=1e-5)
            rse = m["mu_rse"][:, i, j]
            assert np.all(rse > 0) and np.all(rse < 0.2)
            assert np.all(np.abs(m["mu"][:, i, j] - exact) <= 5 * rse * m["mu"][:, i, j])
    d = interlayer_cushion(net, x, probes=8)
    for i, name in enumerate(d):
        assert d[name]["max"] <= d[name]["to"][name]["min"] + 1e-12  # mu_{i->} <= mu_{i,i} = 1/sqrt(h_i)
        assert set(d[name]["to"]) == set(list(d)[i:])
        assert d[name]["to"][name]["rel_se_median"] == 0


def test_interlayer_smoothness_matches_direct_computation():
    """rho_{i,j}(x) = alpha ||x^j|| / max_k ||M(x^i + eta_k) - M(x^i) - J eta_k|| (bias-aware) and the literal
    alpha ||x^j|| / max_k ||M(x^i + eta_k) - J (x^i + eta_k)||, same noise as the meter."""
    net, x = chain_net(), data(6)
    alpha, draws = 0.2, 3
    d = interlayer_smoothness(net, x, alpha=alpha, draws=draws, seed=9)
    with torch.no_grad():
        outs = [net[:p + 1](x) for p in LAYER_POS]
    for i in range(3):
        xi = outs[i]
        eta = kernels.sphere_noise(xi, alpha * xi.flatten(1).double().norm(dim=1), trials=draws, seed=9,
                                   stream=4 + i).view(draws, *xi.shape) - xi
        per_j, per_j_literal = [], []
        for j in range(i + 1, 4):
            suffix = net[LAYER_POS[i] + 1:LAYER_POS[j] + 1]
            worst, worst_literal = [], []
            for b in range(len(x)):
                dist, dist_literal = [], []
                for k in range(draws):
                    point = xi[b] + eta[k, b]
                    m_val = suffix(point[None])[0]
                    _, j_point = torch.func.jvp(lambda z: suffix(z[None])[0], (xi[b],), (point,))
                    clean, j_eta = torch.func.jvp(lambda z: suffix(z[None])[0], (xi[b],), (eta[k, b],))
                    dist.append((m_val - clean - j_eta).double().norm().item())
                    dist_literal.append((m_val - j_point).double().norm().item())
                worst.append(alpha * outs[j][b].double().norm().item() / max(dist))
                worst_literal.append(alpha * outs[j][b].double().norm().item() / max(dist_literal))
            per_j.append(worst)
            per_j_literal.append(worst_literal)
            to = str(LAYER_POS[j])
            assert d[str(LAYER_POS[i])]["to"][to]["min"] == pytest.approx(min(worst), rel=1e-3)
            assert d["literal"][str(LAYER_POS[i])]["to"][to]["min"] == pytest.approx(min(worst_literal), rel=1e-3)
        assert d[str(LAYER_POS[i])]["min"] == pytest.approx(np.min(per_j), rel=1e-3)
        assert d["literal"][str(LAYER_POS[i])]["min"] == pytest.approx(np.min(per_j_literal), rel=1e-3)
    assert d["rho"] == pytest.approx(min(d[k]["min"] for k in ("0", "3", "6")))
    assert d["literal"]["rho"] == pytest.approx(min(d["literal"][k]["min"] for k in ("0", "3", "6")))


def test_linear_net_is_perfectly_smooth():
    net = nn.Sequential(nn.Linear(6, 5, bias=False), nn.Linear(5, 4, bias=False)).eval()
    d = interlayer_smoothness(net, data(5, (6,)), draws=2)
    assert d["rho"] > 1e4  # M = J: only float32 rounding is left


def test_activation_contraction_matches_hooks():
    net, x = chain_net(), data()
    d = activation_contraction(net, x)
    for pos, act in ((0, 1), (3, 4), (6, 7)):
        with torch.no_grad():
            u = net[:act](x).flatten(1)
        ratio = u.norm(dim=1) / torch.relu(u).norm(dim=1)
        assert d[str(pos)]["max"] == pytest.approx(ratio.max().item(), rel=1e-6)
        assert d[str(pos)]["min"] == pytest.approx(ratio.min().item(), rel=1e-6)
    assert "8" not in d  # the logits have no activation after them
    assert d["c"] == pytest.approx(max(d[k]["max"] for k in ("0", "3", "6")))


def test_activation_contraction_with_a_shared_relu():
    """ResNet blocks call one nn.ReLU several times: each layer gets the call that follows it."""
    torch.manual_seed(0)
    net = resnet_cifar((1, 1), widths=(4, 8)).eval()
    d = activation_contraction(net, data(6, (3, 8, 8)))
    assert "conv1" in d and "layer1.0.conv1" in d and "fc" not in d
    assert all(d[k]["min"] >= 1 for k in d if k != "c")  # ||relu(u)|| <= ||u||


def test_activation_contraction_after_hardswish():
    """MobileNetV3's Hardswish is an activation (phi(0) = 0, like SiLU): the layer before it gets its
    contraction ||u|| / ||hardswish(u)|| (issue 17: it was left out, as if no activation followed)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Hardswish(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)).eval()
    x = data(5, (3, 8, 8))
    d = activation_contraction(net, x)
    with torch.no_grad():
        u = net[0](x).flatten(1)
    ratio = u.norm(dim=1) / nn.functional.hardswish(u).norm(dim=1)
    assert d["0"]["max"] == pytest.approx(ratio.max().item(), rel=1e-6)
    assert "3" not in d


class _LinearOnChannelsLast(nn.Module):
    """ConvNeXt's pattern: a Linear on the (N, H, W, C) permutation of a conv's output."""

    def __init__(self):
        super().__init__()
        self.conv, self.fc, self.head = nn.Conv2d(2, 8, 3), nn.Linear(8, 5), nn.Linear(5 * 4 * 4, 3)

    def forward(self, x):
        return self.head(self.fc(self.conv(x).permute(0, 2, 3, 1)).flatten(1))


def test_layer_cushion_of_a_linear_on_4d_inputs():
    """The cushion of a Linear applied to (N, H, W, C) removes its bias on the last dim (issue 17: ConvNeXt-Tiny's
    measure raised, the bias taken per channel of dim 1): nu = ||A z|| / (||A||_F ||z||) per sample, A z = z W^T
    at every position, ||A||_F as opnorms.frobenius gives it."""
    torch.manual_seed(0)
    net, x = _LinearOnChannelsLast().eval(), data(5, (2, 6, 6))
    d = layer_cushion(net, x)
    with torch.no_grad():
        z = net.conv(x).permute(0, 2, 3, 1)
        frob = opnorms.frobenius(net.fc, tuple(z.shape[1:]))
        want = (z @ net.fc.weight.T).flatten(1).norm(dim=1) / (frob * z.flatten(1).norm(dim=1))
    assert d["fc"]["min"] == pytest.approx(want.min().item(), rel=1e-5)


def test_noise_sensitivity_is_the_attenuation_at_the_output():
    net, x = chain_net(), data()
    psi = noise_sensitivity(net, x, alpha=0.05, trials=4, seed=3)
    rep = noise_attenuation(net, x, alpha=0.05, trials=4, seed=3)
    for i, name in enumerate(rep.layers):
        want = rep.per_sample_sq[:, i, -1] / 0.05 ** 2
        assert psi[name]["median"] == pytest.approx(float(np.median(want)), rel=1e-9)
    assert psi["psi"] == pytest.approx(max(psi[k]["max"] for k in rep.layers))


def test_measure_report():
    torch.manual_seed(0)
    net = DigitsNet(4).eval()
    x = data(20, (1, 8, 8))
    with torch.no_grad():
        labels = net(x).argmax(1)  # margins of the net's own predictions: positive
    net.train()
    rep = stabkern.stability.measure(net, x, labels, trials=2, probes=4, draws=2, margin_quantile=0.5,
                                     spectral_iters=50)
    assert net.training and all(m.training for m in net.modules())
    d = json.loads(json.dumps(rep.to_dict(), allow_nan=False))
    assert set(d) == {"format", "schema_version", "layers", "layer_cushion", "interlayer_cushion",
                      "activation_contraction", "interlayer_smoothness", "interlayer_smoothness_literal",
                      "jacobian_spread", "noise_sensitivity", "attenuation", "bound", "settings"}
    assert d["format"] == "stabkern-measure-report-v1" and d["schema_version"] == 1
    assert d["layers"] == ["features.0", "features.2", "features.5", "classifier.1", "classifier.3"]
    for key in ("min", "q05", "q25", "median", "q75", "q95", "max", "mean", "n"):
        assert key in d["layer_cushion"]["features.0"]
    lc = layer_cushion(net, x)
    assert d["layer_cushion"]["features.2"]["median"] == pytest.approx(lc["features.2"]["median"], rel=1e-9)
    b = d["bound"]
    assert set(b["log10"]) == {"ours", "ours_conv", "parameters", "spectral_bartlett2017",
                               "pac_bayes_neyshabur2018", "l1_bartlett_mendelson2002"}
    assert b["log10"]["parameters"] == pytest.approx(math.log10(sum(p.numel() for p in net.parameters())))
    assert b["margin_loss"] == pytest.approx(0.5, abs=0.06)
    assert b["mu"][0] == pytest.approx(d["layer_cushion"]["features.0"]["min"])
    # the bound takes the conservative mu_{i->}: the lowest 95% interval end over samples and j >= i
    assert b["mu_to"][1] == pytest.approx(max(0.0, min(t["min_ci95"][0] for t in
                                                       d["interlayer_cushion"]["features.2"]["to"].values())))
    assert b["mu_to"][1] <= d["interlayer_cushion"]["features.2"]["min"]
    assert b["c"] == pytest.approx(d["activation_contraction"]["c"])


def test_meters_bad_input():
    net, x = chain_net(), data(4)
    with pytest.raises(ValueError, match="cushions and the bound need Conv2d or Linear"):
        layer_cushion(net, x, layers=["0", "1"])
    with pytest.raises(ValueError, match="probes"):
        interlayer_cushion(net, x, probes=0)
    with pytest.raises(ValueError, match="draws"):
        interlayer_smoothness(net, x, draws=0)
    with pytest.raises(ValueError, match="margin"):
        measure(net, x, margin=-1.0)
    with pytest.raises(ValueError, match="labels"):
        measure(net, x, torch.tensor([0, 1, 9, 2]), trials=1, probes=2, draws=1)
    with pytest.raises(ValueError, match="per-sample shape"):
        layer_cushion(net, data(4, (3, 6, 6)))
