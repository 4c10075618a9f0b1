"""Regressions from the 2,500-probe fuzz (issue 16, items 2d and 2e): the Jacobian meters on forwards that write
in place, and the channels_last default on nets that do not run in it.

Each in-place forward has a twin written without in-place ops; the exact float64 Jacobians of the twin
(torch.func.jacrev, one sample at a time) are the reference. Tolerances:
- ||J^{i,j} x^i|| is a float32 forward-mode pass through at most four layers whose dot products have length
  n <= 64: a relative error below about 4 sqrt(n) 2^-24 kappa ~ 2e-6 kappa per layer (probabilistic
  rounding, tests/helpers/stability_reference.py); RTOL = 1e-4 allows a condition kappa of 12 over 4 layers.
- mu_{i,j} from 64 Hutchinson probes: within 5 of the meter's own relative standard errors, as in
  tests/stability/test_meters.py (the mean of 64 ||J^T v||^2 is close to normal).
- rho_{i,j} = alpha ||x^j|| / max_k R_k with R_k = ||M(x^i + eta_k) - M(x^i) - J eta_k||: float32 errors of
  EPS = 3e-5 ||x^j|| in R (the same rounding, three evaluations) keep rho within
  alpha ||x^j|| / (max R +- EPS ||x^j||) (no upper end where max R <= EPS ||x^j||: an affine map).
"""

from __future__ import annotations

import copy
import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from stabkern import ops as kernels
from stabkern.stability import interlayer_cushion, interlayer_smoothness, layer_cushion, measure, noise_attenuation
from stabkern.stability.context import metering, prepare
from stabkern.stability.meters import jacobian_meters

RTOL = 1e-4
EPS = 3e-5
ALPHA, DRAWS, PROBES, SEED = 0.2, 2, 64, 3


def _identity(k, y):
    return y


# Each case: (forward with in-place writes, the same map without them). The twin calls out(k, y) with the
# output y of the k-th metered layer (forward order) and goes on with what out returns.
def _relu_(s, x):
    a = s.c1(x); b = s.c2(a); a.relu_()  # noqa: E702 - conv c2 saved a (for its weight's gradient)
    return s.head((b + a).flatten(1))


def _relu_twin(s, x, out):
    a = out(0, s.c1(x)); b = out(1, s.c2(a))  # noqa: E702
    return out(2, s.head((b + a.relu()).flatten(1)))


def _clamp_(s, x):
    a = s.c1(x); b = s.c2(a); a.clamp_(min=-0.1, max=0.2)  # noqa: E702
    return s.head((b + a).flatten(1))


def _clamp_twin(s, x, out):
    a = out(0, s.c1(x)); b = out(1, s.c2(a))  # noqa: E702
    return out(2, s.head((b + a.clamp(min=-0.1, max=0.2)).flatten(1)))


def _hardtanh_(s, x):
    a = s.c1(x); b = s.c2(a); s.act(a)  # noqa: E702 - nn.Hardtanh(-0.2, 0.3, inplace=True)
    return s.head((b + a).flatten(1))


def _hardtanh_twin(s, x, out):
    a = out(0, s.c1(x)); b = out(1, s.c2(a))  # noqa: E702
    return out(2, s.head((b + F.hardtanh(a, -0.2, 0.3)).flatten(1)))


def _masked_fill_(s, x):
    a = s.c1(x); b = s.c2(a); a.masked_fill_(a < 0, 0.0)  # noqa: E702 - the mask is computed from a
    return s.head((b + a).flatten(1))


def _masked_fill_twin(s, x, out):
    a = out(0, s.c1(x)); b = out(1, s.c2(a))  # noqa: E702
    return out(2, s.head((b + a.masked_fill(a < 0, 0.0)).flatten(1)))


def _index_add_(s, x):
    a = s.c1(x); b = s.c2(a); a.index_add_(1, torch.tensor([3, 0]), b[:, 1:3])  # noqa: E702
    return s.head(F.relu(b + a).flatten(1))


def _index_add_twin(s, x, out):
    a = out(0, s.c1(x)); b = out(1, s.c2(a))  # noqa: E702
    return out(2, s.head(F.relu(b + a.index_add(1, torch.tensor([3, 0]), b[:, 1:3])).flatten(1)))


def _chunk_write(s, x):
    a = s.c1(x); b = s.c2(a); p, _ = a.chunk(2, 1); p.relu_()  # noqa: E702 - writes a through a view
    return s.head((b + a).flatten(1))


def _chunk_twin(s, x, out):
    a = out(0, s.c1(x)); b = out(1, s.c2(a))  # noqa: E702
    return out(2, s.head((b + torch.cat([a[:, :2].relu(), a[:, 2:]], 1)).flatten(1)))


def _split_write(s, x):
    a = s.c1(x); b = s.c2(a); _, q = a.split([1, 3], 1); q.mul_(b[:, :3])  # noqa: E702
    return s.head((b + a).flatten(1))


def _split_twin(s, x, out):
    a = out(0, s.c1(x)); b = out(1, s.c2(a))  # noqa: E702
    return out(2, s.head((b + torch.cat([a[:, :1], a[:, 1:] * b[:, :3]], 1)).flatten(1)))


def _narrow_write(s, x):
    a = s.c1(x); b = s.c2(a); a.narrow(1, 1, 2).relu_()  # noqa: E702
    return s.head((b + a).flatten(1))


def _narrow_twin(s, x, out):
    a = out(0, s.c1(x)); b = out(1, s.c2(a))  # noqa: E702
    return out(2, s.head((b + torch.cat([a[:, :1], a[:, 1:3].relu(), a[:, 3:]], 1)).flatten(1)))


def _setitem(s, x):
    a = s.c1(x); b = s.c2(a); a[:, 0] = b[:, 1] * a[:, 2]  # noqa: E702
    return s.head(F.relu(b + a).flatten(1))


def _setitem_twin(s, x, out):
    a = out(0, s.c1(x)); b = out(1, s.c2(a))  # noqa: E702
    return out(2, s.head(F.relu(b + torch.cat([(b[:, 1] * a[:, 2])[:, None], a[:, 1:]], 1)).flatten(1)))


def _scatter_add_(s, x):
    a = s.c1(x); b = s.c2(a)  # noqa: E702
    a.scatter_add_(1, torch.tensor([2, 0])[None, :, None, None].expand_as(b[:, :2]), b[:, :2].relu())
    return s.head((b + a).flatten(1))


def _scatter_add_twin(s, x, out):
    a = out(0, s.c1(x)); b = out(1, s.c2(a))  # noqa: E702
    a = a + torch.cat([b[:, 1:2].relu(), torch.zeros_like(a[:, :1]), b[:, :1].relu(), torch.zeros_like(a[:, :1])], 1)
    return out(2, s.head((b + a).flatten(1)))


def _se_gate(s, x):
    """Squeeze-excitation, gating in place the tensor the squeeze and conv c2 read."""
    h = F.relu(s.c1(x)); y = s.c2(h)  # noqa: E702
    gate = torch.sigmoid(s.fc2(F.relu(s.fc1(F.adaptive_avg_pool2d(h, 1).flatten(1)))))
    h.mul_(gate[:, :, None, None])
    return s.head((y + h).flatten(1))


def _se_gate_twin(s, x, out):
    h = F.relu(out(0, s.c1(x))); y = out(1, s.c2(h))  # noqa: E702
    gate = torch.sigmoid(out(3, s.fc2(F.relu(out(2, s.fc1(F.adaptive_avg_pool2d(h, 1).flatten(1)))))))
    return out(4, s.head((y + h * gate[:, :, None, None]).flatten(1)))


def _writes_input(s, x):
    x.mul_(2)  # the reverse sweep's input required grad: "a leaf Variable that requires grad" (a later read of
    a = F.relu(s.c1(x)); b = s.c2(a)  # noqa: E702 - x after layer 0 is issue 16 item 2b, the propagator's)
    return s.head(F.relu(b).flatten(1))


def _writes_input_twin(s, x, out):
    a = F.relu(out(0, s.c1(x * 2))); b = out(1, s.c2(a))  # noqa: E702
    return out(2, s.head(F.relu(b).flatten(1)))


def _add_out(s, x):
    a = s.c1(x); b = s.c2(F.relu(a)); torch.add(a, b, out=a)  # noqa: E702
    return s.head(F.relu(a).flatten(1))


def _add_out_twin(s, x, out):
    a = out(0, s.c1(x)); b = out(1, s.c2(F.relu(a)))  # noqa: E702
    return out(2, s.head(F.relu(a + b).flatten(1)))


CASES = {"relu_": (_relu_, _relu_twin), "clamp_": (_clamp_, _clamp_twin), "hardtanh_": (_hardtanh_, _hardtanh_twin),
         "masked_fill_": (_masked_fill_, _masked_fill_twin), "index_add_": (_index_add_, _index_add_twin),
         "chunk": (_chunk_write, _chunk_twin), "split": (_split_write, _split_twin),
         "narrow": (_narrow_write, _narrow_twin), "setitem": (_setitem, _setitem_twin),
         "scatter_add_": (_scatter_add_, _scatter_add_twin), "se_gate": (_se_gate, _se_gate_twin),
         "writes_input": (_writes_input, _writes_input_twin), "add_out": (_add_out, _add_out_twin)}


class InPlaceNet(nn.Module):
    """conv c1 (3 -> 4, 3x3) -> conv c2 (4 -> 4) -> linear head (64 -> 3) on (3, 4, 4), joined by one of CASES;
    the SE case adds the gate's fc1 (4 -> 2) and fc2 (2 -> 4)."""

    def __init__(self, case: str):
        super().__init__()
        torch.manual_seed(0)
        self.c1 = nn.Conv2d(3, 4, 3, padding=1)
        self.c2 = nn.Conv2d(4, 4, 3, padding=1)
        if case == "se_gate":
            self.fc1, self.fc2 = nn.Linear(4, 2), nn.Linear(2, 4)
        self.act = nn.Hardtanh(-0.2, 0.3, inplace=True)
        self.head = nn.Linear(4 * 16, 3)
        self.case = case

    def forward(self, x):
        return CASES[self.case][0](self, x)


def _data(n=3):
    return torch.randn(n, 3, 4, 4, generator=torch.Generator().manual_seed(1))


def _exact(net: InPlaceNet, x: torch.Tensor):
    """From the twin in float64, per sample b: outs[j] (N, ...) the clean layer outputs, and for each injection
    layer i, jac[i][b][j] the Jacobian (h_j, h_i) of x^j in x^i (later layers' other inputs clean)."""
    twin, net64, x64 = CASES[net.case][1], copy.deepcopy(net).double(), x.double()
    outs = {}
    with torch.no_grad():
        twin(net64, x64.clone(), lambda k, y: outs.setdefault(k, y))
    num = len(outs)
    jac = {}
    for i in range(num):
        jac[i] = []
        for b in range(x.shape[0]):
            def suffix(v, b=b, i=i):
                seen = {}

                def out(k, y):
                    seen[k] = y
                    return v[None] if k == i else y
                twin(net64, x64[b:b + 1].clone(), out)
                return tuple(seen[j][0].flatten() for j in range(num))
            jac[i].append([m.reshape(-1, outs[i][b].numel()) for m in torch.func.jacrev(suffix)(outs[i][b])])
    return outs, jac


def _model_state(net):
    return [(name, t.clone(), t.stride()) for name, t in list(net.named_parameters()) + list(net.named_buffers())]


def _assert_same_state(net, before):
    after = _model_state(net)
    for (name, t0, s0), (_, t1, s1) in zip(before, after):
        assert torch.equal(t0, t1) and s0 == s1, name


@pytest.mark.parametrize("case", list(CASES))
def test_jacobian_meters_on_in_place_forwards_match_exact_jacobians(case):
    """Issue 16, 2d: measure and interlayer_cushion (the forward-mode pass and the reverse sweeps of
    jacobian_meters) raised autograd errors on these forwards; they now give the twin's exact values."""
    net, x = InPlaceNet(case).eval(), _data()
    x_given, state = x.clone(), _model_state(net)
    outs, jac = _exact(net, x)
    num = len(outs)
    with metering(net, channels_last=True):
        prep = prepare(net, x, channels_last=True)
        m = jacobian_meters(prep, x, probes=PROBES, draws=DRAWS, alpha=ALPHA, seed=SEED, budget=None, backend="auto")
    assert torch.equal(x, x_given)
    _assert_same_state(net, state)
    for i in range(num):
        xi = outs[i].flatten(1)
        radius = ALPHA * outs[i].flatten(1).norm(dim=1).float()
        eta = kernels.sphere_noise(torch.zeros(outs[i].shape), radius, trials=DRAWS, seed=SEED,
                                   stream=num + i).double().reshape(DRAWS, x.shape[0], -1)
        for j in range(i + 1, num):
            for b in range(x.shape[0]):
                J = jac[i][b][j]
                if not torch.any(J != 0):  # x^j does not depend on x^i (the SE gate's fc1 beside conv c2)
                    assert math.isnan(m["mu"][b, i, j]) and math.isnan(m["rho"][b, i, j])
                    continue
                jx = (J @ xi[b]).norm().item()
                assert m["jx_norm"][b, i, j] == pytest.approx(jx, rel=RTOL)
                exact_mu = jx / (J.norm().item() * xi[b].norm().item())
                assert abs(m["mu"][b, i, j] - exact_mu) <= 5 * m["mu_rse"][b, i, j] * m["mu"][b, i, j]
                _check_rho(net, x, outs, i, j, b, eta[:, b], m["rho"][b, i, j], J)


def _check_rho(net, x, outs, i, j, b, eta, rho, J):
    """rho_{i,j} of sample b against the twin in float64: M(x^i + eta_k) - M(x^i) - J eta_k (see the note)."""
    twin, net64 = CASES[net.case][1], copy.deepcopy(net).double()
    remainders = []
    for e in eta:
        seen = {}

        def out(k, y):
            seen[k] = y
            return (outs[i][b] + e.reshape(outs[i][b].shape))[None] if k == i else y
        with torch.no_grad():
            twin(net64, x[b:b + 1].double().clone(), out)
        remainders.append((seen[j][0].flatten() - outs[j][b].flatten() - J @ e).norm().item())
    norm_j, worst = outs[j][b].norm().item(), max(remainders)
    assert rho >= ALPHA * norm_j / (worst + EPS * norm_j)
    if worst > EPS * norm_j:
        assert rho <= ALPHA * norm_j / (worst - EPS * norm_j)


@pytest.mark.parametrize("case", ["se_gate", "relu_", "add_out", "chunk"])
def test_measure_and_interlayer_meters_run_on_in_place_forwards(case):
    """The public meters on the in-place forwards, channels_last on (their default): the numbers of the
    checked jacobian_meters, the model and the data untouched."""
    net, x = InPlaceNet(case).eval(), _data()
    x_given, state = x.clone(), _model_state(net)
    with metering(net, channels_last=True):
        prep = prepare(net, x, channels_last=True)
        m = jacobian_meters(prep, x, probes=2, draws=1, alpha=0.1, seed=0, budget=None, backend="auto")
    names = prep.names
    cushion = interlayer_cushion(net, x, probes=2)
    smooth = interlayer_smoothness(net, x)
    report = measure(net, x, probes=2, trials=2)
    assert torch.equal(x, x_given)
    _assert_same_state(net, state)
    for i, a in enumerate(names):
        for j in range(i + 1, len(names)):
            mu, rho = m["mu"][:, i, j], m["rho"][:, i, j]
            for d in (cushion, report.interlayer_cushion):
                assert d[a]["to"][names[j]]["min"] == pytest.approx(np.min(mu), rel=1e-12, nan_ok=True)
            for d in (smooth, report.interlayer_smoothness):
                assert d[a]["to"][names[j]]["min"] == pytest.approx(np.min(rho), rel=1e-12, nan_ok=True)


class GroupNormNet(nn.Module):
    """conv -> GroupNorm -> relu -> conv -> relu -> linear on (3, 4, 4): GroupNorm's forward-mode rule .view()s
    its input, which a channels_last tensor refuses."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.c1, self.norm = nn.Conv2d(3, 4, 3, padding=1), nn.GroupNorm(2, 4)
        self.c2, self.head = nn.Conv2d(4, 4, 3, padding=1), nn.Linear(64, 3)

    def forward(self, x):
        return self.head(F.relu(self.c2(F.relu(self.norm(self.c1(x))))).flatten(1))


class WeightViewNet(GroupNormNet):
    """Reads conv c2's weight through .view() (its output channels scaled by the weight rows' norms), which
    channels_last storage refuses."""

    def forward(self, x):
        row_norms = self.c2.weight.view(4, -1).norm(dim=1)
        return self.head((F.relu(self.c2(F.relu(self.c1(x)))) / row_norms.view(1, 4, 1, 1)).flatten(1))


class ActivationViewNet(GroupNormNet):
    """Flattens with .view(N, -1), as many classic nets do: a channels_last activation refuses."""

    def forward(self, x):
        h = F.relu(self.c2(F.relu(self.c1(x))))
        return self.head(h.view(h.size(0), -1))


METERS = {"measure": lambda net, x, cl: measure(net, x, probes=2, trials=2, channels_last=cl).to_dict(),
          "interlayer_cushion": lambda net, x, cl: interlayer_cushion(net, x, probes=2, channels_last=cl),
          "interlayer_smoothness": lambda net, x, cl: interlayer_smoothness(net, x, channels_last=cl),
          "noise_attenuation": lambda net, x, cl: noise_attenuation(net, x, trials=2, channels_last=cl).to_dict(),
          "layer_cushion": lambda net, x, cl: layer_cushion(net, x, channels_last=cl)}


@pytest.mark.parametrize("net_class, meters", [
    (GroupNormNet, ["measure", "interlayer_cushion", "interlayer_smoothness"]),  # the rest run it channels_last
    (WeightViewNet, ["measure", "interlayer_cushion", "noise_attenuation", "layer_cushion"]),
    (ActivationViewNet, ["measure", "noise_attenuation"])])
def test_channels_last_default_falls_back_to_the_models_layout(net_class, meters):
    """Issue 16, 2e: with the default channels_last=True, GroupNorm nets crashed measure, interlayer_cushion and
    interlayer_smoothness ("view size is not compatible"), and a forward that .view()s a 4-D weight crashed
    every meter with an error blaming the data's shape (one that .view()s its activations crashed them in
    either layout). They now run it in its own layout: the same bits as channels_last=False (measure reports
    channels_last False); the parameters are put back bitwise, layout included."""
    net, x = net_class().eval(), _data(4)
    state = _model_state(net)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # measure: small margins on a random net
        for name in meters:
            default, own = METERS[name](net, x, True), METERS[name](net, x, False)
            np.testing.assert_equal(default, own, err_msg=name)
            if name == "measure":
                assert default["settings"]["channels_last"] is False
    _assert_same_state(net, state)


def test_channels_last_kept_where_the_model_runs_in_it():
    net, x = InPlaceNet("relu_").eval(), _data()
    with metering(net, True, x[:1], autodiff=True) as channels_last:
        assert channels_last and net.c1.weight.is_contiguous(memory_format=torch.channels_last)
    assert net.c1.weight.is_contiguous()


class Failing(GroupNormNet):
    """Conv c2 raises on its call after the `fail_at`-th (0: the first; a hook, so the torch.fx graph path calls it
    too); conv c1's weight stored channels_last by its owner."""

    def __init__(self, fail_at):
        super().__init__()
        self.calls, self.fail_at = 0, fail_at
        self.c1.weight.data = self.c1.weight.data.contiguous(memory_format=torch.channels_last)
        self.c2.register_forward_pre_hook(self._count)

    def _count(self, module, args):
        self.calls += 1
        if self.calls > self.fail_at:
            raise RuntimeError("the model's own failure")

    def forward(self, x):
        return self.head(F.relu(self.c2(F.relu(self.c1(x)))).flatten(1))


@pytest.mark.parametrize("fail_at", [0, 12])
def test_metering_restores_parameters_bitwise_on_exception(fail_at):
    """A model that fails from its first call (in either layout: the failure is the model's, reported as such)
    or later, inside the meter: every parameter is put back, the same storage, bits and strides."""
    net, x = Failing(fail_at).eval(), _data()
    state = _model_state(net)
    storage = [t.data_ptr() for t in net.parameters()]
    with pytest.raises((RuntimeError, ValueError), match="the model's own failure"):
        measure(net, x, probes=2, trials=2)
    assert net.calls > fail_at
    _assert_same_state(net, state)
    assert [t.data_ptr() for t in net.parameters()] == storage
    assert net.c1.weight.is_contiguous(memory_format=torch.channels_last) and net.c2.weight.is_contiguous()
