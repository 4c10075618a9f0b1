"""choose_k: the cushions against hand computations and the stability meter, the k rule's arithmetic, the check on data, the exact mean output error."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import stabkern
from stabkern import opnorms
from stabkern.compress import C_BERNSTEIN, choose_k, compress_model, k_from_cushions, layer_cushions
from stabkern.zoo.digits import load_digits_tensors, trained_digits_net


def test_cushions_agree_with_the_stability_meter():
    """choose_k's mu and stabkern.layer_cushion measure the same quantity on the same data."""
    model = trained_digits_net()
    (x, _), _ = load_digits_tensors()
    ours = layer_cushions(model, x[:100])
    meter = stabkern.layer_cushion(model, x[:100])
    for name, c in ours.items():
        mu = c["mu"]
        for q, value in (("min", mu.min()), ("median", torch.quantile(mu, 0.5)), ("max", mu.max())):
            assert float(value) == pytest.approx(meter[name][q], rel=1e-5), (name, q)


def test_linear_cushions_by_hand():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(7, 5))
    x = torch.randn(30, 7)
    x[3] = 0  # a zero input: dropped from the cushion, counted
    w = model[0].weight.detach().double()
    z = x.double()[torch.arange(30) != 3]
    mu = (z @ w.T).norm(dim=1) / (w.norm() * z.norm(dim=1))
    for mode, scale in (("filter", 1.0), ("tensor", math.sqrt(5))):
        c = layer_cushions(model, x, mode=mode)["0"]
        assert c["zero_input"] == 1 and c["n_out"] == 5 and c["stream"] == 0
        torch.testing.assert_close(c["mu"], mu)
        torch.testing.assert_close(c["nu"], mu / scale)  # nu = mu (filter), mu / sqrt(c_out) (tensor)


@pytest.mark.parametrize("padding_mode", ["zeros", "reflect"])
def test_conv_cushions_against_unfolded_patches(padding_mode):
    torch.manual_seed(2)
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2, padding_mode=padding_mode)
    x = torch.randn(9, 4, 7, 6)
    xd, w = x.double(), conv.weight.detach().double()
    xpad = F.pad(xd, (1, 1, 1, 1), mode="constant" if padding_mode == "zeros" else padding_mode)
    patches = F.unfold(xpad, 3, stride=2).reshape(9, 2, 2 * 9, -1)  # (N, group, c_in/g * 9, positions)
    patch2 = patches.pow(2).sum(dim=(2, 3))  # (N, groups)
    filt2 = w.pow(2).flatten(1).sum(1).reshape(2, 3)  # (groups, filters per group)
    az = torch.einsum("ngcp,gfc->ngfp", patches, w.reshape(2, 3, -1)).flatten(1)
    b_filter = patch2 @ filt2.sum(1)
    b_tensor = w.pow(2).sum() * 3 * patch2.sum(1)
    for mode, b in (("filter", b_filter), ("tensor", b_tensor)):
        c = layer_cushions(nn.Sequential(conv), x, mode=mode)["0"]
        torch.testing.assert_close(c["nu"], az.norm(dim=1) / b.sqrt())
        assert c["n_out"] == 6 * 4 * 3
        if padding_mode == "zeros":
            op = opnorms.operator_matrix(conv, (4, 7, 6)).norm()
            torch.testing.assert_close(c["mu"], az.norm(dim=1) / (op * xd.flatten(1).norm(dim=1)))
        else:
            assert torch.isnan(c["mu"]).all()  # ||A||_F of a reflect-padded conv is not defined here


def _aligned_net(d_in=2048, d_out=8, samples=200):
    """A Linear layer of rank about one and inputs along its top right singular vector: nu near 1."""
    g = torch.Generator().manual_seed(3)
    u, v = torch.randn(d_out, generator=g), torch.randn(d_in, generator=g)
    v = v / v.norm()
    model = nn.Sequential(nn.Linear(d_in, d_out, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.outer(u, v) + 1e-3 * torch.randn(d_out, d_in, generator=g))
    x = (0.5 + torch.rand(samples, 1, generator=g)) * v + 1e-3 * torch.randn(samples, d_in, generator=g)
    return model, x


def test_choose_k_rule_and_check():
    model, x = _aligned_net()
    eps, eta = 0.5, 1e-4
    choice = choose_k(model, x, eps, eta=eta, mode="filter", seed=11)
    (row,) = choice.layers
    nu_min = float(layer_cushions(model, x, mode="filter")["0"]["nu"].min())
    assert row.nu_min == pytest.approx(nu_min) and 0.9 < nu_min <= 1
    assert row.k_needed == math.ceil(C_BERNSTEIN * math.log(2 * 8 / eta) / (eps ** 2 * nu_min ** 2))
    assert row.k == row.k_needed < row.cap == 2048 and choice.k == {"0": row.k}
    # Per sample P(error > eps) <= eta, so E[failing fraction] <= eta and, by Markov,
    # P(failing fraction > 0.01) <= eta / 0.01 = 1%.
    e = choice.check.layers[0].output_error
    assert e.samples == 200 and e.eps == eps
    assert 1 - e.within_eps <= 0.01
    d = json.loads(json.dumps(choice.to_dict()))
    assert d["k"] == {"0": row.k} and d["check"]["layers"][0]["k"] == row.k
    assert "k rule" in str(choice)


def test_choose_k_leaves_incompressible_layers_dense():
    model = trained_digits_net()
    (x, _), _ = load_digits_tensors()
    choice = choose_k(model, x[:200], 0.5, eta=0.05)
    assert [r.name for r in choice.layers] == ["features.0", "features.2", "features.5", "classifier.1",
                                               "classifier.3"]
    for r in choice.layers:  # this small net's cushions (~0.05-0.3) need k beyond the filter length
        assert r.mu is not None and 0 < r.mu["min"] <= r.mu["q50"] <= r.mu["max"] <= 1
        assert r.k_needed >= r.cap and r.k is None
    assert choice.k == {} and choice.check is None


def test_mean_output_error_matches_its_exact_expectation():
    # filter mode, Linear: E||(A_hat - A) z||^2 = (||Az||^2 + ||A||^2 ||z||^2 - 2 sum A^2 z^2) / k,
    # summed row variances. Averaged over samples and seeds, compared with a CLT interval over seeds.
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(40, 6))
    x = torch.randn(50, 40)
    w, z = model[0].weight.detach().double(), x.double()
    az2 = (z @ w.T).pow(2).sum(1)
    expect = float(((az2 + w.pow(2).sum() * z.pow(2).sum(1) - 2 * z.pow(2) @ w.pow(2).sum(0)) / (10 * az2)).mean())
    per_seed = []
    for seed in range(200):
        comp, _ = compress_model(model, 10, mode="filter", seed=seed)
        zh = z @ comp[0].weight.double().T
        per_seed.append(float(((zh - z @ w.T).pow(2).sum(1) / az2).mean()))
    per_seed = torch.tensor(per_seed, dtype=torch.float64)
    se = float(per_seed.std() / math.sqrt(len(per_seed)))
    assert abs(float(per_seed.mean()) - expect) <= 4 * se, (float(per_seed.mean()), expect, se)


def test_k_from_cushions_is_choose_k_without_the_check():
    """The rule on cushions measured once (what the stability card does) gives choose_k(check=False)'s result."""
    model = trained_digits_net()
    (x, _), _ = load_digits_tensors()
    for mode in ("filter", "tensor"):
        cushions = layer_cushions(model, x[:100], mode=mode)
        ours = k_from_cushions(cushions, 0.9, eta=0.2, C=1.0, mode=mode, seed=5)
        assert ours.to_dict() == choose_k(model, x[:100], 0.9, eta=0.2, C=1.0, mode=mode, seed=5, check=False).to_dict()
        assert ours.k.keys() == {"classifier.1"}  # the heuristic C compresses one layer: the rule's arithmetic runs
    with pytest.raises(ValueError, match="eta must be in"):
        k_from_cushions(cushions, 0.5, eta=1)
    with pytest.raises(ValueError, match="mode must be"):
        k_from_cushions(cushions, 0.5, mode="rows")
    with pytest.raises(TypeError, match="cushions must be the dict layer_cushions"):
        k_from_cushions(list(cushions.values()), 0.5)


def test_choose_k_bad_arguments():
    model, x = _aligned_net(64, 4, 10)
    for eps in (0, 1.5, -1):
        with pytest.raises(ValueError, match="eps must be in"):
            choose_k(model, x, eps)
    for eps in ("0.5", True):  # one argument policy: a wrong type is a TypeError naming the argument
        with pytest.raises(TypeError, match="eps must be a number"):
            choose_k(model, x, eps)
    for eta in (0, 1, 2):
        with pytest.raises(ValueError, match="eta must be in"):
            choose_k(model, x, 0.5, eta=eta)
    with pytest.raises(ValueError, match="C must be in \\(0"):
        choose_k(model, x, 0.5, C=0)
    with pytest.raises(KeyError, match="no Conv2d or Linear named"):
        choose_k(model, x, 0.5, layers=["1"])
    with pytest.raises(ValueError, match="every sample's input is zero"):
        choose_k(model, torch.zeros(3, 64), 0.5)


def test_choose_k_goes_on_past_a_layer_with_no_usable_sample():
    """A layer whose input is zero on every sample has no cushion: it is undefined (NaN) and stays dense."""
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4))
    with torch.no_grad():
        model[0].bias.fill_(-100.0)  # the ReLU output, layer 2's input, is zero on every sample
    choice = choose_k(model, torch.randn(10, 6), 1.0, C=0.01, mode="tensor")
    first, second = choice.layers
    assert first.samples == 10 and first.k is not None
    assert second.samples == 0 and second.zero_input == 10 and math.isnan(second.nu_min) and second.k is None
