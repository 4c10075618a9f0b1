"""`stabkern.stability.measure` on every net it promises to take, its early checks, and the conv bound.

Nets are tiny (a few channels, 6x6 images, 3 samples) so each `measure` call takes a second or two.
"""

from __future__ import annotations

import ast
import json
import math
import pathlib
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import stabkern
from stabkern.stability import bound, interlayer_smoothness, measure
from stabkern.stability.context import metering, prepare
from stabkern.stability.meters import jacobian_meters, jacobian_spread
from stabkern.zoo.cifar import BasicBlock, Bottleneck, ResNet

# probes=4: at 2 the t quantile of each sample's 95% interval is 12.7, and its lower end of mu reaches 0
# (an infinite bound) on most pairs
FAST = dict(trials=1, probes=4, draws=1, spectral_iters=3, margin_quantile=0.5)


def images(n=3, shape=(3, 6, 6), seed=1):
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed))


def bottleneck_without_downsample() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), Bottleneck(8, 2), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, 3))


RESNETS = {
    "basic": lambda: ResNet(BasicBlock, (1,), (4,), num_classes=3),
    "basic_downsample": lambda: ResNet(BasicBlock, (1, 1), (2, 4), num_classes=3),
    "bottleneck": bottleneck_without_downsample,
    "bottleneck_downsample": lambda: ResNet(Bottleneck, (1,), (2,), num_classes=3),
}


@pytest.mark.parametrize("kind", sorted(RESNETS))
def test_measure_on_every_residual_block(kind):
    """Regression (issue 9, 4a): a 1x1 downsample conv beside the main path raised KeyError. Layers not
    downstream of layer i are undefined (NaN) in mu_{i,j}, never a number; the bound stays finite."""
    torch.manual_seed(0)
    net = RESNETS[kind]().eval()
    has_down = any("downsample" in name for name, _ in net.named_modules())
    assert has_down == kind.endswith("downsample")
    rep = measure(net, images(), **FAST)
    assert math.isfinite(rep.bound["log10"]["ours"]) and math.isfinite(rep.bound["log10"]["ours_conv"])
    assert rep.bound["beta"] >= 1  # P max_p e_p / sum_p e_p >= 1 for any energies
    d = rep.to_dict()
    if has_down:
        down = next(n for n in rep.layers if "downsample" in n)
        k = rep.layers.index(down)
        main = rep.layers[k + 1]  # the block's conv1, called after the skip in these blocks
        assert d["interlayer_cushion"][down]["to"][main]["n"] == 0  # NaN for every sample: not downstream
        assert d["interlayer_cushion"][down]["to"][rep.layers[-1]]["n"] == 3  # fc is downstream of everything


def test_graph_and_hooks_agree_on_parallel_branches():
    torch.manual_seed(0)
    net = RESNETS["basic_downsample"]().eval()
    x = images()
    out = {}
    for method in ("graph", "hooks"):
        with metering(net):
            prep = prepare(net, x, method=method)
            assert prep.propagator.method == method
            out[method] = jacobian_meters(prep, x, probes=2, draws=1, alpha=0.1, seed=0, budget=None,
                                          backend="auto")
    for key in ("mu", "rho", "rho_literal"):
        a, b = out["graph"][key], out["hooks"][key]
        assert np.array_equal(np.isnan(a), np.isnan(b)), key
        np.testing.assert_allclose(a[~np.isnan(a)], b[~np.isnan(b)], rtol=1e-4)


def chain(bias=True):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8, bias=bias), nn.ReLU(), nn.Linear(8, 8, bias=bias), nn.ReLU(),
                         nn.Linear(8, 4, bias=bias)).eval()


@pytest.mark.parametrize("probes", [1, 2])
def test_draws_above_probes(probes):
    """Regression (issue 9, item 3): draws > probes crashed (1 < probes) or reused probe 0's direction for
    every draw (probes = 1). The smoothness draws do not depend on the probes (forward_meters draws them,
    reverse_sweeps probes), so rho must equal the probes >= draws run."""
    net, x = chain(), torch.randn(5, 6, generator=torch.Generator().manual_seed(2))
    with metering(net):
        prep = prepare(net, x)
        few = jacobian_meters(prep, x, probes=probes, draws=4, alpha=0.1, seed=3, budget=None, backend="auto")
        many = jacobian_meters(prep, x, probes=4, draws=4, alpha=0.1, seed=3, budget=None, backend="auto")
    np.testing.assert_array_equal(few["rho"], many["rho"])
    np.testing.assert_array_equal(few["rho_literal"], many["rho_literal"])
    rep = measure(net, x, trials=1, probes=2, draws=4, seed=3, spectral_iters=3, margin_quantile=0.5)
    assert rep.bound["rho"] == pytest.approx(float(np.nanmin(many["rho"])), rel=1e-12)


def test_smoothness_bias_aware_against_literal():
    """Issue 9, item 13. On an affine map with biases M(x + eta) - M(x) - J eta = 0, so the bias-aware rho
    is limited only by float32 rounding (relative residue << 1e-5: rho > 0.01 / 1e-4 = 100 at alpha = 0.01),
    while the literal remainder is the constant offset M(x) - J x: the literal rho is exactly proportional
    to alpha. On a bias-free ReLU net M(x) = J x and the two forms agree."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 8), nn.Linear(8, 4)).eval()
    with torch.no_grad():
        net[0].bias.fill_(1.0)
    x = torch.randn(5, 6, generator=torch.Generator().manual_seed(2))
    small = interlayer_smoothness(net, x, alpha=0.01, draws=2)
    large = interlayer_smoothness(net, x, alpha=0.1, draws=2)
    assert small["literal"]["rho"] == pytest.approx(0.1 * large["literal"]["rho"], rel=1e-3)
    assert small["literal"]["rho"] < 1
    assert small["rho"] > 100 and large["rho"] > 100
    relu = chain(bias=False)
    d = interlayer_smoothness(relu, x, alpha=0.1, draws=3)
    assert d["rho"] == pytest.approx(d["literal"]["rho"], rel=1e-4)
    for name in ("0", "2"):
        assert d[name]["median"] == pytest.approx(d["literal"][name]["median"], rel=1e-4)


class Tupled(nn.Module):
    def __init__(self, net, kind):
        super().__init__()
        self.net, self.kind = net, kind

    def forward(self, x):
        y = self.net(x)
        if self.kind == "tuple":
            return y, x.flatten(1)
        if self.kind == "list_features_first":
            return ["features", y]
        return {"aux": x.flatten(1), self.kind: y}


@pytest.mark.parametrize("kind", ["tuple", "list_features_first", "logits", "out"])
def test_tuple_and_dict_outputs(kind):
    """Regression (issue 9, item 10): a tuple or dict output raised AttributeError. The logits: a tuple's
    first tensor, a dict's 'logits' (else 'out') entry; the report equals the plain model's."""
    net = chain()
    x = torch.randn(6, 6, generator=torch.Generator().manual_seed(4))
    plain = measure(net, x, **FAST)
    wrapped = measure(Tupled(net, kind), x, **FAST)
    assert wrapped.bound["gamma"] == pytest.approx(plain.bound["gamma"], rel=1e-6)
    assert wrapped.bound["log10"]["ours"] == pytest.approx(plain.bound["log10"]["ours"], rel=1e-5)


def test_unknown_output_is_a_clear_error():
    with pytest.raises(TypeError, match="'logits' or 'out'"):
        measure(Tupled(chain(), "scores"), torch.randn(4, 6), **FAST)


class Counting(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net, self.calls = net, 0

    def forward(self, x):
        self.calls += 1
        return self.net(x)


def test_labels_checked_before_any_work():
    """Regression (issue 9, 4c): labels out of range failed only after every meter had run. Now at most
    the few one-sample forwards that find the layers and the number of classes happen first."""
    net = Counting(chain())
    x = torch.randn(5, 6)
    with pytest.raises(ValueError, match=r"labels must be class indices in \[0, 4\)"):
        measure(net, x, torch.tensor([0, 1, 9, 2, 0]), **FAST)
    assert net.calls <= 6  # 4, and the 2 two-sample forwards of propagate's sample-independence check
    net.calls = 0
    with pytest.raises(TypeError, match="labels must be integer"):
        measure(net, x, torch.tensor([0.0, 1.0, 2.0, 1.0, 0.0]), **FAST)
    with pytest.raises(TypeError, match="labels must be integer"):
        measure(net, x, np.array([True, False, True, True, False]), **FAST)
    with pytest.raises(ValueError, match=r"labels must have shape \(5,\)"):
        measure(net, x, torch.tensor([[0, 1, 2, 1, 0]]), **FAST)
    assert net.calls == 0  # dtype and shape: refused before the first forward


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(spectral_iters=0), ValueError, "spectral_iters"),
    (dict(spectral_tol=-1.0), ValueError, "spectral_tol"),
    (dict(memory_budget=-5), ValueError, "memory_budget"),
    (dict(probes=1), ValueError, "probes"),
    (dict(trials=2.0), TypeError, "trials"),
    (dict(draws=True), TypeError, "draws"),
    (dict(margin_quantile=1.0), ValueError, "margin_quantile"),
    (dict(precision="fp16"), ValueError, "precision"),
    (dict(method="fx"), ValueError, "method"),
    (dict(layers="0"), TypeError, "layers"),
    (dict(floor=1), TypeError, "floor"),
])
def test_arguments_checked_before_any_work(kwargs, error, match):
    net = Counting(chain())
    args = {**FAST, **kwargs}
    with pytest.raises(error, match=match):
        measure(net, torch.randn(4, 6), **args)
    assert net.calls == 0


def test_tiny_margin_warns():
    """Regression (issue 9, 4c): near-equal logits gave gamma ~ 1e-12 silently. The logits here are a
    constant 0.1 per class plus ~1e-5 of signal (well above float32 resolution 7e-9 at 0.1), so
    gamma / max ||f(x)|| ~ 1e-4 < GAMMA_WARN_FRACTION."""
    net = chain()
    with torch.no_grad():
        net[4].weight.mul_(1e-5)
        net[4].bias.fill_(0.1)
    with pytest.warns(UserWarning, match="logit scale"):
        rep = measure(net, torch.randn(6, 6), **FAST)
    assert rep.bound["gamma"] < bound.GAMMA_WARN_FRACTION * rep.bound["max_output_norm"]
    assert any("logit scale" in n for n in rep.settings["notes"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        measure(chain(), torch.randn(6, 6), **FAST)  # a net with spread logits: no warning


def test_beta_on_constructed_jacobians():
    """beta^2 = P max_p ||J[:, p]||_F^2 / ||J||_F^2 for the map x^0 (C = 2 channels, P = 9 positions) ->
    x^1 = W flat(x^0). Columns of position p are {c P + p}. If every position carries the same block B,
    every probe's energies are equal over p (e_p = ||B^T v||^2) and beta = 1 exactly; if only one position
    has nonzero columns, e_p = 0 elsewhere and beta^2 = P exactly, whatever the probes."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 2, 1, bias=False), nn.Flatten(), nn.Linear(18, 5, bias=False)).eval()
    x = torch.randn(4, 1, 3, 3)
    block = torch.randn(5, 2)
    for case, want in (("even", 1.0), ("one", 3.0)):
        w = torch.zeros(5, 2, 9)
        if case == "even":
            w[:] = block[:, :, None]
        else:
            w[:, :, 4] = block
        with torch.no_grad():
            net[2].weight.copy_(w.reshape(5, 18))
        with metering(net):
            prep = prepare(net, x)
            s = jacobian_spread(prep, x, probes=3, seed=0, budget=None, backend="auto")
        assert s["positions"] == [9, 1]
        np.testing.assert_allclose(s["beta"][:, 0, 1], want, rtol=1e-5)
        assert np.all(np.isnan(s["beta"][:, 1, :]))  # nothing after the last layer


def test_conv_bound_reduces_to_the_chain_bound():
    """With beta = 1 and every layer factor 1 (a Linear net) ours_conv is exactly ours."""
    rep = measure(chain(), torch.randn(6, 6), **FAST)
    assert rep.bound["beta"] == 1.0 and rep.bound["overlap"] == [1, 1, 1]
    assert rep.bound["log10"]["ours_conv"] == rep.bound["log10"]["ours"]
    got = bound.conv_compression_log10(2.0, 3, 5.0, [0.5, 0.25, 0.1], [0.1, 0.2, 1.0], 0.5, beta=1.5,
                                       overlaps=[9, 4, 1])
    want = 4 * 9 * 25 * 1.5 ** 2 * (81 / (0.25 * 0.01) + 16 / (0.0625 * 0.04) + 1 / (0.01 * 1.0)) / 0.25
    assert got == pytest.approx(math.log10(want), rel=1e-12)
    assert bound.conv_compression_log10(1.0, 1, 1.0, [0.5], [0.0], 1.0, beta=1.0, overlaps=[1]) == math.inf


@pytest.mark.parametrize("kernel, stride, dilation", [(3, 1, 1), (3, 2, 1), (4, 2, 1), (1, 2, 1), (5, 3, 1),
                                                      (3, 1, 2), (3, 2, 2), ((3, 1), (1, 2), 1)])
def test_overlap_counts_output_positions_per_input_position(kernel, stride, dilation):
    """ceil(kappa/s) per dimension (dilation 1) = the largest number of output positions reading one input
    position, counted here from the explicit operator of an all-ones filter on a 12x12 image."""
    conv = nn.Conv2d(1, 1, kernel, stride, dilation=dilation, bias=False)
    with torch.no_grad():
        conv.weight.fill_(1.0)
    a = stabkern.opnorms.operator_matrix(conv, (1, 12, 12))
    brute = int((a != 0).sum(0).max())
    assert bound.overlap(conv) == brute
    if dilation == 1:
        k = (kernel, kernel) if isinstance(kernel, int) else kernel
        s = (stride, stride) if isinstance(stride, int) else stride
        assert bound.overlap(conv) == math.ceil(k[0] / s[0]) * math.ceil(k[1] / s[1])


def test_no_private_cross_module_imports():
    """Issue 8: no module of the stability package or opnorms imports another module's _private name."""
    root = pathlib.Path(stabkern.__file__).parent
    for path in [*sorted((root / "stability").glob("*.py")), root / "opnorms.py"]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module not in ("__future__",):
                private = [a.name for a in node.names if a.name.startswith("_")]
                assert not private, f"{path.name} imports {private} from {node.module}"


def test_no_positive_margin_leaves_the_meters_and_marks_the_bounds_undefined():
    """Labels that most samples miss: the margin quantile is <= 0. The meters are still measured; every
    margin-based capacity is NaN (not -inf, not a crash after all the work) and a warning says why."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    x = torch.randn(12, 6)
    wrong = net(x).argmin(1)  # every sample misclassified
    with pytest.warns(UserWarning, match="undefined"):
        report = stabkern.measure(net, x, wrong, trials=2, probes=2, draws=1, spectral_iters=20)
    logs = report.bound["log10"]
    assert math.isnan(logs["ours"]) and math.isnan(logs["spectral_bartlett2017"])
    assert math.isfinite(logs["parameters"])
    assert math.isnan(report.bound["margin_loss"])
    assert report.layer_cushion["0"]["min"] > 0 and any("undefined" in n for n in report.settings["notes"])
    doc = report.to_dict()
    json.dumps(doc, allow_nan=False)  # strict JSON: undefined is null
    from stabkern.schemas import validate

    validate(doc)


def test_spread_and_jacobians_with_an_inplace_relu():
    """Regression: jacobian_spread raised "a leaf Variable that requires grad is being used in an in-place
    operation" on nets with ReLU(inplace=True) right after a metered layer (vgg19_cifar). The same net
    with ReLU(inplace=False) gives the same beta and mu, computed in the same order (bitwise here, 1e-6 allowed)."""
    got = {}
    for inplace in (True, False):
        torch.manual_seed(0)
        net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=inplace), nn.Conv2d(4, 4, 3),
                            nn.ReLU(inplace=inplace), nn.Flatten(), nn.Linear(64, 3)).eval()
        x = images()
        with metering(net):
            prep = prepare(net, x)
            got[inplace] = (jacobian_spread(prep, x, probes=3, seed=0, budget=None, backend="auto")["beta"],
                            jacobian_meters(prep, x, probes=3, draws=2, alpha=0.1, seed=0, budget=None,
                                            backend="auto")["mu"])
    for a, b in zip(got[True], got[False]):
        assert np.isfinite(a[:, 0, 1:]).all()
        np.testing.assert_allclose(a, b, rtol=1e-6)


def _pairwise_vjp_energy(prep, x, probes, seed):
    """The definition, one pair at a time: for each i, the model from x^i on (propagator.suffix: skip inputs
    from before layer i held at their clean values) on `probes` copies, and for each j the VJP with the probes
    reverse_sweeps draws (stream 2L + j). Returns {(i, j): (K, B, P_i) per-position energy}."""
    from stabkern import ops
    from stabkern.stability.propagate import repeat_trials

    num, b, out = len(prep.layers), x.shape[0], {}
    clean = prep.propagator.clean(x)
    for i in range(num - 1):
        x_in = repeat_trials(clean.outputs[i], probes).requires_grad_(True)
        outs = {}
        with torch.enable_grad():
            prep.propagator.suffix(clean, i, x_in.clone(), "output",
                                   lambda j, y: outs.__setitem__(j, y.clone()) if y.requires_grad else None)
            for j, y in outs.items():
                if j <= i:
                    continue
                v = ops.sphere_noise(torch.zeros_like(y[:b]), torch.full((b,), math.sqrt(y[0].numel()),
                                                                         dtype=torch.float64),
                                     trials=probes, seed=seed, stream=2 * num + j, sample0=0)
                (g,) = torch.autograd.grad(y, x_in, v, retain_graph=True, allow_unused=True)
                if g is not None:
                    g = g.double()
                    e = g.square().sum(1) if g.dim() > 2 else g.square().sum(1, keepdim=True)
                    out[(i, j)] = e.reshape(probes, b, -1)
    return out


@pytest.mark.parametrize("kind", sorted(RESNETS))
def test_reverse_sweeps_equal_the_pairwise_definition(kind):
    """One forward and one sweep back from each layer j must give, at every earlier x^i, the VJP of M^{i,j}
    (the map from x^i to x^j with skip inputs from before layer i held clean) with the same probes: the
    Hutchinson estimate of ||J^{i,j}||_F^2 and beta equal the pairwise computation up to float32 rounding of
    a differently ordered backward (rtol 1e-4 on sums of squares), NaN exactly where x^j does not depend on
    x^i (the downsample conv beside the main path)."""
    from stabkern.stability.meters import reverse_sweeps

    torch.manual_seed(3)
    net, x, probes = RESNETS[kind]().eval(), images(), 3
    with metering(net):
        prep = prepare(net, x)
        got = reverse_sweeps(prep, x, probes=probes, seed=7, budget=None, backend="auto")
        want = _pairwise_vjp_energy(prep, x, probes, seed=7)
    num = len(prep.layers)
    for i in range(num):
        for j in range(i + 1, num):
            if (i, j) not in want:
                assert np.isnan(got["frob2"][:, i, j]).all() and np.isnan(got["beta"][:, i, j]).all()
                continue
            e = want[(i, j)]
            np.testing.assert_allclose(got["frob2"][:, i, j], e.sum(-1).mean(0).numpy(), rtol=1e-4)
            per_position = e.mean(0)
            beta = (got["positions"][i] * per_position.max(1).values / per_position.sum(1)).sqrt().numpy()
            np.testing.assert_allclose(got["beta"][:, i, j], beta if got["positions"][i] > 1 else 1.0, rtol=1e-4)
    assert len(want) > 0


def test_budget_too_small_for_the_reverse_sweeps_is_a_clear_error():
    """A memory_budget that holds the forward-mode rows of one sample but not its whole forward on the probe
    copies: the reverse sweeps refuse with a ValueError naming what does not fit, before any work."""
    from stabkern.stability.meters import forward_batch, sweep_batch

    net, x = chain(), torch.randn(4, 6)
    with metering(net):
        prep = prepare(net, x)
        low, high = 1, 1 << 30  # the smallest budget forward_batch accepts (draws=1)
        while low < high:
            mid = (low + high) // 2
            try:
                forward_batch(prep, 4, 1, mid)
                high = mid
            except ValueError:
                low = mid + 1
        assert forward_batch(prep, 4, 1, low) == 1
        with pytest.raises(ValueError, match="memory_budget is too small for one sample's forward on 64 probe rows"):
            sweep_batch(prep, 4, 64, low)
        with pytest.raises(ValueError, match="memory_budget"):
            stabkern.stability.interlayer_cushion(net, x, probes=64, memory_budget=low)
