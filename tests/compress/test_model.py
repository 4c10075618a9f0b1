"""compress_model: a compressed copy whose layers regenerate from (seed, stream = layer index), an
untouched original, exact biases, BatchNorm folding, a report whose numbers are recomputed here
from first principles, and clear errors for bad k and layer names."""

import copy
import json

import pytest
import torch
from torch import nn

import stabkern
from stabkern.compress import compress_model, fold_batchnorm, sketchable_layers
from stabkern.zoo.cifar import VGG, resnet_cifar
from stabkern.sketched import NoCompressionWarning, SketchedConv2d, SketchedLinear


class Mixed(nn.Module):
    """Conv2d, BatchNorm2d, Conv1d (not Conv2d), Embedding and two Linear layers, one reached twice."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.conv1d = nn.Conv1d(4, 4, 1)
        self.emb = nn.Embedding(5, 3)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(4 * 6 * 6, 10), nn.ReLU())
        self.out = nn.Linear(10, 3)
        self.alias = self.out  # the same module under a second name

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x)))
        x = self.conv1d(x.flatten(2)).reshape(x.shape)
        return self.out(self.head(x))


def _model(seed=0):
    torch.manual_seed(seed)
    m = Mixed()
    with torch.no_grad():  # non-trivial running statistics
        m.bn.running_mean.uniform_(-1, 1)
        m.bn.running_var.uniform_(0.5, 2)
        m.bn.weight.uniform_(0.5, 1.5)
        m.bn.bias.uniform_(-0.5, 0.5)
    return m.eval()


def test_streams_are_layer_indices_in_modules_order():
    m = _model()
    assert [(i, name) for i, name, _ in sketchable_layers(m)] == [(0, "conv"), (1, "head.1"), (2, "out")]
    comp, report = compress_model(m, 17, mode="tensor", seed=123)
    for i, name, mod in sketchable_layers(m):
        sk = dict(comp.named_modules())[name]
        assert sk.stream_value == i and sk.seed_value == 123
        # any tool can regenerate the signs from (seed, stream): coefficients = S vec(W)
        S = stabkern.sign_matrix(17, mod.weight.numel(), seed=123, stream=i, dtype=torch.float64)
        torch.testing.assert_close(sk.coefficients.double(), S @ mod.weight.detach().double().reshape(-1),
                                   rtol=1e-5, atol=1e-5)
    assert comp.alias is comp.out and isinstance(comp.out, SketchedLinear)  # both names replaced
    assert [r.stream for r in report.layers] == [0, 1, 2]


def test_original_untouched_biases_exact_rest_unchanged():
    m = _model()
    before = copy.deepcopy(m.state_dict())
    comp, _ = compress_model(m, 5, mode="filter", seed=1)
    for key, value in m.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert isinstance(m.conv, nn.Conv2d) and isinstance(comp.conv, SketchedConv2d)
    assert torch.equal(comp.conv.bias, m.conv.bias) and torch.equal(comp.out.bias, m.out.bias)
    for name in ("bn", "conv1d", "emb"):  # not Conv2d / Linear: the same values, not sketched
        for key, value in getattr(m, name).state_dict().items():
            assert torch.equal(getattr(comp, name).state_dict()[key], value)
    assert comp(torch.randn(3, 2, 6, 6)).shape == (3, 3)


def test_report_numbers_recomputed():
    m = _model()
    x = torch.randn(40, 2, 6, 6)
    comp, report = compress_model(m, {"conv": 7, "out": 6}, mode="filter", seed=9, data=x, eps=0.8, batch_size=16)
    assert [r.name for r in report.layers] == ["conv", "out"]
    conv_r = report.layers[0]
    assert (conv_r.n, conv_r.k, conv_r.stored, conv_r.shape) == (72, 7, 28, [4, 2, 3, 3])
    assert conv_r.ratio == pytest.approx(72 / 28)
    w, w_hat = m.conv.weight.detach().double(), comp.conv.weight.double()
    assert conv_r.rel_fro_error == pytest.approx(float((w_hat - w).norm() / w.norm()), rel=1e-6)
    assert conv_r.expected_rel_fro_error == pytest.approx(((18 - 1) / 7) ** 0.5)
    # output error of `out` on its own dense input, by hand
    with torch.no_grad():
        h = torch.relu(m.bn(m.conv(x)))
        z = m.head(m.conv1d(h.flatten(2)).reshape(h.shape))
        az = z @ m.out.weight.T
        err = ((z @ comp.out.weight.T - az).norm(dim=1) / az.norm(dim=1)).double()
    e = report.layers[1].output_error
    assert e.samples == 40 and e.zero_output == 0
    assert e.mean == pytest.approx(float(err.mean()), rel=1e-4)
    assert e.max == pytest.approx(float(err.max()), rel=1e-4)
    assert e.q90 == pytest.approx(float(err.quantile(0.9)), rel=1e-4)
    assert e.within_eps == pytest.approx(float((err <= 0.8).double().mean()))
    skipped = {s["name"]: s["reason"] for s in report.skipped}
    assert skipped["head.1"] == "not selected"
    for name in ("bn", "conv1d", "emb"):
        assert "neither Conv2d nor Linear" in skipped[name]
    d = json.loads(json.dumps(report.to_dict()))
    assert d["format"] == "stabkern-compression-report-v1" and d["spec"] == "stabkern-sign-v1"
    assert d["totals"] == {"dense": 72 + 30, "stored": 28 + 18, "ratio": pytest.approx(102 / 46)}
    assert set(d["layers"][1]["output_error"]) == {"samples", "zero_output", "mean", "q50", "q90", "q99", "max",
                                                   "eps", "within_eps"}
    text = str(report)
    assert "conv" in text and "out err mean" in text and "skipped: emb (Embedding)" in text


def test_k_as_callable_and_none_leaves_dense():
    m = _model()
    comp, report = compress_model(m, lambda name, mod: None if name == "conv" else mod.weight.shape[1] // 2,
                                  mode="filter", seed=2)
    assert isinstance(comp.conv, nn.Conv2d)
    assert {r.name: r.k for r in report.layers} == {"head.1": 72, "out": 5}
    assert {"name": "conv", "type": "Conv2d", "reason": "k is None: left dense"} in report.skipped


def test_layers_selection_and_already_sketched():
    m = _model()
    comp, _ = compress_model(m, 8, seed=4, layers=["out"])
    assert isinstance(comp.out, SketchedLinear) and isinstance(comp.conv, nn.Conv2d)
    again, report = compress_model(comp, 8, seed=4)  # the sketched layer keeps its stream, is not redone
    assert again.out.stream_value == 2 and again.conv.stream_value == 0
    assert {"name": "out", "type": "SketchedLinear", "reason": "already sketched"} in report.skipped


def test_bad_k_and_names():
    m = _model()
    for bad in (2.0, "8", True, [3]):
        with pytest.raises(TypeError, match="must be an int"):
            compress_model(m, bad, seed=0)
    with pytest.raises(ValueError, match="k must be in"):
        compress_model(m, -3, seed=0)
    with pytest.raises(ValueError, match="k\\['out'\\] must be in"):
        compress_model(m, {"out": 0}, seed=0)
    with pytest.raises(KeyError, match="no Conv2d or Linear named \\['bn'\\]"):
        compress_model(m, {"bn": 3}, seed=0)
    with pytest.raises(KeyError, match="no Conv2d or Linear named \\['nope'\\]"):
        compress_model(m, 3, seed=0, layers=["nope"])
    with pytest.raises(KeyError, match="no entry for the selected layers"):
        compress_model(m, {"out": 3}, seed=0, layers=["out", "conv"])
    with pytest.raises(TypeError, match="layers must be a list of layer names, got the string 'out'"):
        compress_model(m, 3, seed=0, layers="out")
    with pytest.raises(ValueError, match="mode must be one of"):
        compress_model(m, 3, seed=0, mode="rows")
    with pytest.raises(ValueError, match="seed must be in"):
        compress_model(m, 3, seed=1 << 64)
    with pytest.raises(ValueError, match="NaN or Inf"):
        compress_model(m, 3, seed=0, data=torch.full((2, 2, 6, 6), float("nan")))
    with pytest.raises(ValueError, match="data is empty"):
        compress_model(m, 3, seed=0, data=torch.empty(0, 2, 6, 6))
    with pytest.warns(NoCompressionWarning, match="out \\(k = 40 >= 30\\)"):
        compress_model(m, {"out": 40}, seed=0)
    int_model = nn.Sequential(nn.Linear(4, 2))
    int_model[0].weight = nn.Parameter(torch.ones(2, 4, dtype=torch.int64), requires_grad=False)
    with pytest.raises(TypeError, match="0: only float32"):
        compress_model(int_model, 1, seed=0)


def test_fold_batchnorm_keeps_the_function():
    torch.manual_seed(0)
    for model, size in ((VGG((8, "M", 16, "M"), batch_norm=True, hidden=16), 4),
                        (resnet_cifar((1, 1), widths=(4, 8)), 8)):
        with torch.no_grad():
            for mod in model.modules():
                if isinstance(mod, nn.BatchNorm2d):
                    mod.running_mean.uniform_(-1, 1)
                    mod.running_var.uniform_(0.5, 2)
                    mod.weight.uniform_(0.5, 1.5)
                    mod.bias.uniform_(-0.5, 0.5)
        model.eval()
        x = torch.randn(3, 3, size, size)
        folded_model = copy.deepcopy(model)
        folded = fold_batchnorm(folded_model)
        n_bn = sum(isinstance(mod, nn.BatchNorm2d) for mod in model.modules())
        assert len(folded) == n_bn and not any(isinstance(mod, nn.BatchNorm2d) for mod in folded_model.modules())
        torch.testing.assert_close(folded_model(x), model(x), rtol=1e-4, atol=1e-5)


def test_compress_with_fold_bn_sketches_the_folded_weight():
    m = _model()
    comp, report = compress_model(m, 9, seed=3, fold_bn=True, layers=["conv"])
    assert report.folded == [{"conv": "conv", "batchnorm": "bn"}]
    assert isinstance(comp.bn, nn.Identity) and isinstance(m.bn, nn.BatchNorm2d)
    folded = copy.deepcopy(m)
    fold_batchnorm(folded)
    S = stabkern.sign_matrix(9, 72, seed=3, stream=0, dtype=torch.float64)
    torch.testing.assert_close(comp.conv.coefficients.double(), S @ folded.conv.weight.detach().double().reshape(-1),
                               rtol=1e-5, atol=1e-5)
    assert torch.equal(comp.conv.bias, folded.conv.bias)
    with pytest.raises(ValueError, match="torch.fx can trace"):
        class Untraceable(nn.Module):
            def __init__(self):
                super().__init__()
                self.c = nn.Conv2d(1, 1, 1)

            def forward(self, x):
                return self.c(x) if x.sum() > 0 else x

        compress_model(Untraceable(), 1, seed=0, fold_bn=True)


def test_resnet_every_layer_both_modes():
    torch.manual_seed(1)
    model = resnet_cifar((1, 1), widths=(4, 8)).eval()
    x = torch.randn(2, 3, 8, 8)
    for mode in ("tensor", "filter"):
        comp, report = compress_model(model, lambda n, mod: max(1, mod.weight[0].numel() // 2), mode=mode, seed=5,
                                      fold_bn=True, data=x)
        assert len(report.layers) == len(sketchable_layers(model))
        assert comp(x).shape == (2, 10)
        assert all(r.output_error is not None and r.output_error.samples == 2 for r in report.layers)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_cpu():
    from stabkern.compress import choose_k

    m = _model()
    x = torch.randn(20, 2, 6, 6)
    comp_cpu, rep_cpu = compress_model(m, 11, mode="filter", seed=8, data=x)
    comp_gpu, rep_gpu = compress_model(m.cuda(), 11, mode="filter", seed=8, data=x.cuda())
    for name in ("conv", "head.1", "out"):
        a, b = dict(comp_cpu.named_modules())[name], dict(comp_gpu.named_modules())[name]
        torch.testing.assert_close(b.weight.cpu(), a.weight, rtol=1e-4, atol=1e-5)
    for a, b in zip(rep_cpu.layers, rep_gpu.layers):
        assert b.output_error.mean == pytest.approx(a.output_error.mean, rel=1e-3)
    torch.testing.assert_close(comp_gpu(x.cuda()).cpu(), comp_cpu(x), rtol=1e-3, atol=1e-4)
    choice = choose_k(m.cuda(), x.cuda(), 1.0, C=0.1)  # cushions on the GPU
    assert [r.name for r in choice.layers] == ["conv", "head.1", "out"]
