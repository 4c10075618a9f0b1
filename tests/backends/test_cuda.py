"""CUDA backend (`stabkern._cuda` via `stabkern.backends.cuda`) against `stabkern.backends.reference`.

Two layers:
- Anywhere the module was built (nvcc present, no GPU needed): the host emulation of the tensor-core
  kernels (`emulate_*_mma`, the kernels' own fragment functions and an independent model of
  mma.m16n8k16) against the reference, and the binding's argument validation.
- On a GPU: every kernel (GEMV on CUDA cores, GEMM on tensor cores), every precision mode and
  dtype against the reference, signs bit-exact through one-hot inputs, determinism, splits,
  Inf/NaN, streams, bad input.

Tolerances as in tests/backends/test_triton_sign.py: the bf16 split changes each operand entry by at most
delta = 2^-8, 2^-16, 2^-24 of itself (1, 2, 3 terms), products with +-1 are exact, and m float32
additions add at most m 2^-23 sum|x|; so |y_t - y_ref_t| <= (delta + m 2^-23) sum_j |x_j|.
"""

from __future__ import annotations

import pytest
import torch

from stabkern.backends import reference

_cuda = pytest.importorskip("stabkern._cuda", reason="stabkern._cuda is not built (no nvcc at install)")
from stabkern.backends import cuda as cuda_sign  # noqa: E402

ON_GPU = torch.cuda.is_available()
needs_gpu = pytest.mark.skipif(not ON_GPU, reason="CUDA kernels need a CUDA GPU")

SEED = (1 << 63) + 0x1234_5678_9ABC
DELTA = {1: 2.0**-8, 2: 2.0**-16, 3: 2.0**-24}
REL_FRO = {"highest": 1e-5, "high": 3e-5, "medium": 4e-3}  # the modes' documented bounds (README)
U32 = 2.0**-23
U64 = 2.0**-52
TERMS = {"highest": 3, "high": 2, "medium": 1}


def _randn(shape, dtype, seed, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype).to(device)


def _check_close(out, ref, abs_sum, m, delta, unit, rel_fro):
    """|out - ref| <= (delta + m unit) abs_sum elementwise, and the relative Frobenius error <= rel_fro."""
    out = out.double().cpu()
    ref = ref.double().cpu()
    assert torch.isfinite(out).all()
    excess = (out - ref).abs() - (delta + m * unit) * abs_sum.double().cpu()
    assert excess.max() <= 0, f"error exceeds the rounding bound by {excess.max():.3g}"
    rel = ((out - ref).norm() / ref.norm()).item()
    assert rel <= rel_fro, f"relative Frobenius error {rel:.3g} > {rel_fro:.3g}"


def _delta(form, precision, dtype):
    terms = cuda_sign.split_terms(precision, dtype)
    exact = form == "gemv" or dtype == torch.bfloat16 or (dtype == torch.float16 and terms >= 2)
    return 0.0 if exact else DELTA[terms]


def _rel_fro(delta, precision):
    return REL_FRO["highest"] if delta <= DELTA[3] else REL_FRO[precision]


# --------------------------------------------------------------------------- host emulation (no GPU)


@pytest.mark.parametrize("precision", ["highest", "high", "medium"])
@pytest.mark.parametrize("rows,n,k", [(1, 130, 9), (5, 300, 33), (6, 520, 40), (20, 600, 70), (17, 1100, 41)])
def test_emulated_mma_matches_reference(precision, rows, n, k):
    """The tensor-core kernels' fragment mapping, split and accumulation order, run on the host.

    rows * terms <= 16 takes the stacked-rows path (1 and 5 rows; 6 rows with 3 terms does not).
    """
    terms = TERMS[precision]
    t0, j0, stream = 2**32 - k - 5, 128 * 9, 7
    x = _randn((rows, n), torch.float32, seed=rows + n)
    y = torch.full((rows, k), float("nan"))
    _cuda.emulate_project_mma(x.data_ptr(), y.data_ptr(), rows, n, k, SEED, stream, t0, j0, terms)
    ref = reference.project(x, k, SEED, stream, t0, j0)
    delta = DELTA[terms]
    _check_close(y, ref, x.double().abs().sum(1, keepdim=True), n, delta, U32, _rel_fro(delta, precision))

    yk = _randn((rows, k), torch.float32, seed=rows + k)
    out = torch.full((rows, n), float("nan"))
    _cuda.emulate_reconstruct_mma(yk.data_ptr(), out.data_ptr(), rows, n, k, 0.25, SEED, stream, t0, j0, terms)
    ref = reference.reconstruct(yk, n, SEED, stream, 0.25, t0, j0)
    _check_close(out, ref, 0.25 * yk.double().abs().sum(1, keepdim=True), k + 1, delta, U32,
                 _rel_fro(delta, precision))


def test_emulated_mma_golden_signs_bit_exact():
    """One-hot inputs read back every sign of S through the emulated tensor-core data flow."""
    n, k = 300, 70
    t0, j0, stream = 2**32 - k, 2**38 - 384, 2**32 - 1
    expected = reference.sign_block(SEED, stream, t0, k, j0, n, dtype=torch.float32)
    eye = torch.eye(n)
    y = torch.empty(n, k)
    _cuda.emulate_project_mma(eye.data_ptr(), y.data_ptr(), n, n, k, SEED, stream, t0, j0, 1)
    assert torch.equal(y, expected.T)
    eye = torch.eye(k)
    out = torch.empty(k, n)
    _cuda.emulate_reconstruct_mma(eye.data_ptr(), out.data_ptr(), k, n, k, 1.0, SEED, stream, t0, j0, 3)
    assert torch.equal(out, expected)


def test_binding_validates_arguments():
    """Sizes, ranges and codes are checked before anything reaches a kernel (ValueError)."""
    ok = dict(project=True, form=0, dtype=0, rows=2, n=300, k=10, t0=0, j0=0, terms=3, splits=1)
    assert _cuda.workspace_bytes(**ok) == 0
    assert _cuda.workspace_bytes(**{**ok, "splits": 3}) == 3 * 2 * 10 * 4  # three partial (2, 10) float32
    assert _cuda.workspace_bytes(**{**ok, "form": 1}) > 0  # the packed bf16 operand
    bad = [({"j0": 64}, "multiple of 128"), ({"t0": 2**32 - 5}, "t0 \\+ k"), ({"j0": 2**38}, "j0 \\+ n"),
           ({"terms": 0}, "terms"), ({"splits": 0}, "splits"), ({"dtype": 7}, "dtype"), ({"form": 2}, "form"),
           ({"rows": 0}, "positive"), ({"form": 1, "dtype": 1}, "GEMM form"), ({"t0": 2**32}, "t0")]
    for change, message in bad:
        with pytest.raises(ValueError, match=message):
            _cuda.workspace_bytes(**{**ok, **change})
    with pytest.raises(ValueError, match="workspace too small"):
        _cuda.project(1, 16, 0, 16, 0, 0, 2, 300, 10, 0, 0, 0, 0, 3, 1, 0, 0)
    with pytest.raises(ValueError, match="null"):
        _cuda.project(0, 0, 0, 16, 0, 0, 2, 300, 10, 0, 0, 0, 0, 3, 1, 0, 0)
    with pytest.raises(ValueError, match="stream"):
        _cuda.project(0, 16, 0, 16, 0, 0, 2, 300, 10, 0, 2**32, 0, 0, 3, 1, 0, 0)


# --------------------------------------------------------------------------- compiled kernels on a GPU

CASES = [("gemv", 1), ("gemv", 3), ("gemm", 1), ("gemm", 37), ("gemm", 130)]


@needs_gpu
@pytest.mark.parametrize("form,rows", CASES)
@pytest.mark.parametrize("precision", ["highest", "high", "medium"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_project_matches_reference(form, rows, precision, dtype):
    n, k, t0, j0, stream = 1333, 277, 5, 256, 3
    x = _randn((rows, n), dtype, seed=rows * 7 + len(precision), device="cuda")
    for splits in (1, 3):
        y = cuda_sign.project(_cuda, x, k, SEED, stream, t0, j0, precision, plan=cuda_sign.Plan(form, splits))
        assert y.shape == (rows, k) and y.dtype == torch.float32
        ref = reference.project(x.cpu(), k, SEED, stream, t0, j0)
        delta = _delta(form, precision, dtype)
        _check_close(y, ref, x.double().abs().sum(1, keepdim=True), n, delta, U32, _rel_fro(delta, precision))


@needs_gpu
@pytest.mark.parametrize("form,rows", CASES)
@pytest.mark.parametrize("precision", ["highest", "high", "medium"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_reconstruct_matches_reference(form, rows, precision, dtype):
    n, k, t0, j0, stream, scale = 1333, 277, 11, 1024, 9, 0.37
    y = _randn((rows, k), dtype, seed=rows * 5 + len(precision), device="cuda")
    for splits in (1, 4):
        out = cuda_sign.reconstruct(_cuda, y, n, scale, SEED, stream, t0, j0, precision,
                                    plan=cuda_sign.Plan(form, splits))
        assert out.shape == (rows, n) and out.dtype == torch.float32
        ref = reference.reconstruct(y.cpu(), n, SEED, stream, scale, t0, j0)
        delta = _delta(form, precision, dtype)
        _check_close(out, ref, scale * y.double().abs().sum(1, keepdim=True), k + 1, delta, U32,
                     _rel_fro(delta, precision))


@needs_gpu
@pytest.mark.parametrize("form,precision", [("gemv", "highest"), ("gemm", "highest"), ("gemm", "medium")])
def test_golden_signs_bit_exact(form, precision):
    """One-hot rows read back every sign of S, both directions, at the ends of the counter ranges."""
    k, n = 300, 1000
    t0, j0, stream = 2**32 - k, 2**38 - 1024, 2**32 - 1
    expected = reference.sign_block(SEED, stream, t0, k, j0, n, dtype=torch.float32, device="cuda")
    plan = cuda_sign.Plan(form, 2)
    y = cuda_sign.project(_cuda, torch.eye(n, device="cuda"), k, SEED, stream, t0, j0, precision, plan=plan)
    assert torch.equal(y, expected.T)
    out = cuda_sign.reconstruct(_cuda, torch.eye(k, device="cuda"), n, 1.0, SEED, stream, t0, j0, precision,
                                plan=plan)
    assert torch.equal(out, expected)


@needs_gpu
def test_float64_in_float64():
    rows, n, k = 6, 1260, 145
    x = _randn((rows, n), torch.float64, seed=1, device="cuda")
    y = cuda_sign.project(_cuda, x, k, SEED, 0, 0, 0, "medium")
    assert y.dtype == torch.float64
    _check_close(y, reference.project(x.cpu(), k, SEED, 0), x.abs().sum(1, keepdim=True), n, 0.0, U64, 1e-13)
    out = cuda_sign.reconstruct(_cuda, y, n, 1.0 / k, SEED, 0, 0, 0, "medium")
    assert out.dtype == torch.float64
    _check_close(out, reference.reconstruct(y.cpu(), n, SEED, 0, 1.0 / k), y.abs().sum(1, keepdim=True) / k,
                 k + 1, 0.0, U64, 1e-13)


@needs_gpu
@pytest.mark.parametrize("form", ["gemv", "gemm"])
def test_deterministic_and_stream_ordered(form):
    """Bitwise equal run to run, and correct when launched on a side stream."""
    x = _randn((20, 5000), torch.float32, seed=3, device="cuda")
    plan = cuda_sign.Plan(form, 5)
    first = cuda_sign.project(_cuda, x, 300, SEED, 2, 0, 0, "high", plan=plan)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        again = cuda_sign.project(_cuda, x, 300, SEED, 2, 0, 0, "high", plan=plan)
    torch.cuda.current_stream().wait_stream(side)
    assert torch.equal(first, again)
    y = _randn((20, 300), torch.float32, seed=4, device="cuda")
    first = cuda_sign.reconstruct(_cuda, y, 5000, 0.5, SEED, 2, 0, 0, "high", plan=plan)
    assert torch.equal(first, cuda_sign.reconstruct(_cuda, y, 5000, 0.5, SEED, 2, 0, 0, "high", plan=plan))


@needs_gpu
@pytest.mark.parametrize("form", ["gemv", "gemm"])
def test_inf_and_nan_propagate(form):
    x = _randn((2, 300), torch.float32, seed=5, device="cuda")
    x[0, 17] = float("inf")
    x[1, 201] = float("nan")
    y = cuda_sign.project(_cuda, x, 40, SEED, 0, 0, 0, "highest", plan=cuda_sign.Plan(form, 2)).cpu()
    assert torch.isinf(y[0]).all() and torch.isnan(y[1]).all()
    assert torch.equal(torch.sign(y[0]), reference.sign_block(SEED, 0, 0, 40, 0, 300)[:, 17].float())


@needs_gpu
@pytest.mark.parametrize("precision", ["highest", "medium"])
def test_large_sizes(precision):
    """Sizes that fill the GPU, with the default plans (signs bit-exact at random columns)."""
    n, k = 4608 * 2 + 77, 4096
    cols = torch.randint(0, n, (3,), generator=torch.Generator().manual_seed(7))
    x = torch.zeros(3, n, device="cuda")
    x[torch.arange(3), cols] = 1.0
    s = reference.sign_block(SEED, 5, 123, k, 128 * 1000, n, device="cuda", dtype=torch.float32)
    assert torch.equal(cuda_sign.project(_cuda, x, k, SEED, 5, 123, 128 * 1000, precision), s[:, cols].T)
    for rows in (1, 512):
        x = _randn((rows, n), torch.float32, seed=rows, device="cuda")
        y = cuda_sign.project(_cuda, x, k, SEED, 5, 123, 0, precision)
        ref = reference.project(x, k, SEED, 5, 123, 0)
        bound = REL_FRO[precision]
        assert ((y.double() - ref).norm() / ref.norm()).item() <= bound
        out = cuda_sign.reconstruct(_cuda, y, n, 1.0 / k, SEED, 5, 123, 0, precision)
        ref = reference.reconstruct(y, n, SEED, 5, 1.0 / k, 123, 0)
        assert ((out.double() - ref).norm() / ref.norm()).item() <= bound


@needs_gpu
def test_public_ops_use_cuda_backend():
    import stabkern

    x = _randn((4, 3, 700), torch.float32, seed=6, device="cuda")
    y = stabkern.sign_project(x, 31, seed=SEED, stream=4, backend="cuda", precision="high")
    ref = x.double().reshape(-1, 700) @ stabkern.sign_matrix(31, 700, seed=SEED, stream=4, dtype=torch.float64,
                                                             device="cuda").T
    assert y.shape == (4, 3, 31)
    assert ((y.double().reshape(-1, 31) - ref).norm() / ref.norm()) < REL_FRO["high"]


@needs_gpu
def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="CUDA tensors"):
        cuda_sign.project(_cuda, torch.zeros(2, 130), 4, 0, 0, 0, 0, "highest")
    with pytest.raises(TypeError, match="float32"):
        cuda_sign.project(_cuda, torch.zeros(2, 130, dtype=torch.int32, device="cuda"), 4, 0, 0, 0, 0, "highest")
    with pytest.raises(ValueError, match="contiguous"):
        cuda_sign.reconstruct(_cuda, torch.zeros(8, 6, device="cuda").T, 130, 1.0, 0, 0, 0, 0, "highest")
    with pytest.raises(ValueError, match="precision"):
        cuda_sign.project(_cuda, torch.zeros(2, 130, device="cuda"), 4, 0, 0, 0, 0, "low")
    with pytest.raises(ValueError, match="GEMM form"):
        cuda_sign.project(_cuda, torch.zeros(2, 130, dtype=torch.float64, device="cuda"), 4, 0, 0, 0, 0,
                          "highest", plan=cuda_sign.Plan("gemm", 1))
    with pytest.raises(ValueError, match="multiple of 128"):
        cuda_sign.project(_cuda, torch.zeros(2, 130, device="cuda"), 4, 0, 0, 0, 64, "highest")
