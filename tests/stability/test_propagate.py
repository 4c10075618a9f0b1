"""The meters' propagation (stabkern/stability/propagate.py) on forwards that write in place, share
modules, branch, return structures: graph path against hooks path against the naive per-layer,
per-trial loop (tests/helpers/stability_reference.py), all with the same noise (stabkern-noise-v1).

Tolerance: `rounding_tolerance` (derivation in its docstring): float32 unit roundoff times each
layer's condition estimate (its layer cushion) and fan-in, carried through the measured gains. A stale
or missing value gives errors of the order of r itself (0.6 against 5e-5 in issue 9's example).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from helpers import stability_reference as ref
from stabkern.stability import noise_attenuation, noise_sensitivity
from stabkern.stability.context import metering, prepare
from stabkern.stability.propagate import NotTraceable

ALPHA, TRIALS, SEED = 0.1, 2, 3


def _bn(c):
    bn = nn.BatchNorm2d(c)
    gen = torch.Generator().manual_seed(c)
    bn.running_mean.copy_(0.1 * torch.randn(c, generator=gen))
    bn.running_var.copy_(0.5 + torch.rand(c, generator=gen))
    return bn


class IssueExample(nn.Module):  # issue 9 item 1, verbatim
    def __init__(self):
        super().__init__()
        self.fc0, self.fc1, self.fc2 = nn.Linear(8, 16), nn.Linear(16, 16), nn.Linear(16, 4)

    def forward(self, x):
        a = self.fc0(x)
        b = self.fc1(a)
        a.relu_()
        return self.fc2(b + a)


class InplaceModuleAfterRead(IssueExample):  # nn.ReLU(inplace=True) on a tensor fc1 already read
    def __init__(self):
        super().__init__()
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        a = self.fc0(x)
        b = self.fc1(a)
        self.act(a)
        return self.fc2(b + a)


class SavedAddMul(nn.Module):  # mul_ by a clean node, add_ of a noisy value into a saved tensor
    def __init__(self):
        super().__init__()
        self.fc0, self.fc1, self.fc2, self.fc3 = (nn.Linear(8, 16), nn.Linear(16, 16), nn.Linear(16, 16),
                                                  nn.Linear(16, 4))

    def forward(self, x):
        a = self.fc0(x)
        b = self.fc1(a)
        a.mul_(0.5)
        c = self.fc2(b)
        a.add_(c)  # writes noise into a clean value; fc3 reads it through `a`, not through this node
        return self.fc3(torch.relu(a) + b)


class SharedActivation(nn.Module):  # one inplace ReLU module called twice
    def __init__(self):
        super().__init__()
        self.fc0, self.fc1, self.fc2 = nn.Linear(8, 16), nn.Linear(16, 16), nn.Linear(16, 4)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        h = self.act(self.fc0(x))
        g = self.fc1(h)
        g += h  # operator.iadd on a tensor
        return self.fc2(self.act(g))


class ControlFlow(nn.Module):  # Python branch on a value: torch.fx cannot trace it
    def __init__(self):
        super().__init__()
        self.fc0, self.fc1, self.fc2 = nn.Linear(8, 16), nn.Linear(16, 16), nn.Linear(16, 4)

    def forward(self, x):
        g = self.fc1(self.fc0(x))
        if g.mean() > 0:
            g = g.relu()
        else:
            g = -g
        return self.fc2(g)


class WhereFlow(ControlFlow):  # the same choice per element, traceable
    def forward(self, x):
        g = self.fc1(self.fc0(x))
        return self.fc2(torch.where(g > 0, g, 0.1 * g))


class TupleOut(ControlFlow):
    def forward(self, x):
        h = torch.relu(self.fc0(x))
        g = self.fc1(h)
        h.mul_(2)
        return self.fc2(g + h), h


class DictOut(TupleOut):
    def forward(self, x):
        logits, h = super().forward(x)
        return {"logits": logits, "features": h}


class ViewOfMutated(IssueExample):  # a view taken before the write sees it
    def forward(self, x):
        a = self.fc0(x)
        v = a.view(-1, 4, 4)
        b = self.fc1(a)
        a.relu_()
        return self.fc2(b + v.flatten(1))


class WriteThroughView(IssueExample):  # noise written through a view, read through its base
    def forward(self, x):
        a = self.fc0(x)
        v = a[:, :8]
        b = self.fc1(a)
        v.add_(b[:, :8])
        return self.fc2(a)


class BasicBlock(nn.Module):  # torchvision.models.resnet.BasicBlock
    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1, self.relu = _bn(cout), nn.ReLU(inplace=True)
        self.conv2, self.bn2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), _bn(cout)
        self.downsample = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), _bn(cout))
                           if stride != 1 or cin != cout else None)

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class Bottleneck(nn.Module):  # torchvision.models.resnet.Bottleneck
    def __init__(self, cin, width, stride=1):
        super().__init__()
        cout = 2 * width
        self.conv1, self.bn1 = nn.Conv2d(cin, width, 1, bias=False), _bn(width)
        self.conv2, self.bn2 = nn.Conv2d(width, width, 3, stride, 1, bias=False), _bn(width)
        self.conv3, self.bn3 = nn.Conv2d(width, cout, 1, bias=False), _bn(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), _bn(cout))
                           if stride != 1 or cin != cout else None)

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class DenseLayer(nn.Module):  # torchvision.models.densenet._DenseLayer (eval, no dropout)
    def __init__(self, cin, growth):
        super().__init__()
        self.norm1, self.relu1 = _bn(cin), nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(cin, 2 * growth, 1, bias=False)
        self.norm2, self.relu2 = _bn(2 * growth), nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(2 * growth, growth, 3, padding=1, bias=False)

    def forward(self, features):
        concated = torch.cat(features, 1)
        return self.conv2(self.relu2(self.norm2(self.conv1(self.relu1(self.norm1(concated))))))


class DenseBlock(nn.Module):
    def __init__(self, cin, growth, layers):
        super().__init__()
        self.layers = nn.ModuleList(DenseLayer(cin + k * growth, growth) for k in range(layers))

    def forward(self, x):
        features = [x]
        for layer in self.layers:
            features.append(layer(features))
        return torch.cat(features, 1)


class InvertedResidual(nn.Module):  # torchvision.models.mobilenetv2.InvertedResidual
    def __init__(self, cin, cout, stride, expand):
        super().__init__()
        hidden = cin * expand
        self.use_res_connect = stride == 1 and cin == cout
        self.conv = nn.Sequential(
            nn.Conv2d(cin, hidden, 1, bias=False), _bn(hidden), nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), _bn(hidden), nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, cout, 1, bias=False), _bn(cout))

    def forward(self, x):
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


def conv_net(*blocks, channels):
    """stem conv-bn-relu(inplace), the blocks, global pool, a Linear head."""
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), _bn(4), nn.ReLU(inplace=True), *blocks,
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, 5))


def make(name):
    torch.manual_seed(1)
    vector = torch.randn(6, 8, generator=torch.Generator().manual_seed(2))
    image = torch.randn(6, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    cases = {
        "issue": lambda: (IssueExample(), vector),
        "inplace-module": lambda: (InplaceModuleAfterRead(), vector),
        "saved-add-mul": lambda: (SavedAddMul(), vector),
        "shared-activation": lambda: (SharedActivation(), vector),
        "where": lambda: (WhereFlow(), vector),
        "tuple": lambda: (TupleOut(), vector),
        "dict": lambda: (DictOut(), vector),
        "view": lambda: (ViewOfMutated(), vector),
        "basic": lambda: (conv_net(BasicBlock(4, 8, 2), BasicBlock(8, 8), channels=8), image),
        "bottleneck": lambda: (conv_net(Bottleneck(4, 4, 2), Bottleneck(8, 4), channels=8), image),
        "dense": lambda: (conv_net(DenseBlock(4, 3, 3), channels=13), image),
        "mobilenet": lambda: (conv_net(InvertedResidual(4, 6, 2, 2), InvertedResidual(6, 6, 1, 3), channels=6), image),
    }
    model, x = cases[name]()
    return model.eval(), x


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def check_against_naive(model, x, methods=("graph", "hooks")):
    """Per-sample mean r of every method within rounding of the naive loop; NaN exactly where the naive
    loop sees no change (layer j not downstream of layer i) or j < i. Returns the reports."""
    before = _state(model)
    naive = ref.attenuation_reference(model, x, alpha=ALPHA, trials=TRIALS, seed=SEED, spec_noise=True).mean(0).numpy()
    reports = {}
    for method in methods:
        rep = noise_attenuation(model, x, alpha=ALPHA, trials=TRIALS, seed=SEED, method=method)
        assert rep.method == method
        tol = ref.rounding_tolerance(model, x, rep)
        upper = np.triu(np.ones(tol.shape, dtype=bool))
        assert np.all(np.isnan(rep.per_sample[:, ~upper]))
        undefined = np.isnan(rep.per_sample)
        np.testing.assert_array_equal(undefined[:, upper], (naive == 0)[:, upper])
        err = np.abs(rep.per_sample - naive)
        assert np.all(err[~undefined] <= np.broadcast_to(tol, err.shape)[~undefined]), (method, np.nanmax(err))
        reports[method] = rep
    after = _state(model)
    assert all(torch.equal(before[k], after[k]) for k in before)
    return reports


@pytest.mark.parametrize("name", ["issue", "inplace-module", "saved-add-mul", "shared-activation", "where", "tuple",
                                  "dict", "view", "basic", "bottleneck", "dense", "mobilenet"])
def test_graph_hooks_and_naive_loop_agree(name):
    model, x = make(name)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # each of these replays exactly from the graph: no fallback
        check_against_naive(model, x)


def test_issue_example_numbers():
    """issue 9 item 1: the graph path gave 0.61 where hooks give 4.8e-05."""
    torch.manual_seed(1)
    m, x = IssueExample(), torch.randn(6, 8)
    graph = noise_attenuation(m, x, alpha=1e-4, trials=2).mean[1, 2]
    hooks = noise_attenuation(m, x, alpha=1e-4, trials=2, method="hooks").mean[1, 2]
    assert hooks == pytest.approx(4.8e-5, rel=0.05)
    # same noise: the two differ only by float32 rounding, 1e-6 relative to ||y|| (tolerance docstring)
    assert graph == pytest.approx(hooks, rel=0.01)


@pytest.mark.parametrize("name", ["issue", "saved-add-mul"])
def test_noise_sensitivity_inherits_the_fix(name):
    """measure's psi is read off the attenuation run: graph and hooks agree per layer on in-place forwards
    (same noise; psi ~ r^2 / alpha^2 carries twice r's rounding, far below 1e-3 relative here)."""
    model, x = make(name)
    graph = noise_sensitivity(model, x, alpha=ALPHA, trials=TRIALS, seed=SEED, method="graph")
    hooks = noise_sensitivity(model, x, alpha=ALPHA, trials=TRIALS, seed=SEED, method="hooks")
    for layer in [k for k in graph if k != "psi"]:
        for stat in ("min", "median", "max"):
            assert graph[layer][stat] == pytest.approx(hooks[layer][stat], rel=1e-3), (layer, stat)
    assert graph["psi"] == pytest.approx(hooks["psi"], rel=1e-3)


def test_untraceable_control_flow_uses_hooks():
    _, x = make("issue")
    model = ControlFlow().eval()
    with pytest.raises(NotTraceable, match="cannot trace"):
        noise_attenuation(model, x, method="graph")
    rep = noise_attenuation(model, x, alpha=ALPHA, trials=TRIALS, seed=SEED)
    assert rep.method == "hooks"
    check_against_naive(model, x, methods=("hooks",))


def test_alias_the_graph_cannot_copy_falls_back_with_a_warning():
    """Noise written through a view and read through its base: the graph refuses, auto warns and uses hooks."""
    _, x = make("issue")
    model = WriteThroughView().eval()
    with pytest.raises(NotTraceable, match="aliases memory"):
        noise_attenuation(model, x, method="graph")
    with pytest.warns(UserWarning, match="forward hooks"):
        rep = noise_attenuation(model, x, alpha=ALPHA, trials=TRIALS, seed=SEED)
    assert rep.method == "hooks"
    check_against_naive(model, x, methods=("hooks",))


def test_metered_module_called_twice_is_refused():
    shared = nn.Linear(4, 4)
    for method in ("graph", "hooks"):
        with pytest.raises(ValueError, match="called 2 times"):
            noise_attenuation(nn.Sequential(shared, nn.ReLU(inplace=True), shared), torch.randn(3, 4), method=method)


def test_layer_inputs_are_kept_as_the_layer_read_them():
    """A clean value written in place before a layer reads it: the noise radius and the cushion use the
    written value (graph and hooks agree with the forward)."""
    class M(IssueExample):
        def forward(self, x):
            a = self.fc0(x)
            a.relu_()  # fc1 reads the node fc0 after this write
            return self.fc2(self.fc1(a))

    model, x = M().eval(), torch.randn(5, 8)
    with metering(model):
        for method in ("graph", "hooks"):
            prep = prepare(model, x, None, method)
            clean = prep.propagator.clean(x)
            torch.testing.assert_close(clean.inputs[1], torch.relu(model.fc0(x)), rtol=0, atol=0)
    check_against_naive(model, x)


def test_downstream_is_nan_everywhere_on_a_parallel_branch():
    """issue 9 item 4b: the downsample conv of a BasicBlock does not feed conv1/conv2 of the block."""
    model, x = make("basic")
    rep = noise_attenuation(model, x, alpha=ALPHA, trials=TRIALS, seed=SEED, floor=True)
    names = rep.layers
    assert np.isnan(rep.mean[names.index("3.conv1"), names.index("3.downsample.0")])
    parallel = [(a, b) for a in range(len(names)) for b in range(a, len(names)) if np.isnan(rep.mean[a, b])]
    assert parallel, "the block has a parallel branch"
    for a, b in parallel:
        for arr in (rep.mean, rep.std, rep.ci_low, rep.ci_high, rep.mc_se, rep.floor):
            assert np.isnan(arr[a, b])
        assert np.all(np.isnan(rep.per_sample[:, a, b])) and np.all(np.isnan(rep.per_sample_sq[:, a, b]))
    hooks = noise_attenuation(model, x, alpha=ALPHA, trials=TRIALS, seed=SEED, method="hooks")
    np.testing.assert_array_equal(np.isnan(hooks.mean), np.isnan(rep.mean))
    d = rep.to_dict()
    a, b = parallel[0]
    assert d["mean"][a][b] is None


@pytest.mark.parametrize("layer", [
    nn.Conv2d(5, 7, 3, padding=1), nn.Conv2d(6, 9, (3, 2), stride=(2, 1), padding=(0, 1), dilation=(1, 2), groups=3),
    nn.Conv2d(5, 4, 3, padding=1, padding_mode="circular", bias=False), nn.Linear(11, 6), nn.Linear(11, 3, bias=False)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_dual_linear_layer_is_torchs_forward_mode_bit_for_bit(layer, channels_last):
    """The graph path pushes a forward-mode dual through a Conv2d/Linear as the primal through the module and
    the tangent through the weight alone; torch's own rule also convolves the primal with a zero weight
    tangent. Both must give the same primal and tangent bits (the zero term adds exact zeros)."""
    import torch.autograd.forward_ad as fwAD
    from stabkern.stability.propagate import _dual_linear_layer

    g = torch.Generator().manual_seed(11)
    layer = layer.eval()
    shape = (4, layer.in_channels, 9, 8) if isinstance(layer, nn.Conv2d) else (4, layer.in_features)
    x, t = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    if channels_last and x.dim() == 4:
        x, t, layer = (x.to(memory_format=torch.channels_last), t.to(memory_format=torch.channels_last),
                       layer.to(memory_format=torch.channels_last))
    with torch.no_grad(), fwAD.dual_level():
        ours = fwAD.unpack_dual(_dual_linear_layer(layer, fwAD.make_dual(x, t)))
        theirs = fwAD.unpack_dual(layer(fwAD.make_dual(x, t)))
        assert _dual_linear_layer(layer, x) is None  # no tangent: the module runs as usual
    assert torch.equal(ours.primal, theirs.primal)
    assert torch.equal(ours.tangent, theirs.tangent)


class _GroupNormBranches(nn.Module):
    """Two convs on the same input, one through GroupNorm, summed: conv_b is not downstream of conv_a's input."""

    def __init__(self):
        super().__init__()
        self.conv_a, self.norm, self.conv_b = nn.Conv2d(3, 4, 3, padding=1), nn.GroupNorm(2, 4), nn.Conv2d(3, 4, 1)
        self.fc = nn.Linear(4 * 6 * 6, 3)

    def forward(self, x):
        return self.fc((self.norm(self.conv_a(x)) + self.conv_b(x)).flatten(1))


def test_hooks_find_parallel_branches_through_group_norm():
    """Forward-mode AD through GroupNorm raises on a channels_last input (torch 2.13); the hooks method's
    dependency probe then counted every later layer as downstream, so the parallel conv_b got r = 0 instead of
    undefined (issue 17: ResNet-18-GN's downsample branches). The graph method and the perturbation agree."""
    torch.manual_seed(0)
    model, x = _GroupNormBranches().eval(), torch.randn(4, 3, 6, 6, generator=torch.Generator().manual_seed(1))
    graph = noise_attenuation(model, x, trials=2, method="graph")
    for channels_last in (True, False):
        hooks = noise_attenuation(model, x, trials=2, method="hooks", channels_last=channels_last)
        assert np.isnan(hooks.mean[0, 1])  # conv_b does not see conv_a's input noise
        np.testing.assert_array_equal(np.isnan(hooks.per_sample), np.isnan(graph.per_sample))
