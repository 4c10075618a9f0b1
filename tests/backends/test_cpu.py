"""The C++ kernels of `stabkern._cpu` against `stabkern.reference`, on every instruction-set path
this machine can run (STABKERN_CPU_ISA forces each).

Tolerances come from fp32 rounding in the kernels' summation order (csrc/cpu/sign_kernels.cpp):
a projection output is a chain of at most 171 fp32 additions of table entries (each a sum of 3 or
4 columns) per 512-column chunk, chunks added in double, so |y - y_ref| <= gamma_d * sum|x| +
u * |y_ref| with d = min(n, 512) / 3 + 8 and gamma_d ~ d * u (Higham, Accuracy and Stability of
Numerical Algorithms, 4.2). Reconstruction chains at most 256 additions per chunk of rows of S.
The GEMM-form FMA kernels (csrc/cpu/sign/sign_gemm.h, float32 on the AVX2 and AVX-512 paths) chain
at most 128 fmas by +-1 (each rounds like one addition) per chunk of 128 columns (projection) or
rows of S (reconstruction), chunks added in double: chain = min(n or k, 128) + 1, the + 1 covering
the double sum of at most 2^32 / 128 chunk partials (2^25 * 2^-53 < 2^-24).
The GEMM-form LUT kernel (csrc/cpu/sign/sign_lut.h, float32 on the AVX2 path, and on the AVX-512
path when forced) chains, per chunk of 128, at most 32 fp32 additions of table entries, each entry
((+-a0 +-a1) +-a2) +-a3 three additions deep: every term passes through at most 3 + ceil(len / 4)
roundings per chunk (len = n or k, at most 128), + 1 for the double sums of the chunk partials
(in spans of 64 chunks, then the span sums).
"""

from __future__ import annotations

import os

import pytest
import torch

from helpers.memory import linux_only, peak_run
from stabkern.backends import reference

_cpu = pytest.importorskip("stabkern._cpu", reason="stabkern._cpu is not built")

ISAS = ("generic", "avx2", "avx512")
DTYPES = (torch.float32, torch.float64)
UNIT_ROUNDOFF = {torch.float32: 2.0 ** -24, torch.float64: 2.0 ** -53}


@pytest.fixture(params=ISAS)
def isa(request, monkeypatch):
    """Each instruction-set path this CPU supports, forced through STABKERN_CPU_ISA."""
    if request.param not in _cpu.available_isas():
        pytest.skip(f"this CPU cannot run the {request.param} path")
    monkeypatch.setenv("STABKERN_CPU_ISA", request.param)
    assert _cpu.isa() == request.param
    return request.param


@pytest.fixture(params=("table", "fma", "lut"))
def kernel(request, monkeypatch):
    """Each float32 kernel family, forced through STABKERN_CPU_KERNEL (the generic path has only "table")."""
    monkeypatch.setenv("STABKERN_CPU_KERNEL", request.param)
    return request.param


@pytest.fixture(params=("avx2 fma", "avx512 fma", "avx2 lut 8", "avx2 lut 16", "avx512 lut"))
def gemm_path(request, monkeypatch):
    """The paths with GEMM-form kernels (FMA, LUT; on AVX2 both LUT kernels, 8- and 16-row tables,
    forced through STABKERN_CPU_LUT_ROWS), each forced for any row count; returns the family."""
    isa, family, *lut_rows = request.param.split()
    if isa not in _cpu.available_isas():
        pytest.skip(f"this CPU cannot run the {isa} path")
    monkeypatch.setenv("STABKERN_CPU_ISA", isa)
    monkeypatch.setenv("STABKERN_CPU_KERNEL", family)
    if lut_rows:
        monkeypatch.setenv("STABKERN_CPU_LUT_ROWS", lut_rows[0])
    assert _cpu.kernel("project", 1) == _cpu.kernel("reconstruct", 1) == family
    return family


def cpu_project(x, k, seed, stream=0, t0=0, j0=0, threads=2):
    rows, n = x.shape
    y = torch.empty(rows, k, dtype=x.dtype)
    fn = _cpu.project_f64 if x.dtype == torch.float64 else _cpu.project_f32
    fn(x.data_ptr(), y.data_ptr(), rows, n, k, seed, stream, t0, j0, threads)
    return y


def cpu_reconstruct(y, n, scale, seed, stream=0, t0=0, j0=0, threads=2):
    rows, k = y.shape
    out = torch.empty(rows, n, dtype=y.dtype)
    fn = _cpu.reconstruct_f64 if y.dtype == torch.float64 else _cpu.reconstruct_f32
    fn(y.data_ptr(), out.data_ptr(), rows, n, k, scale, seed, stream, t0, j0, threads)
    return out


def assert_close_to_reference(got, ref, abs_terms, chain):
    """|got - ref| <= gamma_chain * abs_terms + u |ref| elementwise, in got's precision.

    abs_terms: (rows, 1) sums of |terms| entering each output; chain: fp additions per output.
    """
    u = UNIT_ROUNDOFF[got.dtype]
    bound = (chain * u / (1 - chain * u)) * abs_terms + u * ref.abs()
    err = (got.double() - ref).abs()
    worst = (err - bound).max().item()
    assert worst <= 0, f"error {err.max().item():.3e} exceeds the rounding bound by {worst:.3e}"


def projection_chain(n):
    return min(n, 512) // 3 + 8


# ----------------------------------------------------------------------------- Philox


def test_philox_known_answer_vectors():
    """Random123's kat_vectors for philox4x32_10 (docs/spec.md, section 1)."""
    assert _cpu.philox4x32_10(0, 0, 0, 0, 0, 0) == (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)
    m = 0xFFFFFFFF
    assert _cpu.philox4x32_10(m, m, m, m, m, m) == (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)
    assert _cpu.philox4x32_10(0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344, 0xA4093822, 0x299F31D0) == (
        0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)


# ----------------------------------------------------------------------------- exact signs


def test_unit_vectors_give_the_sign_matrix_exactly(isa, kernel):
    """Projecting the identity gives S^T and reconstructing it gives S, bit for bit (sums of one +-1
    and zeros are exact), across group, chunk, panel and row-block boundaries."""
    n, k, seed, stream = 600, 530, 2**63 + 12345, 7
    s = reference.sign_block(seed, stream, 0, k, 0, n, dtype=torch.float32)
    assert torch.equal(cpu_project(torch.eye(n), k, seed, stream), s.T)
    assert torch.equal(cpu_reconstruct(torch.eye(k), n, 1.0, seed, stream), s)


# ----------------------------------------------------------------------------- against the reference


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n", (1, 31, 32, 127, 128, 129, 1000, 4099))
def test_project_odd_sizes(isa, dtype, n):
    gen = torch.Generator().manual_seed(n)
    for i, k in enumerate((1, 7, 33, 100)):
        rows = 1 + (n + i) % 5
        x = torch.randn(rows, n, generator=gen, dtype=dtype)
        seed = int(torch.randint(0, 2**62, (), generator=gen))
        y = cpu_project(x, k, seed, stream=i)
        assert y.shape == (rows, k) and y.dtype == dtype
        ref = reference.project(x, k, seed, i)
        assert_close_to_reference(y, ref, x.double().abs().sum(1, keepdim=True), projection_chain(n))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n", (1, 31, 32, 127, 128, 129, 1000, 4099))
def test_reconstruct_odd_sizes(isa, dtype, n):
    gen = torch.Generator().manual_seed(1000 + n)
    for i, k in enumerate((1, 7, 33, 100)):
        rows = 1 + (n + i) % 5
        y = torch.randn(rows, k, generator=gen, dtype=dtype)
        seed = int(torch.randint(0, 2**62, (), generator=gen))
        scale = 1.0 / k
        out = cpu_reconstruct(y, n, scale, seed, stream=i)
        assert out.shape == (rows, n) and out.dtype == dtype
        ref = reference.reconstruct(y, n, seed, i, scale)
        assert_close_to_reference(out, ref, scale * y.double().abs().sum(1, keepdim=True), min(k, 256) + 3)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_gemm_form(isa, dtype):
    """Many rows: several row panels (32 rows) and blocks of S rows (512), and more than 256 rows of
    S per reconstruction chunk."""
    gen = torch.Generator().manual_seed(5)
    rows, n, k, seed = 37, 1100, 600, 99
    x = torch.randn(rows, n, generator=gen, dtype=dtype)
    ref = reference.project(x, k, seed, 3)
    assert_close_to_reference(cpu_project(x, k, seed, 3), ref, x.double().abs().sum(1, keepdim=True),
                              projection_chain(n))
    y = torch.randn(rows, k, generator=gen, dtype=dtype)
    ref = reference.reconstruct(y, n, seed, 3, 0.25)
    assert_close_to_reference(cpu_reconstruct(y, n, 0.25, seed, 3), ref,
                              0.25 * y.double().abs().sum(1, keepdim=True), 256 + 3)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_counter_offsets_at_the_ends_of_the_ranges(isa, dtype):
    """Rows t0 + t up to 2^32 - 1 (the padded Philox lanes past them wrap) and columns from 2^37."""
    gen = torch.Generator().manual_seed(11)
    k, n, rows = 37, 300, 3
    t0, j0, seed = 2**32 - k, 2**37, 2**64 - 1
    x = torch.randn(rows, n, generator=gen, dtype=dtype)
    ref = reference.project(x, k, seed, 2**32 - 1, t0, j0)
    assert_close_to_reference(cpu_project(x, k, seed, 2**32 - 1, t0, j0), ref,
                              x.double().abs().sum(1, keepdim=True), projection_chain(n))
    y = torch.randn(rows, k, generator=gen, dtype=dtype)
    ref = reference.reconstruct(y, n, seed, 2**32 - 1, 1.0, t0, j0)
    assert_close_to_reference(cpu_reconstruct(y, n, 1.0, seed, 2**32 - 1, t0, j0), ref,
                              y.double().abs().sum(1, keepdim=True), min(k, 256) + 3)


def test_long_all_positive_vector_stays_accurate(isa):
    """n = 512*512*9 all-positive entries (|y| ~ sqrt(n) while sum |x| ~ n): one fp32 chain over
    the whole row loses 3.8e-6 of |y| here; 512-column fp32 chunks added in double give 2.3e-7."""
    n, k = 2_359_296, 5
    x = torch.rand(1, n, generator=torch.Generator().manual_seed(3))
    ref = reference.project(x, k, 2024, 0)
    rel = ((cpu_project(x, k, 2024).double() - ref).norm() / ref.norm()).item()
    assert rel < 1e-6


# ----------------------------------------------------------------------------- determinism


def test_bitwise_identical_for_any_thread_count(isa):
    """Same bits run to run and for 1, 2, 3 threads, in both work splits: one long vector (threads
    split the columns) and many rows (threads split rows; 3 units, so 1 thread takes this split and
    2 and 3 threads the column split)."""
    gen = torch.Generator().manual_seed(8)
    cases = [(1, 70_001, 40), (70, 70_001, 40)]
    for rows, n, k in cases:
        x = torch.randn(rows, n, generator=gen)
        runs = [cpu_project(x, k, 5, threads=t) for t in (1, 2, 3, 2)]
        assert all(torch.equal(runs[0], r) for r in runs[1:]), (rows, n, k)
    y = torch.randn(3, 600, generator=gen)
    runs = [cpu_reconstruct(y, 5000, 0.5, 5, threads=t) for t in (1, 2, 3, 3)]
    assert all(torch.equal(runs[0], r) for r in runs[1:])


def test_bitwise_identical_across_waves_of_spans():
    """A vector long enough that the column split buffers its span sums in two waves (3 threads,
    5 units of 512 rows of S): the same bits as one thread sweeping every span in order."""
    n, k = 1_800_000, 2560
    x = torch.randn(1, n, generator=torch.Generator().manual_seed(9))
    assert torch.equal(cpu_project(x, k, 77, threads=1), cpu_project(x, k, 77, threads=3))


# ----------------------------------------------------------------------------- quad-table reconstruction


def quad_order_reconstruct(y, n, scale, seed, stream, t0=0, j0=0):
    """The summation order of the SIMD table kernels' reconstruction (kernel_contract.h), evaluated in
    float32 with torch: per chunk of 256 rows of S, one fp32 chain per output from 0 adding, quad by quad,
    the entry ((s0 y0 + s1 y1) + s2 y2) + s3 y3 of its 4 rows (y = 0 past k); chunk partials summed in
    double in order, times scale in double."""
    rows, k = y.shape
    s = reference.sign_block(seed, stream, t0, k, j0, n, dtype=torch.float32)
    total = torch.zeros(rows, n, dtype=torch.float64)
    for c0 in range(0, k, 256):
        chain = torch.zeros(rows, n)
        for a in range(c0, min(c0 + 256, k), 4):
            entry = None
            for t in range(a, a + 4):
                term = s[t] * y[:, t:t + 1] if t < k else torch.zeros(rows, n)
                entry = term if entry is None else entry + term
            chain = chain + entry
        total += chain.double()
    return (scale * total).float()


@pytest.mark.parametrize("rows", (1, 2, 3, 5, 7, 8))
def test_table_reconstruction_sums_quads_in_order(isa, monkeypatch, rows):
    """The SIMD table kernels (AVX2, AVX-512) reconstruct by 16-entry tables of 4 rows of S: the same
    bits as the quad order evaluated in torch, for every row tile (8, 4, 2, 1 and their sums), k not a
    multiple of 4 or 8, across chunks of 256 rows, with row and column offsets (rows past 2^32 - 1 wrap)."""
    if isa == "generic":
        pytest.skip("the generic kernel adds +-y[t] row by row (exact terms), not quads")
    monkeypatch.setenv("STABKERN_CPU_KERNEL", "table")
    gen = torch.Generator().manual_seed(rows)
    for i, (n, k, t0, j0) in enumerate([(1, 1, 0, 0), (7, 3, 0, 0), (129, 5, 4, 128), (100, 37, 2**32 - 37, 2**37),
                                        (300, 258, 1000, 0), (64, 515, 3, 256)]):
        y = torch.randn(rows, k, generator=gen)
        seed = int(torch.randint(0, 2**62, (), generator=gen))
        got = cpu_reconstruct(y, n, 0.5, seed, i, t0, j0)
        assert torch.equal(got, quad_order_reconstruct(y, n, 0.5, seed, i, t0, j0)), (n, k, t0, j0)


# ----------------------------------------------------------------------------- GEMM-form FMA kernels


def fma_chain(length):
    """fp32 additions per output of the FMA kernels: one 128-long chain per chunk, chunks in double."""
    return min(length, 128) + 1


def lut_chain(length):
    """fp32 roundings any term of an output of the LUT kernel passes through: 3 inside its table entry,
    one per quad of the chunk's chain (at most 32), 1 for the double sum of the chunk partials."""
    return 3 + (min(length, 128) + 3) // 4 + 1


GEMM_CHAIN = {"fma": fma_chain, "lut": lut_chain}


def check_both_directions(x, y, k, n, seed, stream, t0=0, j0=0, threads=2, scale=0.5, family="fma"):
    """Project x (rows, n) and reconstruct y (rows, k) with the kernels chosen now; compare to the reference
    with the bound of the GEMM family for float32 and the table kernels' bound for float64 (always the
    generic path)."""
    fma = x.dtype == torch.float32
    gemm_chain = GEMM_CHAIN[family]
    ref = reference.project(x, k, seed, stream, t0, j0)
    got = cpu_project(x, k, seed, stream, t0, j0, threads)
    assert got.shape == ref.shape and got.dtype == x.dtype
    assert_close_to_reference(got, ref, x.double().abs().sum(1, keepdim=True),
                              gemm_chain(n) if fma else projection_chain(n))
    ref = reference.reconstruct(y, n, seed, stream, scale, t0, j0)
    got = cpu_reconstruct(y, n, scale, seed, stream, t0, j0, threads)
    assert got.shape == ref.shape and got.dtype == y.dtype
    assert_close_to_reference(got, ref, scale * y.double().abs().sum(1, keepdim=True),
                              gemm_chain(k) if fma else min(k, 256) + 3)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("rows", (1, 2, 3, 4, 5, 6, 7, 8, 9, 137))
def test_gemm_kernels_odd_sizes(gemm_path, dtype, rows):
    """Every micro-kernel row count (FMA: 1..6 and tails of 7..9; LUT: row blocks of 8 and their
    tails), two row panels (137 > 128); n and k not multiples of 128, of the strip (16 or 64), of
    the quad (4), of the register width or of the LUT pass (8 columns), across column blocks (256
    FMA, 512 LUT) in both directions."""
    gen = torch.Generator().manual_seed(rows)
    shapes = ([(1, 1), (100, 17), (301, 63), (130, 601)] if rows > 9 else
              [(1, 1), (100, 17), (129, 65), (301, 63), (1000, 300), (66, 1030)])
    for i, (n, k) in enumerate(shapes):
        x = torch.randn(rows, n, generator=gen, dtype=dtype)
        y = torch.randn(rows, k, generator=gen, dtype=dtype)
        check_both_directions(x, y, k, n, seed=int(torch.randint(0, 2**62, (), generator=gen)), stream=i,
                              family=gemm_path)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_gemm_kernels_counter_offsets(gemm_path, dtype):
    """Row offsets t0 (also up to 2^32 - 1, where the expanded padding rows wrap) and column offsets j0
    (multiples of 128, up to 2^37)."""
    gen = torch.Generator().manual_seed(21)
    for rows, n, k, t0, j0 in [(11, 260, 70, 1000, 128), (7, 300, 37, 2**32 - 37, 2**37), (40, 500, 300, 5, 384)]:
        x = torch.randn(rows, n, generator=gen, dtype=dtype)
        y = torch.randn(rows, k, generator=gen, dtype=dtype)
        check_both_directions(x, y, k, n, seed=2**64 - 1 - rows, stream=2**32 - 1, t0=t0, j0=j0, family=gemm_path)


def test_gemm_kernels_bitwise_identical_for_any_thread_count(gemm_path):
    """2 row panels x 2 or 3 column blocks of units, taken by 1, 2 or 3 threads: the same bits."""
    gen = torch.Generator().manual_seed(12)
    rows, n, k = 137, 1100, 600
    x, y = torch.randn(rows, n, generator=gen), torch.randn(rows, k, generator=gen)
    runs = [cpu_project(x, k, 8, threads=t) for t in (1, 2, 3, 2)]
    assert all(torch.equal(runs[0], r) for r in runs[1:])
    runs = [cpu_reconstruct(y, n, 0.25, 8, threads=t) for t in (1, 2, 3, 3)]
    assert all(torch.equal(runs[0], r) for r in runs[1:])


@pytest.mark.parametrize("path", ("avx2 8", "avx2 16", "avx512 16"))
def test_lut_kernel_long_reduction_axis_splits_spans(monkeypatch, path):
    """A long reduction axis (several spans of 64 chunks) with few units: threads take (unit, span)
    tasks, span sums added in span order; the same bits as 1 thread sweeping whole units (2 units:
    1 thread takes the unit split, 2 and 3 threads the span split), within the LUT bound."""
    isa, lut_rows = path.split()
    if isa not in _cpu.available_isas():
        pytest.skip(f"this CPU cannot run the {isa} path")
    monkeypatch.setenv("STABKERN_CPU_ISA", isa)
    monkeypatch.setenv("STABKERN_CPU_KERNEL", "lut")
    monkeypatch.setenv("STABKERN_CPU_LUT_ROWS", lut_rows if isa == "avx2" else "")
    gen = torch.Generator().manual_seed(14)
    for rows, n, k in [(137, 20_000, 40), (9, 70_001, 24)]:
        x = torch.randn(rows, n, generator=gen)
        runs = [cpu_project(x, k, 6, stream=1, threads=t) for t in (1, 2, 3)]
        assert all(torch.equal(runs[0], r) for r in runs[1:]), (rows, n, k)
        assert_close_to_reference(runs[0], reference.project(x, k, 6, 1), x.double().abs().sum(1, keepdim=True),
                                  lut_chain(n))
    y = torch.randn(10, 17_000, generator=gen)
    runs = [cpu_reconstruct(y, 300, 0.5, 6, stream=1, threads=t) for t in (1, 2, 3)]
    assert all(torch.equal(runs[0], r) for r in runs[1:])
    assert_close_to_reference(runs[0], reference.reconstruct(y, 300, 6, 1, 0.5),
                              0.5 * y.double().abs().sum(1, keepdim=True), lut_chain(17_000))


@pytest.mark.parametrize("family", ("fma", "lut"))
def test_gemm_kernels_same_bits_on_avx2_and_avx512(monkeypatch, family):
    """Each GEMM family follows one summation order on both paths (sign_gemm.h, sign_lut.h), so they
    agree bit for bit: FMA on AVX2 and AVX-512; LUT with 8- and 16-row tables on AVX2 and on AVX-512.
    Skipped where this CPU runs fewer than two of the paths (FMA on an AVX2-only CPU)."""
    runs = [("avx2", "8"), ("avx2", "16"), ("avx512", "")] if family == "lut" else [("avx2", ""), ("avx512", "")]
    runs = [(isa, lut_rows) for isa, lut_rows in runs if isa in _cpu.available_isas()]
    if len(runs) < 2:
        pytest.skip(f"this CPU runs {len(runs)} of the {family} paths; nothing to compare")
    monkeypatch.setenv("STABKERN_CPU_KERNEL", family)
    gen = torch.Generator().manual_seed(13)
    x, y = torch.randn(45, 777, generator=gen), torch.randn(45, 300, generator=gen)
    got = []
    for isa, lut_rows in runs:
        monkeypatch.setenv("STABKERN_CPU_ISA", isa)
        monkeypatch.setenv("STABKERN_CPU_LUT_ROWS", lut_rows)
        got.append((cpu_project(x, 300, 4, stream=2), cpu_reconstruct(y, 777, 0.5, 4, stream=2)))
    assert all(torch.equal(a, b) for g in got[1:] for a, b in zip(got[0], g))


def test_kernel_choice(monkeypatch):
    """Auto: the LUT kernel on the AVX2 path from 8 rows in both directions and for AVX-512
    reconstruction from 32 rows, the table kernels otherwise; STABKERN_CPU_KERNEL forces one except
    on the generic path; the AVX2 LUT table height by rows and the L1 data cache (lut16() in sign_kernels.cpp)."""
    monkeypatch.delenv("STABKERN_CPU_KERNEL", raising=False)
    monkeypatch.setenv("STABKERN_CPU_ISA", "generic")
    assert _cpu.kernel("project", 512) == _cpu.kernel("reconstruct", 512) == "table"
    monkeypatch.setenv("STABKERN_CPU_KERNEL", "fma")
    assert _cpu.kernel("reconstruct", 512) == "table"
    monkeypatch.setenv("STABKERN_CPU_ISA", "avx2")
    assert _cpu.kernel("project", 1) == "fma"
    monkeypatch.setenv("STABKERN_CPU_KERNEL", "lut")
    assert _cpu.kernel("project", 1) == "lut"
    monkeypatch.setenv("STABKERN_CPU_KERNEL", "table")
    assert _cpu.kernel("reconstruct", 512) == "table"
    monkeypatch.setenv("STABKERN_CPU_KERNEL", "auto")
    for op in ("project", "reconstruct"):
        assert _cpu.kernel(op, 7) == "table" and _cpu.kernel(op, 8) == _cpu.kernel(op, 512) == "lut"
    if "avx512" in _cpu.available_isas():
        monkeypatch.setenv("STABKERN_CPU_ISA", "avx512")
        assert _cpu.kernel("project", 512) == _cpu.kernel("reconstruct", 31) == "table"
        assert _cpu.kernel("reconstruct", 32) == "lut"
    monkeypatch.setenv("STABKERN_CPU_ISA", "avx2")
    # 16-row tables from 32 rows where the L1 data cache holds them (>= 48 KiB), 8 rows otherwise, at any
    # thread count (csrc/README.md: on a 32 KiB L1 the two heights are equal within noise)
    l1d = os.sysconf("SC_LEVEL1_DCACHE_SIZE") if "SC_LEVEL1_DCACHE_SIZE" in os.sysconf_names else 0
    big = 16 if l1d >= 48 * 1024 else 8
    assert _cpu.lut_rows(8) == _cpu.lut_rows(31) == 8 and _cpu.lut_rows(32) == _cpu.lut_rows(512) == big
    monkeypatch.setenv("STABKERN_CPU_LUT_ROWS", "16")
    assert _cpu.lut_rows(8) == 16
    monkeypatch.setenv("STABKERN_CPU_LUT_ROWS", "12")
    with pytest.raises(ValueError, match="STABKERN_CPU_LUT_ROWS must be"):
        cpu_project(torch.zeros(40, 8), 4, 0)
    monkeypatch.delenv("STABKERN_CPU_LUT_ROWS")
    monkeypatch.setenv("STABKERN_CPU_KERNEL", "gemm")
    with pytest.raises(ValueError, match="STABKERN_CPU_KERNEL must be"):
        _cpu.kernel("project", 512)
    with pytest.raises(ValueError, match="STABKERN_CPU_KERNEL must be"):
        cpu_project(torch.zeros(40, 8), 4, 0)
    monkeypatch.delenv("STABKERN_CPU_KERNEL")
    with pytest.raises(ValueError, match="op must be"):
        _cpu.kernel("matmul", 512)


# ----------------------------------------------------------------------------- IEEE special values


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_nan_and_inf_propagate(isa, kernel, dtype):
    n, k, seed = 300, 40, 17
    s = reference.sign_block(seed, 0, 0, k, 0, n, dtype=dtype)
    gen = torch.Generator().manual_seed(1)

    x = torch.randn(3, n, generator=gen, dtype=dtype)
    x[0, 200] = float("inf")  # y[0, t] = S[t, 200] * inf
    x[1, 5] = float("nan")  # y[1, :] = nan
    x[2, 10], x[2, 250] = float("inf"), float("-inf")  # inf - inf = nan where S agrees, else +-inf
    y = cpu_project(x, k, seed)
    assert torch.equal(y[0], s[:, 200] * float("inf"))
    assert y[1].isnan().all()
    same = s[:, 10] == s[:, 250]
    assert y[2][same].isnan().all()
    assert torch.equal(y[2][~same], s[:, 10][~same] * float("inf"))

    yy = torch.randn(2, k, generator=gen, dtype=dtype)
    yy[0, 33] = float("-inf")
    yy[1, 0] = float("nan")
    out = cpu_reconstruct(yy, n, 0.5, seed)
    assert torch.equal(out[0], -s[33] * float("inf"))
    assert out[1].isnan().all()


# ----------------------------------------------------------------------------- through the public op


def test_public_op_uses_the_cpu_kernels():
    import stabkern

    x = torch.randn(2, 3, 515, generator=torch.Generator().manual_seed(4))
    y = stabkern.sign_project(x, 70, seed=3, stream=1, backend="cpu")
    ref = reference.project(x.reshape(-1, 515), 70, 3, 1).reshape(2, 3, 70)
    abs_x = x.reshape(6, -1).double().abs().sum(1, keepdim=True)
    assert_close_to_reference(y.reshape(6, 70), ref.reshape(6, 70), abs_x, projection_chain(515))
    out = stabkern.sign_reconstruct(y, 515, seed=3, stream=1, backend="cpu")
    ref = reference.reconstruct(y.reshape(6, 70), 515, 3, 1, 1 / 70).reshape(2, 3, 515)
    assert_close_to_reference(out.reshape(6, 515), ref.reshape(6, 515),
                              y.reshape(6, 70).double().abs().sum(1, keepdim=True) / 70, 73)


@linux_only
def test_memory_stays_linear_in_n_plus_k():
    """Projecting n = 2^22 onto k = 256 rows (S would be 4 GiB in fp32) raises the peak RSS of a
    fresh process by scratch only, not by anything of size k * n (peak: tests/helpers/memory.py)."""
    fields = peak_run("""
        import torch, stabkern
        n, k = 1 << 22, 256
        x = torch.randn(n)
        stabkern.sign_project(x[:4096], 8, seed=0, backend="cpu")  # load the op machinery and threads
        before = reset_peak()
        y = stabkern.sign_project(x, k, seed=1, backend="cpu")
        project_growth = status_mib("VmHWM") - before
        before = reset_peak()
        out = stabkern.sign_reconstruct(y, n, seed=1, backend="cpu")  # its output is 16 MiB
        reconstruct_growth = status_mib("VmHWM") - before
        before = reset_peak()
        control = torch.ones(16 << 20)  # 64 MiB: the measurement must see it
        control_growth = status_mib("VmHWM") - before
        print(project_growth, reconstruct_growth, control_growth, bool(out.isfinite().all()))
    """, timeout=120)
    project_growth, reconstruct_growth, control_growth, finite = fields
    assert float(control_growth) > 60, fields
    assert float(project_growth) < 32, fields
    assert float(reconstruct_growth) < 16 + 32, fields
    assert finite == "True"


# ----------------------------------------------------------------------------- bad calls


def test_binding_rejects_bad_arguments():
    x = torch.zeros(4, 256)
    y = torch.zeros(4, 8)
    p, q = x.data_ptr(), y.data_ptr()
    good = dict(rows=4, n=256, k=8, seed=1, stream=0, t0=0, j0=0, threads=1)
    bad = [
        (dict(rows=0), "rows, n and k must be >= 1"),
        (dict(n=-1), "rows, n and k must be >= 1"),
        (dict(k=0), "rows, n and k must be >= 1"),
        (dict(t0=2**32 - 7), "exceed the counter range"),
        (dict(j0=2**38 - 128), "exceed the counter range"),
        (dict(j0=64), "multiple of 128"),
        (dict(threads=-1), "num_threads"),
    ]
    for change, message in bad:
        a = {**good, **change}
        args = (a["rows"], a["n"], a["k"], a["seed"], a["stream"], a["t0"], a["j0"], a["threads"])
        with pytest.raises(ValueError, match=message):
            _cpu.project_f32(p, q, *args)
        with pytest.raises(ValueError, match=message):
            _cpu.reconstruct_f32(q, p, *args[:3], 1.0, *args[3:])
    with pytest.raises(ValueError, match="null data address"):
        _cpu.project_f32(0, q, 4, 256, 8, 1, 0, 0, 0, 1)
    with pytest.raises(ValueError, match="scale must be finite"):
        _cpu.reconstruct_f32(q, p, 4, 256, 8, float("nan"), 1, 0, 0, 0, 1)
    with pytest.raises(TypeError):
        _cpu.project_f32(p, q, 4, 256, 8, -1, 0, 0, 0, 1)  # seeds are unsigned 64-bit


def test_isa_override(monkeypatch):
    paths = _cpu.available_isas()
    assert paths[0] == "generic" and set(paths) <= set(ISAS)
    monkeypatch.delenv("STABKERN_CPU_ISA", raising=False)
    assert _cpu.isa() == paths[-1]
    monkeypatch.setenv("STABKERN_CPU_ISA", "sse9")
    with pytest.raises(ValueError, match="STABKERN_CPU_ISA must be"):
        _cpu.isa()
    with pytest.raises(ValueError, match="STABKERN_CPU_ISA must be"):
        cpu_project(torch.zeros(1, 8), 4, 0)
    for name in ISAS:
        if name not in paths:
            monkeypatch.setenv("STABKERN_CPU_ISA", name)
            with pytest.raises(ValueError, match="supports only up to"):
                _cpu.isa()
