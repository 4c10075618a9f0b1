"""CPU sign kernels (`stabkern._cpu`, called through the public ops with backend="cpu") against
what users get without stabkern. Rates are sign-MACs per second (rows * n * k per call); times
are medians.

Baseline, measured in the same run: numpy as a user would write it: draw the signs in chunks of
rows of S (np.random.Generator(np.random.Philox(seed)).integers(0, 2, int8) -> float32, 2 s - 1,
about 64 MiB per chunk) and matmul. For the GEMV cases the baseline runs at k = 16 (its rate per
sign-MAC does not depend on k; k = 256 would take ~6 s a round).

Ceiling: the shuffle-port bound of the table-lookup method: one vpermps per cycle per core applies
64 sign-MACs (16 rows of S x 4 columns, AVX-512) or 24 (8 x 3, AVX2), so
ceiling = threads x clock x 64 (or 24), with the clock measured by conftest.cpu_clock_ghz (scalar,
one core: an upper bound for vector code). Philox, shifts and adds compete for the other ports, so
the GEMV form cannot reach it; the figure says how much of the machine's shuffle unit is used.

Cases: GEMV projection and reconstruction at n = 512*512*9 = 2,359,296, k = 256 (the acceptance
case) with 1 and 2 threads (torch.set_num_threads; the cpu backend uses torch.get_num_threads()),
also with the AVX2 path forced (STABKERN_CPU_ISA=avx2) for machines without AVX-512; GEMM form
512 x 4608 (a 512x512x3x3 conv's filters), k = 4096, with 1 and 2 threads.

    PYTHONPATH=. python -m pytest benchmarks/bench_sign_cpu.py -q
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

import stabkern

_cpu = pytest.importorskip("stabkern._cpu", reason="stabkern._cpu is not built")

GEMV = dict(rows=1, n=2_359_296, k=256)
GEMM = dict(rows=512, n=4608, k=4096)
GEMV_BASELINE_K = 16
SIGN_MACS_PER_VPERMPS = {"avx512": 64, "avx2": 24}
SEED = 2024
BASELINE_RATES: dict[str, float] = {}
RATES: dict[tuple, float] = {}


def numpy_project(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    """y = x S^T with S drawn in row chunks by numpy; x: (rows, n) float32 -> (rows, k)."""
    rng = np.random.Generator(np.random.Philox(seed))
    rows, n = x.shape
    step = max(1, (1 << 24) // n)
    y = np.empty((rows, k), np.float32)
    for t in range(0, k, step):
        s = rng.integers(0, 2, size=(min(step, k - t), n), dtype=np.int8).astype(np.float32)
        s *= 2
        s -= 1
        y[:, t:t + step] = x @ s.T
    return y


def numpy_reconstruct(y: np.ndarray, n: int, seed: int) -> np.ndarray:
    """x_hat = y S / k with S drawn in row chunks by numpy; y: (rows, k) float32 -> (rows, n)."""
    rng = np.random.Generator(np.random.Philox(seed))
    rows, k = y.shape
    step = max(1, (1 << 24) // n)
    out = np.zeros((rows, n), np.float32)
    for t in range(0, k, step):
        s = rng.integers(0, 2, size=(min(step, k - t), n), dtype=np.int8).astype(np.float32)
        s *= 2
        s -= 1
        out += y[:, t:t + step] @ s
    return out / k


def _median(benchmark) -> float | None:
    return None if benchmark.disabled else benchmark.stats.stats.median


@pytest.fixture
def threads():
    """Restores torch's thread count after a case changes it."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


CASES = {
    "gemv project": (GEMV, "project"),
    "gemv reconstruct": (GEMV, "reconstruct"),
    "gemm project": (GEMM, "project"),
    "gemm reconstruct": (GEMM, "reconstruct"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_baseline_numpy(benchmark, bench_report, threads, case):
    shape, op = CASES[case]
    rows, n, k = shape["rows"], shape["n"], shape["k"]
    if rows == 1:
        k = GEMV_BASELINE_K
    threads(min(2, os.cpu_count() or 1))
    rng = np.random.default_rng(0)
    if op == "project":
        x = rng.standard_normal((rows, n), dtype=np.float32)
        benchmark.pedantic(numpy_project, args=(x, k, SEED), rounds=3, iterations=1, warmup_rounds=0)
    else:
        y = rng.standard_normal((rows, k), dtype=np.float32)
        benchmark.pedantic(numpy_reconstruct, args=(y, n, SEED), rounds=3, iterations=1, warmup_rounds=0)
    median = _median(benchmark)
    if median is not None:
        row = bench_report("cpu").add(case, shape=(rows, n, k), dtype=torch.float32, backend="numpy materialized",
                                      median_s=median, work=rows * n * k, threads=torch.get_num_threads(),
                                      isa="-")
        BASELINE_RATES[case] = row["rate"]


def _isas():
    best = _cpu.available_isas()[-1]
    return [best] + (["avx2"] if best == "avx512" else [])


@pytest.mark.parametrize("n_threads", (1, 2))
@pytest.mark.parametrize("isa", _isas())
@pytest.mark.parametrize("case", list(CASES))
def test_stabkern_cpu(benchmark, bench_report, cpu_clock, threads, monkeypatch, case, isa, n_threads):
    shape, op = CASES[case]
    rows, n, k = shape["rows"], shape["n"], shape["k"]
    if isa != _cpu.available_isas()[-1] and rows > 1:
        pytest.skip("the forced AVX2 path is shown on the GEMV cases only")
    if n_threads > (os.cpu_count() or 1):
        pytest.skip(f"this machine has {os.cpu_count()} CPUs")
    monkeypatch.setenv("STABKERN_CPU_ISA", isa)
    threads(n_threads)
    gen = torch.Generator().manual_seed(0)
    if op == "project":
        x = torch.randn(rows, n, generator=gen)
        fn = lambda: stabkern.sign_project(x, k, seed=SEED, backend="cpu")  # noqa: E731
    else:
        y = torch.randn(rows, k, generator=gen)
        fn = lambda: stabkern.sign_reconstruct(y, n, seed=SEED, backend="cpu")  # noqa: E731
    benchmark.pedantic(fn, rounds=7 if rows == 1 else 5, iterations=1, warmup_rounds=1)
    median = _median(benchmark)
    if median is None:
        return
    clock = cpu_clock["ghz"]
    ceiling = n_threads * clock * SIGN_MACS_PER_VPERMPS[isa] if clock and isa in SIGN_MACS_PER_VPERMPS else None
    report = bench_report("cpu")
    row = report.add(case, shape=(rows, n, k), dtype=torch.float32, backend="stabkern cpu", median_s=median,
                     work=rows * n * k, baseline_rate=BASELINE_RATES.get(case), ceiling_rate=ceiling,
                     threads=n_threads, isa=isa)
    RATES[(case, isa, n_threads)] = row["rate"]
    one = RATES.get((case, isa, 1))
    if n_threads == 2 and one:
        report.notes[f"scaling 1 -> 2 threads, {case}, {isa}"] = f"{row['rate'] / one:.2f}x"
    report.notes["ceiling"] = ("threads x clock x sign-MACs per vpermps (64 AVX-512, 24 AVX2); clock "
                               f"{clock} GHz: {cpu_clock['how']}")
    report.notes["baseline"] = (f"numpy Philox int8 -> float32 sign chunks + matmul; GEMV baseline at k = "
                                f"{GEMV_BASELINE_K}")
