"""Triton backend (`stabkern.backends.triton.sign`) against `stabkern.backends.reference`.

Without a GPU the kernels run under the Triton interpreter on CPU tensors: the module fixture sets
TRITON_INTERPRET=1 and re-imports stabkern.backends.triton.sign (Triton decides at @triton.jit time whether
a kernel is interpreted), then restores both. With a GPU the same tests run the compiled kernels on
CUDA tensors, plus a few sizes too large for the interpreter: the interpreter proves semantics, not
the compiled kernel (README, "GPU backends").

Tolerances come from each mode's rounding. The GEMM operand x is replaced by x~ with
|x~_j - x_j| <= delta |x_j| (delta = 2^-8, 2^-16, 2^-24 for 1, 2, 3 bf16 terms, round to nearest;
0 where the dtype needs no more terms); products with +-1 are exact and m float32 additions add at
most m * 2^-23 * sum|x_j| (2^-23 rather than 2^-24 so that truncating tensor-core adders are
covered). So every |y_t - y_ref_t| <= (delta + m 2^-23) sum_j |x_j|, a bound that a wrong sign of
any sizeable x_j breaks. The relative Frobenius error must also meet the mode's documented figure.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ON_GPU = torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET", "0") != "1"
_SAVED_INTERPRET = os.environ.get("TRITON_INTERPRET")
if not ON_GPU and "triton" not in sys.modules:
    # Must precede the first import of triton: its own library functions (tl.cdiv, tl.sum) are
    # interpreted only if they were defined under TRITON_INTERPRET=1.
    os.environ["TRITON_INTERPRET"] = "1"

triton = pytest.importorskip("triton")

from stabkern.backends import reference  # noqa: E402

INTERPRETED = not ON_GPU and type(triton.language.cdiv).__name__ == "InterpretedFunction"
RUNNABLE = ON_GPU or INTERPRETED
DEVICE = "cuda" if ON_GPU else "cpu"

SEED = (1 << 63) + 0x1234_5678_9ABC  # both key words non-zero, top bit set
DELTA = {1: 2.0**-8, 2: 2.0**-16, 3: 2.0**-24}
REL_FRO = {"highest": 1e-5, "high": 3e-5, "medium": 4e-3}  # the modes' documented bounds (README)
U32 = 2.0**-23
U64 = 2.0**-52


@pytest.fixture(scope="module")
def ts():
    """stabkern.backends.triton.sign with its kernels interpreted (CPU) or compiled (GPU); env restored after."""
    if not RUNNABLE:
        pytest.skip("triton was imported in compiled mode before this module and there is no GPU: "
                    "test_rerun_in_subprocess runs these tests")
    import stabkern.backends.triton.sign as module

    if module._INTERPRET != INTERPRETED:
        module = importlib.reload(module)
    yield module
    if _SAVED_INTERPRET is None:
        os.environ.pop("TRITON_INTERPRET", None)
    else:
        os.environ["TRITON_INTERPRET"] = _SAVED_INTERPRET
    if module._INTERPRET != (os.environ.get("TRITON_INTERPRET", "0") == "1"):
        importlib.reload(module)


@pytest.mark.skipif(RUNNABLE, reason="the tests of this module run in this process")
def test_rerun_in_subprocess():
    """Triton came in compiled mode before this module (no GPU): run the module under the interpreter."""
    env = dict(os.environ, TRITON_INTERPRET="1")
    root = Path(__file__).resolve().parents[2]
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__], cwd=root,
                         env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and " failed" not in run.stdout


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randn(shape, dtype, seed):
    return torch.randn(*shape, generator=_gen(seed), dtype=torch.float64).to(dtype).to(DEVICE)


def _check_close(out, ref, x_abs_sum, m, delta, unit, rel_fro):
    """|out - ref| <= (delta + m unit) * x_abs_sum elementwise, and the relative Frobenius error."""
    assert torch.isfinite(out).all()
    out64 = out.double().cpu()
    ref = ref.double().cpu()
    bound = (delta + m * unit) * x_abs_sum.double().cpu()
    excess = (out64 - ref).abs() - bound
    assert excess.max() <= 0, f"error exceeds the rounding bound by {excess.max():.3g}"
    rel = ((out64 - ref).norm() / ref.norm()).item()
    assert rel <= rel_fro, f"relative Frobenius error {rel:.3g} > {rel_fro:.3g}"
    return rel


def _delta(ts, form, precision, dtype):
    """Relative change of each GEMM operand entry by its bf16 split (0 where the split is exact)."""
    terms = ts.split_terms(precision, dtype)
    exact = form == "gemv" or dtype == torch.bfloat16 or (dtype == torch.float16 and terms >= 2)
    return 0.0 if exact else DELTA[terms]


def _rel_fro(delta, precision):
    return REL_FRO["highest"] if delta <= DELTA[3] else REL_FRO[precision]


# --------------------------------------------------------------------------- Philox and golden signs


_PHILOX = None  # the kernels module's Philox, bound by the test below (Triton resolves globals)


def test_philox_known_answers(ts):
    """Our Philox4x32-10 in Triton reproduces Random123's known-answer vectors (docs/spec.md, section 1)."""
    global _PHILOX
    _PHILOX = ts._philox4x32_10
    tl = triton.language

    @triton.jit
    def kat_kernel(c_ptr, key_ptr, out_ptr):
        i = tl.arange(0, 4)
        c = tl.load(c_ptr + i * 4 + 0), tl.load(c_ptr + i * 4 + 1), tl.load(c_ptr + i * 4 + 2), tl.load(c_ptr + i * 4 + 3)
        k0, k1 = tl.load(key_ptr + i * 2), tl.load(key_ptr + i * 2 + 1)
        w0, w1, w2, w3 = _PHILOX(c[0], c[1], c[2], c[3], k0, k1)
        tl.store(out_ptr + i * 4 + 0, w0)
        tl.store(out_ptr + i * 4 + 1, w1)
        tl.store(out_ptr + i * 4 + 2, w2)
        tl.store(out_ptr + i * 4 + 3, w3)

    counters = [[0, 0, 0, 0], [0xFFFFFFFF] * 4, [0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344], [0, 0, 0, 0]]
    keys = [[0, 0], [0xFFFFFFFF] * 2, [0xA4093822, 0x299F31D0], [0, 0]]
    expected = [[0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8], [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD],
                [0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1], [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]]
    as_u32 = lambda rows: torch.tensor(rows, dtype=torch.int64).to(torch.int32).to(DEVICE).view(torch.uint32)
    out = torch.zeros(16, dtype=torch.int32, device=DEVICE).view(torch.uint32)
    kat_kernel[(1,)](as_u32(counters), as_u32(keys), out)
    got = out.view(torch.int32).cpu().to(torch.int64) & 0xFFFFFFFF
    assert got.view(4, 4).tolist() == expected


@pytest.mark.parametrize("form,precision", [("gemv", "highest"), ("gemm", "highest"), ("gemm", "medium")])
def test_golden_signs_bit_exact(ts, form, precision):
    """Projecting one-hot rows reads back S exactly; so does reconstructing from one-hot rows.

    Every bit position of the Philox words is read (n > 128). Offsets at the ends of the counter
    ranges, a seed with both key words set, stream 2^32 - 1. (The GEMV form ignores precision.)
    """
    k, n = (40, 200) if form == "gemv" else (70, 300)  # the interpreter runs one program per row
    t0, j0, stream = 2**32 - k, 2**38 - 384, 2**32 - 1
    expected = reference.sign_block(SEED, stream, t0, k, j0, n, dtype=torch.float32)
    plan = ts.Plan(form, 2)
    eye_n = torch.eye(n, dtype=torch.float32, device=DEVICE)
    got = ts.project(eye_n, k, SEED, stream, t0, j0, precision, plan=plan)  # (n, k) = S^T
    assert torch.equal(got.cpu(), expected.T)
    eye_k = torch.eye(k, dtype=torch.float32, device=DEVICE)
    got = ts.reconstruct(eye_k, n, 1.0, SEED, stream, t0, j0, precision, plan=plan)  # (k, n) = S
    assert torch.equal(got.cpu(), expected)


# --------------------------------------------------------------------------- accuracy against reference


CASES = [  # (form, rows): the GEMV form with one and a few rows, the GEMM form with a non-multiple of 16
    ("gemv", 1), ("gemv", 3), ("gemm", 37),
]


@pytest.mark.parametrize("form,rows", CASES)
@pytest.mark.parametrize("precision", ["highest", "high", "medium"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_project_matches_reference(ts, form, rows, precision, dtype):
    n, k, t0, j0, stream = 333, 77, 5, 256, 3
    x = _randn((rows, n), dtype, seed=rows * 7 + len(precision))
    plan = ts.plan_project(rows, n, k, dtype, x.device)
    assert plan.form == form
    y = ts.project(x, k, SEED, stream, t0, j0, precision)
    assert y.shape == (rows, k) and y.dtype == torch.float32
    ref = reference.project(x.cpu(), k, SEED, stream, t0, j0)
    delta = _delta(ts, form, precision, dtype)
    _check_close(y, ref, x.double().abs().sum(1, keepdim=True).cpu(), n, delta, U32, _rel_fro(delta, precision))


@pytest.mark.parametrize("form,rows", CASES)
@pytest.mark.parametrize("precision", ["highest", "high", "medium"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_reconstruct_matches_reference(ts, form, rows, precision, dtype):
    n, k, t0, j0, stream, scale = 333, 77, 11, 1024, 9, 0.37
    y = _randn((rows, k), dtype, seed=rows * 5 + len(precision))
    out = ts.reconstruct(y, n, scale, SEED, stream, t0, j0, precision)
    assert out.shape == (rows, n) and out.dtype == torch.float32
    ref = reference.reconstruct(y.cpu(), n, SEED, stream, scale, t0, j0)
    delta = _delta(ts, form, precision, dtype)
    _check_close(out, ref, scale * y.double().abs().sum(1, keepdim=True).cpu(), k + 1, delta, U32,
                 _rel_fro(delta, precision))


def test_float64_runs_gemv_in_float64(ts):
    rows, n, k = 6, 260, 45
    x = _randn((rows, n), torch.float64, seed=1)
    assert ts.plan_project(rows, n, k, torch.float64, x.device).form == "gemv"
    y = ts.project(x, k, SEED, 0, 0, 0, "medium")
    assert y.dtype == torch.float64
    ref = reference.project(x.cpu(), k, SEED, 0)
    _check_close(y, ref, x.abs().sum(1, keepdim=True).cpu(), n, 0.0, U64, 1e-13)
    out = ts.reconstruct(y, n, 1.0 / k, SEED, 0, 0, 0, "medium")
    assert out.dtype == torch.float64
    ref = reference.reconstruct(y.cpu(), n, SEED, 0, 1.0 / k)
    _check_close(out, ref, y.abs().sum(1, keepdim=True).cpu() / k, k + 1, 0.0, U64, 1e-13)


@pytest.mark.parametrize("form", ["gemv", "gemm"])
@pytest.mark.parametrize("splits", [1, 4])
def test_split_counts_and_edge_sizes(ts, form, splits):
    """Splits of the reduction (some of them empty), n below one group, n a group multiple, k = 1."""
    plan = ts.Plan(form, splits)
    for rows, n, k in [(2, 100, 1), (3, 128, 33), (5, 513, 300)]:
        x = _randn((rows, n), torch.float32, seed=n)
        y = ts.project(x, k, SEED, 1, 0, 128, "highest", plan=plan)
        ref = reference.project(x.cpu(), k, SEED, 1, 0, 128)
        _check_close(y, ref, x.abs().sum(1, keepdim=True).cpu(), n, 0.0, U32, 1e-5)
        yk = _randn((rows, k), torch.float32, seed=k)
        out = ts.reconstruct(yk, n, 2.0, SEED, 1, 0, 128, "highest", plan=plan)
        ref = reference.reconstruct(yk.cpu(), n, SEED, 1, 2.0, 0, 128)
        _check_close(out, ref, 2.0 * yk.abs().sum(1, keepdim=True).cpu(), k + 1, 0.0, U32, 1e-5)


@pytest.mark.parametrize("form", ["gemv", "gemm"])
def test_deterministic_run_to_run(ts, form):
    rows = 2 if form == "gemv" else 20
    x = _randn((rows, 700), torch.float32, seed=3)
    plan = ts.Plan(form, 3)
    first = ts.project(x, 50, SEED, 2, 0, 0, "high", plan=plan)
    again = ts.project(x, 50, SEED, 2, 0, 0, "high", plan=plan)
    assert torch.equal(first, again)
    y = _randn((rows, 50), torch.float32, seed=4)
    first = ts.reconstruct(y, 700, 0.5, SEED, 2, 0, 0, "high", plan=plan)
    assert torch.equal(first, ts.reconstruct(y, 700, 0.5, SEED, 2, 0, 0, "high", plan=plan))


@pytest.mark.filterwarnings("ignore:invalid value encountered")  # numpy's Inf - Inf in the interpreter
@pytest.mark.parametrize("form", ["gemv", "gemm"])
def test_inf_and_nan_propagate(ts, form):
    """Each y_t is a +-1 sum of x: one Inf gives +-Inf in every y_t, one NaN gives NaN."""
    x = _randn((2, 300), torch.float32, seed=5)
    x[0, 17] = float("inf")
    x[1, 201] = float("nan")
    y = ts.project(x, 40, SEED, 0, 0, 0, "highest", plan=ts.Plan(form, 2)).cpu()
    assert torch.isinf(y[0]).all() and torch.isnan(y[1]).all()
    s = reference.sign_block(SEED, 0, 0, 40, 0, 300)
    assert torch.equal(torch.sign(y[0]), s[:, 17].float())


def test_public_ops_use_triton_backend(ts):
    """The dispatcher reaches these kernels with backend="triton" (and passes the precision)."""
    import stabkern

    x = _randn((4, 3, 200), torch.float32, seed=6)
    y = stabkern.sign_project(x, 31, seed=SEED, stream=4, backend="triton", precision="high")
    ref = x.cpu().double().reshape(-1, 200) @ stabkern.sign_matrix(31, 200, seed=SEED, stream=4,
                                                                   dtype=torch.float64).T
    assert y.shape == (4, 3, 31)
    assert ((y.cpu().double().reshape(-1, 31) - ref).norm() / ref.norm()) < REL_FRO["high"]
    back = stabkern.sign_reconstruct(y, 200, seed=SEED, stream=4, backend="triton")
    assert back.shape == (4, 3, 200)


def test_bad_input_is_refused(ts):
    x = torch.zeros(2, 130, dtype=torch.int32, device=DEVICE)
    with pytest.raises(TypeError, match="float32"):
        ts.project(x, 4, 0, 0, 0, 0, "highest")
    with pytest.raises(ValueError, match="2-D"):
        ts.project(torch.zeros(2, 3, 130, device=DEVICE), 4, 0, 0, 0, 0, "highest")
    with pytest.raises(ValueError, match="contiguous"):
        ts.reconstruct(torch.zeros(8, 6, device=DEVICE).T, 130, 1.0, 0, 0, 0, 0, "highest")
    with pytest.raises(ValueError, match="precision"):
        ts.project(torch.zeros(2, 130, device=DEVICE), 4, 0, 0, 0, 0, "low")
    with pytest.raises(ValueError, match="CUDA tensors"):
        ts.project(torch.zeros(2, 130, device="meta"), 4, 0, 0, 0, 0, "highest")


# --------------------------------------------------------------------------- compiled kernels only


@pytest.mark.skipif(not ON_GPU, reason="compiled Triton kernels need a CUDA GPU")
@pytest.mark.parametrize("precision", ["highest", "high", "medium"])
def test_gpu_large_sizes(ts, precision):
    """Sizes that fill the GPU: every compiled kernel at scale, signs bit-exact at random columns."""
    n, k = 4608 * 2 + 77, 4096
    cols = torch.randint(0, n, (3,), generator=_gen(7))
    x = torch.zeros(3, n, device=DEVICE)
    x[torch.arange(3), cols] = 1.0
    y = ts.project(x, k, SEED, 5, 123, 128 * 1000, precision)
    s = reference.sign_block(SEED, 5, 123, k, 128 * 1000, n, device=DEVICE, dtype=torch.float32)
    assert torch.equal(y, s[:, cols].T)
    for rows in (1, 512):
        x = _randn((rows, n), torch.float32, seed=rows)
        y = ts.project(x, k, SEED, 5, 123, 0, precision)
        ref = reference.project(x, k, SEED, 5, 123, 0)
        rel = ((y.double() - ref).norm() / ref.norm()).item()
        assert rel <= (REL_FRO["highest"] if rows <= ts.TILES.gemv_max_rows else REL_FRO[precision])
        out = ts.reconstruct(y, n, 1.0 / k, SEED, 5, 123, 0, precision)
        ref = reference.reconstruct(y, n, SEED, 5, 1.0 / k, 123, 0)
        rel = ((out.double() - ref).norm() / ref.norm()).item()
        assert rel <= (REL_FRO["highest"] if rows <= ts.TILES.gemv_max_rows else REL_FRO[precision])
