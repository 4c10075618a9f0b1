"""SketchedLinear / SketchedConv2d: forward equals the dense layer with A_hat built from materialized
signs; state_dict is small and round-trips (seeds >= 2^63 included); the weight cache follows
device/dtype moves and in-place changes; bad input is refused clearly."""

import io
import math
import pickle
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import stabkern
from stabkern.sketched import NoCompressionWarning, SketchedConv2d, SketchedLinear, project_weight, reconstruct_weight

BIG_SEED = (1 << 64) - 12345  # above 2^63: does not fit a signed int64


def a_hat_reference(weight: torch.Tensor, k: int, mode: str, seed: int, stream: int) -> torch.Tensor:
    """Algorithm 1 with S materialized, in float64: tensor mode on vec(W), filter mode per row."""
    rows = weight.detach().double().reshape(1 if mode == "tensor" else weight.shape[0], -1)
    S = stabkern.sign_matrix(k, rows.shape[1], seed=seed, stream=stream, dtype=torch.float64)
    return ((rows @ S.T) @ S / k).reshape(weight.shape)


def dense_with(module: nn.Module, weight: torch.Tensor) -> nn.Module:
    out = pickle.loads(pickle.dumps(module))
    with torch.no_grad():
        out.weight.copy_(weight.to(out.weight.dtype))
    return out


@pytest.mark.parametrize("mode", ["tensor", "filter"])
@pytest.mark.parametrize("shape,k", [((13, 37), 50), ((1, 200), 7), ((64, 3), 11)])
def test_linear_forward_equals_dense_with_a_hat(mode, shape, k):
    torch.manual_seed(0)
    lin = nn.Linear(shape[1], shape[0])
    covered = shape[1] if mode == "filter" else math.prod(shape)
    if k >= covered:  # no compression: refused unless asked for
        with pytest.raises(ValueError, match="no compression.*allow_no_compression=True"):
            SketchedLinear.from_module(lin, k, mode=mode, seed=BIG_SEED, stream=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error", NoCompressionWarning)
        sk = SketchedLinear.from_module(lin, k, mode=mode, seed=BIG_SEED, stream=3, allow_no_compression=k >= covered)
    ref = a_hat_reference(lin.weight, k, mode, BIG_SEED, 3)
    torch.testing.assert_close(sk.weight.double(), ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())
    x = torch.randn(5, 2, shape[1])
    torch.testing.assert_close(sk(x), dense_with(lin, ref)(x), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(sk.bias, lin.bias, rtol=0, atol=0)  # the bias is exact


CONV_CASES = [
    dict(in_channels=3, out_channels=5, kernel_size=3, padding=1),
    dict(in_channels=4, out_channels=6, kernel_size=(3, 2), stride=2, padding=(1, 0), bias=False),
    dict(in_channels=4, out_channels=6, kernel_size=3, dilation=2, groups=2, padding="valid"),
    dict(in_channels=2, out_channels=4, kernel_size=4, padding="same"),  # asymmetric padding
    dict(in_channels=3, out_channels=3, kernel_size=3, groups=3, padding=1, padding_mode="reflect"),
    dict(in_channels=2, out_channels=5, kernel_size=3, stride=(2, 1), padding=2, padding_mode="circular"),
    dict(in_channels=2, out_channels=2, kernel_size=3, padding="same", padding_mode="replicate", dilation=(1, 2)),
]


@pytest.mark.parametrize("mode", ["tensor", "filter"])
@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_conv_forward_equals_dense_with_a_hat(mode, case):
    torch.manual_seed(1)
    conv = nn.Conv2d(**case)
    m = conv.weight[0].numel()
    k = max(1, m // 3)
    sk = SketchedConv2d.from_module(conv, k, mode=mode, seed=99, stream=11)
    ref = a_hat_reference(conv.weight, k, mode, 99, 11)
    torch.testing.assert_close(sk.weight.double(), ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())
    x = torch.randn(2, case["in_channels"], 9, 7)
    torch.testing.assert_close(sk(x), dense_with(conv, ref)(x), rtol=1e-4, atol=1e-5)


def test_filter_mode_shares_one_sign_matrix_gemm_form():
    torch.manual_seed(2)
    w = torch.randn(7, 3, 3, 3, dtype=torch.float64)
    c = project_weight(w, 20, mode="filter", seed=5, stream=2)
    S = stabkern.sign_matrix(20, 27, seed=5, stream=2, dtype=torch.float64)
    torch.testing.assert_close(c, w.reshape(7, -1) @ S.T)  # every row against the same S
    c_t = project_weight(w, 20, mode="tensor", seed=5, stream=2)
    S_t = stabkern.sign_matrix(20, w.numel(), seed=5, stream=2, dtype=torch.float64)
    torch.testing.assert_close(c_t, S_t @ w.reshape(-1))
    torch.testing.assert_close(reconstruct_weight(c, w.shape, mode="filter", seed=5, stream=2),
                               (c @ S / 20).reshape(w.shape))


def _saved_bytes(obj) -> int:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return len(buf.getvalue())


def test_checkpoint_of_vgg_layer_is_400x_smaller():
    dense = nn.Conv2d(512, 512, 3, padding=1)
    sk = SketchedConv2d(512, 512, 3, 4096, padding=1, seed=BIG_SEED, stream=12)
    assert set(sk.state_dict()) == {"coefficients", "bias", "seed", "stream"}
    ratio = _saved_bytes(dense.state_dict()) / _saved_bytes(sk.state_dict())
    # the exact bias (512 floats) bounds it near 2,359,296 / (4096 + 512) = 512
    assert 400 <= ratio < 512, ratio


@pytest.mark.parametrize("mode", ["tensor", "filter"])
def test_state_dict_round_trip_same_output(mode):
    torch.manual_seed(3)
    conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
    sk = SketchedConv2d.from_module(conv, 13, mode=mode, seed=BIG_SEED, stream=(1 << 32) - 1)
    buf = io.BytesIO()
    torch.save(sk.state_dict(), buf)
    buf.seek(0)
    fresh = SketchedConv2d(3, 8, 3, 13, stride=2, padding=1, mode=mode)  # seed 0, stream 0, zeros
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    assert fresh.seed_value == BIG_SEED and fresh.stream_value == (1 << 32) - 1
    x = torch.randn(2, 3, 10, 10)
    assert torch.equal(fresh(x), sk(x))
    other = SketchedConv2d(3, 8, 3, 13, stride=2, padding=1, mode="filter" if mode == "tensor" else "tensor")
    with pytest.raises(RuntimeError, match="size mismatch"):
        other.load_state_dict(sk.state_dict())


def test_weight_cache_follows_dtype_and_in_place_changes():
    torch.manual_seed(4)
    lin = nn.Linear(20, 6)
    sk = SketchedLinear.from_module(lin, 9, seed=7, stream=1)
    w = sk.weight
    assert sk.weight is w  # cached
    sk.double()  # _apply clears the cache
    w64 = sk.weight
    assert w64.dtype == torch.float64 and w64 is not w
    torch.testing.assert_close(w64, a_hat_reference(lin.weight, 9, "tensor", 7, 1), rtol=1e-6, atol=1e-7)
    with torch.no_grad():
        sk.coefficients.mul_(2)  # in place: bumps the version counter
    torch.testing.assert_close(sk.weight, 2 * w64)
    other = SketchedLinear.from_module(lin.double(), 9, seed=8, stream=1)
    sk.load_state_dict(other.state_dict())
    torch.testing.assert_close(sk.weight, other.weight)
    sk(torch.randn(2, 20, dtype=torch.float64))
    assert pickle.loads(pickle.dumps(sk))._weight_cache == {}  # pickling drops the dense weight


def _expected_weight(sk) -> torch.Tensor:
    """A_hat from the layer's current coefficients, seed and stream, signs materialized."""
    rows = sk.coefficients.detach().double().reshape(1 if sk.mode == "tensor" else sk.weight_shape[0], -1)
    S = stabkern.sign_matrix(sk.k, sk.n // len(rows), seed=sk.seed_value, stream=sk.stream_value,
                             dtype=torch.float64)
    return (rows @ S / sk.k).reshape(sk.weight_shape)


def _fresh_seed(seed):
    return torch.tensor([seed & 0xFFFFFFFF, seed >> 32], dtype=torch.int64)


MUTATIONS = {
    "load_state_dict(assign=True)": lambda sk, other: sk.load_state_dict(other.state_dict(), assign=True),
    "coefficients.data =": lambda sk, other: setattr(sk.coefficients, "data", other.coefficients.detach().clone()),
    "coefficients.data.copy_": lambda sk, other: sk.coefficients.data.copy_(other.coefficients),  # no version bump
    "new Parameter": lambda sk, other: setattr(sk, "coefficients", nn.Parameter(other.coefficients.detach().clone(),
                                                                                requires_grad=False)),
    "new seed buffer": lambda sk, other: setattr(sk, "seed", _fresh_seed(BIG_SEED - 1)),
    "seed.data =": lambda sk, other: setattr(sk.seed, "data", _fresh_seed(BIG_SEED - 2)),
    "new stream buffer": lambda sk, other: setattr(sk, "stream", torch.tensor(5)),
    "vector_to_parameters": lambda sk, other: nn.utils.vector_to_parameters(
        torch.cat([p.detach().reshape(-1) for p in other.parameters()]), sk.parameters()),
}


@pytest.mark.parametrize("mutation", MUTATIONS)
@pytest.mark.parametrize("cls", ["linear", "conv"])
def test_weight_cache_follows_fresh_tensors(mutation, cls):
    """Fresh tensors start at version 0 and .data writes bump none: the cache must still see the change."""
    torch.manual_seed(8)
    if cls == "linear":
        dense, other_dense = nn.Linear(20, 6), nn.Linear(20, 6)
        make = SketchedLinear.from_module
        x = torch.randn(3, 20)
    else:
        dense, other_dense = nn.Conv2d(3, 4, 3), nn.Conv2d(3, 4, 3)
        make = SketchedConv2d.from_module
        x = torch.randn(2, 3, 6, 6)
    sk = make(dense, 9, mode="filter", seed=BIG_SEED, stream=1)
    other = make(other_dense, 9, mode="filter", seed=BIG_SEED, stream=1)
    sk(x)  # fills the cache
    cached = sk.weight
    assert sk.weight is cached
    MUTATIONS[mutation](sk, other)
    expect = _expected_weight(sk)
    assert (expect - cached.double()).abs().max() > 0.1 * expect.abs().max()  # the mutation changed A_hat
    torch.testing.assert_close(sk.weight.double(), expect, rtol=1e-5, atol=1e-5 * expect.abs().max().item())
    ref = dense_with(dense, expect)
    ref.bias = sk.bias
    torch.testing.assert_close(sk(x), ref(x), rtol=1e-4, atol=1e-5)


def test_cached_weight_written_in_place_is_regenerated():
    sk = SketchedLinear.from_module(nn.Linear(20, 6), 9, seed=3)
    w = sk.weight.clone()
    with torch.no_grad():
        sk.weight.mul_(0)  # someone's weight clipping loop over modules with a .weight
    torch.testing.assert_close(sk.weight, w)


@pytest.mark.parametrize("key,value,match", [
    ("seed", torch.tensor([(1 << 32) + 5, 0]), "seed: the low 32-bit half must be in"),
    ("seed", torch.tensor([5, 1 << 32]), "seed: the high 32-bit half must be in"),
    ("seed", torch.tensor([-1, 0]), "seed: the low 32-bit half must be in"),
    ("seed", torch.tensor([5.7, 0.0]), "seed must be an integer tensor, got torch.float32"),
    ("seed", torch.tensor([5, 0, 0]), "seed must have shape \\(2,\\)"),
    ("stream", torch.tensor(2.0), "stream must be an integer tensor"),
    ("stream", torch.tensor(1 << 32), "stream must be in \\[0, 2\\^32\\)"),
    ("stream", torch.tensor([3]), "stream must have shape \\(\\)"),
    ("coefficients", torch.ones(9, dtype=torch.int64), "coefficients must be a float32"),
    ("coefficients", torch.tensor([1.0] * 4 + [float("nan")] + [1.0] * 4), "coefficients hold 1 NaN or Inf"),
    ("coefficients", torch.full((9,), float("-inf"), dtype=torch.float64), "coefficients hold 9 NaN or Inf"),
])
@pytest.mark.parametrize("assign", [False, True])
def test_corrupted_checkpoint_is_refused_naming_the_key(key, value, match, assign):
    torch.manual_seed(9)
    model = nn.Sequential(SketchedLinear.from_module(nn.Linear(20, 6), 9, seed=7, stream=2))
    state = model.state_dict()
    state["0." + key] = value
    keep = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(RuntimeError, match="0\\." + match):
        model.load_state_dict(state, assign=assign)
    for k, v in model.state_dict().items():  # nothing of the module was loaded
        assert torch.equal(v, keep[k]), k
    # the runtime siblings: a buffer set by hand is checked where the seed is read
    model[0].seed = torch.tensor([(1 << 32) + 5, 0])
    with pytest.raises(ValueError, match="seed: the low 32-bit half"):
        model[0].seed_value


@pytest.mark.parametrize("mode,shape", [("tensor", (7, 300)), ("filter", (5, 3, 11, 11)), ("filter", (40, 9))])
def test_relative_error_in_pieces_equals_the_whole(monkeypatch, mode, shape):
    """relative_error regenerates A_hat in row / 128-aligned column pieces: the same number as the whole."""
    import stabkern.sketched as sketched

    torch.manual_seed(10)
    w = torch.randn(shape)
    c = project_weight(w, 6, mode=mode, seed=BIG_SEED, stream=4)
    ref = a_hat_reference(w, 6, mode, BIG_SEED, 4)
    expect = float((ref - w.double()).norm() / w.double().norm())
    monkeypatch.setattr(sketched, "_CHUNK", 256)  # many pieces: 300 = 256 + 44 columns, 363 > 256 per filter
    got = sketched.relative_error(c, w, mode=mode, seed=BIG_SEED, stream=4)
    assert got == pytest.approx(expect, rel=1e-5)
    assert sketched.relative_error(c, torch.zeros(shape), mode=mode, seed=BIG_SEED, stream=4) == 0.0


def test_coefficients_fine_tune_with_autograd():
    torch.manual_seed(5)
    lin = nn.Linear(12, 4, dtype=torch.float64)
    sk = SketchedLinear.from_module(lin, 10, mode="filter", seed=3, stream=0)
    assert not sk.coefficients.requires_grad  # frozen by default
    sk.coefficients.requires_grad_(True)
    x = torch.randn(6, 12, dtype=torch.float64)
    (sk(x) ** 2).sum().backward()
    c = sk.coefficients.detach().clone().requires_grad_(True)
    S = stabkern.sign_matrix(10, 12, seed=3, dtype=torch.float64)
    (F.linear(x, c @ S / 10, lin.bias.detach()) ** 2).sum().backward()
    torch.testing.assert_close(sk.coefficients.grad, c.grad)


def test_float64_and_half_layers():
    torch.manual_seed(6)
    conv = nn.Conv2d(2, 3, 3, dtype=torch.float64)
    sk = SketchedConv2d.from_module(conv, 7, mode="filter", seed=1)
    assert sk.coefficients.dtype == torch.float64
    torch.testing.assert_close(sk.weight, a_hat_reference(conv.weight, 7, "filter", 1, 0), rtol=1e-12, atol=1e-12)
    lin = nn.Linear(30, 5).to(torch.bfloat16)
    skh = SketchedLinear.from_module(lin, 40, seed=1)
    assert skh.weight.dtype == torch.bfloat16
    ref = a_hat_reference(lin.weight, 40, "tensor", 1, 0)
    torch.testing.assert_close(skh.weight.double(), ref, rtol=0.02, atol=0.02 * ref.abs().max().item())


def test_bad_input_is_refused_clearly():
    lin = nn.Linear(10, 3)
    with pytest.raises(TypeError, match="nn.Linear"):
        SketchedLinear.from_module(nn.Conv2d(1, 1, 1), 3)
    with pytest.raises(TypeError, match="nn.Conv2d"):
        SketchedConv2d.from_module(nn.Conv1d(1, 1, 1), 3)
    for bad in (2.5, "4", True, None):
        with pytest.raises(TypeError, match="k must be an int"):
            SketchedLinear.from_module(lin, bad)
    with pytest.raises(ValueError, match="k must be in"):
        SketchedLinear.from_module(lin, 0)
    with pytest.raises(ValueError, match="mode must be one of"):
        SketchedLinear.from_module(lin, 3, mode="row")
    for seed in (-1, 1 << 64):
        with pytest.raises(ValueError, match="seed must be in"):
            SketchedLinear.from_module(lin, 3, seed=seed)
    with pytest.raises(ValueError, match="stream must be in"):
        SketchedLinear.from_module(lin, 3, stream=1 << 32)
    int_lin = nn.Linear(4, 2)
    int_lin.weight = nn.Parameter(torch.ones(2, 4, dtype=torch.int32), requires_grad=False)
    with pytest.raises(TypeError, match="only float32/float64/float16/bfloat16"):
        SketchedLinear.from_module(int_lin, 3)
    nan_lin = nn.Linear(4, 2)
    with torch.no_grad():
        nan_lin.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        SketchedLinear.from_module(nan_lin, 3)
    with pytest.raises(ValueError, match="uninitialized"):
        SketchedLinear.from_module(nn.LazyLinear(3), 3)
    with pytest.raises(ValueError, match="divisible by groups"):
        SketchedConv2d(3, 4, 3, 5, groups=2)
    with pytest.raises(ValueError, match="layer: k = 31 >= 30 entries of the weight.*no compression"):
        SketchedLinear.from_module(lin, 31)
    assert SketchedLinear.from_module(lin, 31, allow_no_compression=True).stored == 31
    for bad in (1.5, "3", True):
        with pytest.raises(TypeError, match="in_features must be an int"):
            SketchedLinear(bad, 3, 2)
    with pytest.raises(ValueError, match="out_features must be in"):
        SketchedLinear(3, 0, 2)
    with pytest.raises(ValueError, match="kernel_size must be in"):
        SketchedConv2d(3, 4, 0, 2)
    with pytest.raises(TypeError, match="stride must be an int"):
        SketchedConv2d(3, 4, 3, 2, stride=1.0)
    with pytest.raises(ValueError, match="backend must be one of"):
        SketchedLinear(10, 3, 2, backend="gpu")
    assert SketchedLinear(10, 3, np.int64(4), seed=np.uint64(BIG_SEED)).seed_value == BIG_SEED  # numpy ints


def test_k_at_least_n_allocates_nothing():
    """k = 2^32 on a 16-weight layer: refused before the 16 GiB of coefficients are allocated."""
    for make in (lambda: SketchedLinear(4, 4, 1 << 32), lambda: SketchedConv2d(2, 3, 3, 1 << 32, mode="filter"),
                 lambda: SketchedLinear.from_module(nn.Linear(4, 4), 1 << 32)):
        with pytest.raises(ValueError, match="k = 4294967296 >= .*no compression"):
            make()
    with pytest.raises(ValueError, match="k must be in \\[1, 4294967297\\)"):
        SketchedLinear(4, 4, (1 << 32) + 1, allow_no_compression=True)  # beyond the sign ops' row range
