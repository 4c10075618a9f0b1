"""The noise ops of the meters (`stabkern.ops.sphere_noise`, `stabkern.ops.sq_error`) on every backend here.

The oracle is `sphere_noise_reference` / `sq_error_reference` (float64 torch), whose Gaussian mapping
(spec stabkern-noise-v1) is itself checked against a pure-Python Philox (checked on Random123's
known-answer vectors) with `math`'s log/cos/sin, and for its statistics.

Tolerances. The kernels compute z in float32 with ln/sincos polynomials accurate to ~1e-7 relative and
|z_j| <= ||z||, so the noise term s z_j = radius z_j / ||z|| is off by at most 1e-6 radius (a 10x margin
over the polynomials and float32 sqrt/division); the final x + s z rounds by 2^-24 |out| (2^-23 taken).
Statistical tests use 5-sigma (or KS p = 1e-6) bounds derived in each test, with fixed seeds.
The Triton kernels run compiled on a GPU, else under TRITON_INTERPRET=1 (set by conftest.py before
Triton is imported) at small sizes.
"""

from __future__ import annotations

import math

import pytest
import torch

from stabkern import ops as K
from stabkern.backends import BACKENDS
from stabkern.backends.reference import sphere_noise_reference, sq_error_reference
from stabkern.spec import gaussian_reference

try:
    import triton.language as tl
    TRITON_RUNNABLE = torch.cuda.is_available() or type(tl.cdiv).__name__ == "InterpretedFunction"
except ImportError:
    TRITON_RUNNABLE = False

TRITON_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
CASES = [("cpu", "reference"), ("cpu", "cpu")]
if TRITON_RUNNABLE:
    CASES.append((TRITON_DEVICE, "triton"))
IDS = [f"{d}-{b}" for d, b in CASES]
SEED = (1 << 63) + 0x0DDB_A11C_AFE5  # both key words non-zero, top bit set

M0, M1, W0, W1 = 0xD2511F53, 0xCD9E8D57, 0x9E3779B9, 0xBB67AE85


def philox_py(c, k):
    """Random123 Philox4x32-10 on Python ints, independent of stabkern.reference."""
    c0, c1, c2, c3 = c
    k0, k1 = k
    for _ in range(10):
        p0, p1 = M0 * c0, M1 * c2
        c0, c1, c2, c3 = ((p1 >> 32) ^ c1 ^ k0) & 0xFFFFFFFF, p1 & 0xFFFFFFFF, ((p0 >> 32) ^ c3 ^ k1) & 0xFFFFFFFF, \
            p0 & 0xFFFFFFFF
        k0, k1 = (k0 + W0) & 0xFFFFFFFF, (k1 + W1) & 0xFFFFFFFF
    return c0, c1, c2, c3


def gaussian_py(seed, stream, sample, trial, j):
    """Element j of the noise of (sample, trial), straight from the spec text."""
    w = philox_py((j >> 2, sample, trial, stream + 1), (seed & 0xFFFFFFFF, seed >> 32))
    p = (j >> 1) & 1
    u = (2 * (w[2 * p] >> 9) + 1) / 2 ** 24
    v = (2 * (w[2 * p + 1] >> 9) + 1) / 2 ** 24
    r = math.sqrt(-2 * math.log(u))
    return r * math.cos(2 * math.pi * v) if j % 2 == 0 else r * math.sin(2 * math.pi * v)


def test_python_philox_matches_random123_known_answers():
    assert philox_py((0, 0, 0, 0), (0, 0)) == (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)
    assert philox_py((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2) == (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)
    assert philox_py((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0)) == \
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)


def test_reference_gaussian_is_the_spec():
    samples = torch.tensor([0, 7, 2 ** 32 - 1])
    trials = torch.tensor([0, 3, 2 ** 31 + 5])
    for j0 in (0, 6, 2 ** 33 + 1):
        z = gaussian_reference(SEED, 11, samples, trials, 13, j0=j0)
        for r in range(3):
            for j in range(13):
                want = gaussian_py(SEED, 11, int(samples[r]), int(trials[r]), j0 + j)
                assert abs(z[r, j].item() - want) <= 1e-12 * max(1.0, abs(want))


def test_reference_gaussian_statistics():
    """2^20 values: mean, variance, KS distance to N(0, 1), and no correlation inside a Box-Muller pair."""
    n = 1 << 16
    z = gaussian_reference(12345, 0, torch.arange(16), torch.zeros(16, dtype=torch.long), n).reshape(-1)
    count = z.numel()
    assert abs(z.mean().item()) <= 5 / math.sqrt(count)
    # Var(z^2) = 2 for N(0, 1); the cut at 5.77 sigma moves the variance by < 1e-6
    assert abs(z.var().item() - 1) <= 5 * math.sqrt(2 / count)
    pairs = z.reshape(-1, 2)
    corr = (pairs[:, 0] * pairs[:, 1]).mean().item()  # E z0 z1 = 0, Var(z0 z1) = 1
    assert abs(corr) <= 5 / math.sqrt(pairs.shape[0])
    scipy_stats = pytest.importorskip("scipy.stats")
    ks = scipy_stats.kstest(z.numpy(), "norm")
    assert ks.pvalue > 1e-6


def test_cpu_gauss4_matches_reference():
    mod = BACKENDS["cpu"].noise_module
    if mod is None:
        pytest.skip("stabkern._noise is not built")
    gen = torch.Generator().manual_seed(1)
    for _ in range(200):
        sample, trial, group = (int(v) for v in torch.randint(0, 2 ** 31, (3,), generator=gen))
        got = mod.gauss4(SEED, 5, sample, trial, group)
        ref = gaussian_reference(SEED, 5, torch.tensor([sample]), torch.tensor([trial]), 4, j0=4 * group)[0]
        for a, b in zip(got, ref.tolist()):
            assert abs(a - b) <= 1e-6 * max(1.0, abs(b))


def _bound(out, ref, radius, trials):
    """Elementwise tolerance of the module note: 1e-6 radius_b + 2^-23 |ref|."""
    rad = radius.double().repeat(trials).view(-1, *[1] * (ref.dim() - 1))
    return (out.double().cpu() - ref.cpu()).abs() <= 1e-6 * rad.cpu() + 2.0 ** -23 * ref.abs().cpu()


@pytest.mark.parametrize("device,backend", CASES, ids=IDS)
@pytest.mark.parametrize("shape,trials", [((1, 1), 1), ((3, 5), 2), ((2, 3, 11), 3), ((3, 2, 3, 5), 2),
                                          ((2, 1027), 2)])
def test_sphere_noise_matches_reference(device, backend, shape, trials):
    gen = torch.Generator().manual_seed(sum(shape) + trials)
    x = torch.randn(*shape, generator=gen).to(device)
    radius = (torch.rand(shape[0], generator=gen, dtype=torch.float64) + 0.1).to(device)
    kw = dict(trials=trials, seed=SEED, stream=9, sample0=123456, trial0=2 ** 31)
    out = K.sphere_noise(x, radius, backend=backend, **kw)
    ref = sphere_noise_reference(x.cpu(), radius.cpu(), **kw)
    assert out.shape == (trials * shape[0], *shape[1:]) and out.dtype == x.dtype and out.device == x.device
    assert _bound(out, ref, radius, trials).all()


@pytest.mark.parametrize("device,backend", CASES, ids=IDS)
def test_sphere_noise_exact_norm(device, backend):
    x = torch.randn(4, 3, 7, 5).to(device)
    radius = torch.tensor([0.5, 1.0, 3.0, 1e-3], dtype=torch.float64, device=device)
    out = K.sphere_noise(x, radius, trials=3, seed=7, stream=0, backend=backend)
    dist = (out.double() - x.double().repeat(3, 1, 1, 1)).flatten(1).norm(dim=1).view(3, 4)
    # float32 rounding of each element of x + s z: <= 2^-24 |out_j|, so the distance moves by at most
    # 2^-24 ||out|| on top of the 1e-6 relative error of s z
    slack = 2.0 ** -24 * out.double().flatten(1).norm(dim=1).view(3, 4) + 1e-6 * radius
    assert ((dist - radius).abs() <= slack).all()


@pytest.mark.parametrize("device,backend", CASES, ids=IDS)
def test_sphere_noise_statistics(device, backend):
    """x = 0, radius sqrt(n): rows are sqrt(n) u, u uniform on the sphere.

    Over R independent rows: Var(sum_j out_j) = n Var(1.u) = n (E (1.u)^2 = ||1||^2 / n = 1), so the grand
    mean has variance 1/(R n); one coordinate has E out_j^2 = 1 and Var(out_j^2) = 3n/(n+2) - 1.
    """
    n, rows = 33, 256 if backend == "triton" and device == "cpu" else 4096  # interpreter: keep it small
    b = rows // 4
    x = torch.zeros(b, n, device=device)
    radius = torch.full((b,), math.sqrt(n), dtype=torch.float64, device=device)
    out = K.sphere_noise(x, radius, trials=4, seed=99, stream=3, backend=backend).double().cpu()
    assert abs(out.mean().item()) <= 5 / math.sqrt(rows * n)
    var_sq = 3 * n / (n + 2) - 1
    for j in (0, 1, 2, n - 1):
        assert abs(out[:, j].square().mean().item() - 1) <= 5 * math.sqrt(var_sq / rows)
        assert abs(out[:, j].mean().item()) <= 5 / math.sqrt(rows)


@pytest.mark.parametrize("device,backend", CASES, ids=IDS)
def test_sphere_noise_depends_only_on_counters(device, backend):
    """Splitting samples or trials into chunks (offsets) gives the same rows: chunking-invariant noise."""
    x = torch.randn(5, 37).to(device)
    radius = torch.rand(5, dtype=torch.float64).to(device) + 0.5
    full = K.sphere_noise(x, radius, trials=4, seed=3, stream=1, backend=backend).view(4, 5, 37)
    late = K.sphere_noise(x, radius, trials=2, seed=3, stream=1, trial0=2, backend=backend).view(2, 5, 37)
    tail = K.sphere_noise(x[2:], radius[2:], trials=4, seed=3, stream=1, sample0=2, backend=backend).view(4, 3, 37)
    torch.testing.assert_close(late, full[2:], rtol=0, atol=0)
    torch.testing.assert_close(tail, full[:, 2:], rtol=0, atol=0)
    other = K.sphere_noise(x, radius, trials=4, seed=3, stream=2, backend=backend).view(4, 5, 37)
    assert not torch.allclose(other, full)


def test_sphere_noise_channels_last_and_dtypes():
    """4-D samples take the noise in (h, w, c) order whatever their memory format; out is channels_last."""
    x = torch.randn(3, 4, 5, 6)
    radius = torch.rand(3, dtype=torch.float64) + 0.1
    out = K.sphere_noise(x, radius, trials=2, seed=4, stream=0, backend="cpu")
    cl = K.sphere_noise(x.contiguous(memory_format=torch.channels_last), radius, trials=2, seed=4, stream=0,
                        backend="cpu")
    assert out.is_contiguous(memory_format=torch.channels_last) and cl.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, cl, rtol=0, atol=0)
    # the (N, H, W, C) rows flattened are the 2-D case of the same vectors
    flat = K.sphere_noise(x.permute(0, 2, 3, 1).reshape(3, -1), radius, trials=2, seed=4, stream=0, backend="cpu")
    torch.testing.assert_close(out.permute(0, 2, 3, 1).reshape(6, -1), flat, rtol=0, atol=0)
    ref = sphere_noise_reference(x, radius, trials=2, seed=4, stream=0)
    assert _bound(out, ref, radius, 2).all()
    x64 = torch.randn(2, 9, dtype=torch.float64)
    out64 = K.sphere_noise(x64, radius[:2], trials=2, seed=4, stream=0, backend="cpu")
    ref = sphere_noise_reference(x64, radius[:2], trials=2, seed=4, stream=0)
    assert out64.dtype == torch.float64 and _bound(out64, ref, radius[:2], 2).all()
    bf = K.sphere_noise(x64.float(), radius[:2], trials=2, seed=4, stream=0, out_dtype=torch.bfloat16)
    assert bf.dtype == torch.bfloat16
    torch.testing.assert_close(bf.double(), ref, rtol=2 ** -8, atol=1e-6)


def test_cpu_kernels_do_not_depend_on_thread_count():
    if BACKENDS["cpu"].noise_module is None:
        pytest.skip("stabkern._noise is not built")
    x = torch.randn(7, 3001)
    radius = torch.rand(7, dtype=torch.float64) + 0.1
    saved = torch.get_num_threads()
    try:
        results = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            noisy = K.sphere_noise(x, radius, trials=3, seed=8, stream=2, backend="cpu")
            results.append((noisy, K.sq_error(noisy, x, backend="cpu")))
    finally:
        torch.set_num_threads(saved)
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])


@pytest.mark.parametrize("device,backend", CASES, ids=IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("shape,trials", [((1, 1), 1), ((3, 1029), 2), ((2, 3, 5, 7), 3)])
def test_sq_error_matches_reference(device, backend, dtype, shape, trials):
    if dtype == torch.float64 and backend == "triton":
        pytest.skip("the Triton error kernel reads float32/16-bit activations")
    gen = torch.Generator().manual_seed(shape[-1])
    y = torch.randn(*shape, generator=gen).to(torch.float64 if dtype == torch.float64 else torch.float32)
    y_hat = (y.repeat(trials, *[1] * (len(shape) - 1)) + 0.1 * torch.randn(trials * shape[0], *shape[1:],
                                                                           generator=gen, dtype=y.dtype)).to(dtype)
    out = K.sq_error(y_hat.to(device), y.to(device), backend=backend)
    ref = sq_error_reference(y_hat, y)
    m = y[0].numel()
    # float32 accumulation of m squares: relative error <= m 2^-24 of the sum of |terms| (all positive)
    unit = 2.0 ** -52 if dtype == torch.float64 else 2.0 ** -24
    assert out.dtype == torch.float64 and out.shape == (trials * shape[0],)
    assert ((out.cpu() - ref).abs() <= (m + 2) * unit * ref + 1e-300).all()


@pytest.mark.parametrize("formats", [("cl", "cl"), ("cl", "nchw"), ("nchw", "cl")])
def test_sq_error_mixed_memory_formats(formats):
    fmt = {"cl": torch.channels_last, "nchw": torch.contiguous_format}
    y = torch.randn(2, 3, 4, 5).contiguous(memory_format=fmt[formats[1]])
    y_hat = torch.randn(4, 3, 4, 5).contiguous(memory_format=fmt[formats[0]])
    torch.testing.assert_close(K.sq_error(y_hat, y, backend="cpu"), sq_error_reference(y_hat, y), rtol=1e-6,
                               atol=0)


def test_bad_input():
    x = torch.randn(3, 4)
    r = torch.ones(3, dtype=torch.float64)
    with pytest.raises(ValueError, match="radius"):
        K.sphere_noise(x, torch.ones(2), trials=1, seed=0, stream=0)
    with pytest.raises(ValueError, match="trials"):
        K.sphere_noise(x, r, trials=0, seed=0, stream=0)
    with pytest.raises(ValueError, match="non-empty"):
        K.sphere_noise(torch.randn(0, 4), torch.ones(0), trials=1, seed=0, stream=0)
    with pytest.raises(ValueError, match="floating"):
        K.sphere_noise(torch.ones(3, 4, dtype=torch.int64), r, trials=1, seed=0, stream=0)
    with pytest.raises(ValueError, match="stream"):
        K.sphere_noise(x, r, trials=1, seed=0, stream=2 ** 32 - 1)
    with pytest.raises(ValueError, match="seed"):
        K.sphere_noise(x, r, trials=1, seed=-1, stream=0)
    with pytest.raises(ValueError, match="sample indices"):
        K.sphere_noise(x, r, trials=1, seed=0, stream=0, sample0=2 ** 32 - 2)
    with pytest.raises(ValueError, match="backend"):
        K.sphere_noise(x, r, trials=1, seed=0, stream=0, backend="gpu")
    with pytest.raises(ValueError, match="y_hat"):
        K.sq_error(torch.randn(5, 4), x)


# --------------------------------------------------------------------------- custom ops and argument policy


@pytest.mark.parametrize("device,backend", CASES, ids=IDS)
@pytest.mark.parametrize("shape", [(3, 7), (2, 3, 4, 5)])
def test_opcheck_noise_ops(device, backend, shape):
    """Schema, fake implementation (shapes, strides: channels_last for 4-D), dispatch, as for the sign ops."""
    x = torch.randn(*shape, device=device)
    radius = torch.rand(shape[0], dtype=torch.float64, device=device) + 0.1
    torch.library.opcheck(torch.ops.stabkern.sphere_noise.default,
                          (x, radius, 2, -5, 3, 1, 2, torch.float32, backend))
    y_hat = K.sphere_noise(x, radius, trials=2, seed=1, stream=0, backend=backend)
    torch.library.opcheck(torch.ops.stabkern.sq_error.default, (y_hat, x, backend))


def test_noise_ops_compile_fullgraph():
    x = torch.randn(2, 3, 4, 5)
    radius = torch.ones(2, dtype=torch.float64)

    def f(x):
        noisy = K.sphere_noise(x, radius, trials=3, seed=7, stream=1)
        return K.sq_error(noisy, x)

    torch.testing.assert_close(torch.compile(f, fullgraph=True)(x), f(x), rtol=0, atol=0)


NOISE_POLICY = [
    (dict(trials=2.0), TypeError, "trials must be an int"),
    (dict(stream=1.0), TypeError, "stream must be an int"),
    (dict(seed=1.5), TypeError, "seed must be an int"),
    (dict(seed=True), TypeError, "seed must be an int"),
    (dict(sample0=0.0), TypeError, "sample0 must be an int"),
    (dict(trial0=False), TypeError, "trial0 must be an int"),
    (dict(stream=2**63), ValueError, "stream"),
    (dict(trials=2**63), ValueError, "trial indices"),
]


@pytest.mark.parametrize("change,error,match", NOISE_POLICY, ids=[m for _, _, m in NOISE_POLICY])
def test_noise_argument_policy(change, error, match):
    kw = dict(trials=1, seed=0, stream=0, **{k: v for k, v in change.items() if k in ("sample0", "trial0")})
    kw.update({k: v for k, v in change.items() if k not in ("sample0", "trial0")})
    with pytest.raises(error, match=match):
        K.sphere_noise(torch.randn(3, 4), torch.ones(3, dtype=torch.float64), **kw)


def test_noise_ops_refuse_sparse_and_take_numpy_ints():
    np = pytest.importorskip("numpy")
    from stabkern.backends import BackendUnavailableError

    with pytest.raises(BackendUnavailableError, match="cannot take torch.sparse_coo"):
        K.sphere_noise(torch.randn(3, 4).to_sparse(), torch.ones(3), trials=1, seed=0, stream=0)
    with pytest.raises(BackendUnavailableError, match="cannot take torch.sparse_coo"):
        K.sq_error(torch.randn(6, 4).to_sparse(), torch.randn(3, 4))
    x, r = torch.randn(3, 4), torch.ones(3, dtype=torch.float64)
    want = K.sphere_noise(x, r, trials=2, seed=5, stream=1, trial0=3)
    got = K.sphere_noise(x, r, trials=np.int64(2), seed=np.uint64(5), stream=np.int32(1), trial0=np.int8(3))
    assert torch.equal(got, want)
