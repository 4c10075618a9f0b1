"""CPU sign kernels (`stabkern._cpu`, called through the public ops with backend="cpu") against
what users get without stabkern. Rates are sign-MACs per second (rows * n * k per call); times
are medians. Results: benchmarks/results/sign-cpu-<date>.json (see conftest.py).

Baseline, measured in the same run: numpy as a user would write it: draw the signs in chunks of
rows of S (np.random.Generator(np.random.Philox(seed)).integers(0, 2, int8) -> float32, 2 s - 1,
about 64 MiB per chunk) and matmul. For the GEMV cases the baseline runs at k = 16 (its rate per
sign-MAC does not depend on k; k = 256 would take ~6 s a round).

Two baselines. numpy's OpenBLAS (DYNAMIC_ARCH) picks its kernels for the CPU it loads on: on an
AVX-512 machine its SkylakeX kernels, also when stabkern's path is forced to AVX2. So the baseline
runs twice: in this process with OpenBLAS's own choice (the core type is read back through
threadpoolctl and written in the notes), and in a subprocess with OPENBLAS_CORETYPE=Haswell (its
AVX2 kernels, what an AVX2-only CPU such as the AMD EPYC of issue 11 runs; OpenBLAS reads the
variable when it loads, so only a fresh process can take it; the subprocess checks the core type it
got and the case is skipped if it is not Haswell). The table's speed-up is over the first; every
row also gives `vs_haswell_blas`, and the notes give each AVX2 row against both, side by side.

Ceilings: the table-lookup kernels are bounded by the shuffle port: one vpermps per cycle per core
applies 64 sign-MACs (16 rows of S x 4 columns, AVX-512) or 24 (8 x 3, AVX2), so
vpermps ceiling = threads x clock x 64 (or 24). The GEMM-form FMA kernels (csrc/cpu/sign/sign_gemm.h)
are bounded by the FMA ports: FMA ceiling = threads x clock x FMA lanes x FMA ports per cycle
= threads x clock x 16 x 2 (AVX-512) or 8 x 2 (AVX2); parts with one 512-bit FMA unit reach half
the AVX-512 figure. The GEMM-form LUT kernels (csrc/cpu/sign/sign_lut.h) make two loads (a selector
byte, a table entry) and one add per 64 (AVX-512) or 32 (AVX2) sign-MACs: with two load ports per
core, LUT ceiling = threads x clock x 64 (or 32); cores with three load ports can pass it, by up to
1.5x, where the add ports allow. The clock is measured by conftest.cpu_clock_ghz (scalar, one core: an upper
bound for vector code). Each row's ceiling is its kernel's; the notes give both for the GEMM case.
Philox, shifts and adds compete for the other ports, so the GEMV form cannot reach it. The numpy
rows are set against the best ISA's vpermps bound at their thread count.

Cases: GEMV projection and reconstruction at n = 512*512*9 = 2,359,296, k = 256 (the acceptance
case) with 1 and 2 threads (torch.set_num_threads; the cpu backend uses torch.get_num_threads()),
also with the AVX2 path forced (STABKERN_CPU_ISA=avx2) for machines without AVX-512; GEMM form
512 x 4608 (a 512x512x3x3 conv's filters), k = 4096, with 1 and 2 threads, on both paths and with
each kernel family forced (STABKERN_CPU_KERNEL=table|fma|lut; the notes say which one is the default),
and on the AVX2 path also the LUT kernel with 8-row tables forced (STABKERN_CPU_LUT_ROWS=8: what
cores with a 32 KiB L1 data cache, such as AMD Zen 2/3, take; `lut8` rows).

    PYTHONPATH=. python -m pytest benchmarks/bench_sign_cpu.py -q
"""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import stabkern

_cpu = pytest.importorskip("stabkern._cpu", reason="stabkern._cpu is not built")

GEMV = dict(rows=1, n=2_359_296, k=256)
GEMM = dict(rows=512, n=4608, k=4096)
GEMV_BASELINE_K = 16
SIGN_MACS_PER_VPERMPS = {"avx512": 64, "avx2": 24}
FMA_LANES = {"avx512": 16, "avx2": 8}
FMA_PORTS = 2
# one table load + add per cycle (8 or 16 rows x 4 columns): 2 loads a lookup, 2 load ports
LUT_SIGN_MACS_PER_CYCLE = {"avx512": 64, "avx2": 32}
HASWELL = "Haswell"
SEED = 2024
RATES: dict[tuple, float] = {}


def numpy_sign_chunks(k: int, n: int, seed: int):
    """(t, S[t:t+step]) for row chunks of a +-1 float32 matrix drawn by numpy (<= 2^24 signs each)."""
    rng = np.random.Generator(np.random.Philox(seed))
    step = max(1, (1 << 24) // n)
    for t in range(0, k, step):
        s = rng.integers(0, 2, size=(min(step, k - t), n), dtype=np.int8).astype(np.float32)
        s *= 2
        s -= 1
        yield t, s


def numpy_project(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    """y = x S^T with S drawn in row chunks by numpy; x: (rows, n) float32 -> (rows, k)."""
    y = np.empty((x.shape[0], k), np.float32)
    for t, s in numpy_sign_chunks(k, x.shape[1], seed):
        y[:, t:t + len(s)] = x @ s.T
    return y


def numpy_reconstruct(y: np.ndarray, n: int, seed: int) -> np.ndarray:
    """x_hat = y S / k with S drawn in row chunks by numpy; y: (rows, k) float32 -> (rows, n)."""
    k = y.shape[1]
    out = np.zeros((y.shape[0], n), np.float32)
    for t, s in numpy_sign_chunks(k, n, seed):
        out += y[:, t:t + len(s)] @ s
    return out / k


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
def test_baseline_numpy(benchmark, bench_report, bench_time, cpu_clock, threads, case):
    shape, op = CASES[case]
    rows, n, k = shape["rows"], shape["n"], shape["k"]
    if rows == 1:
        k = GEMV_BASELINE_K
    threads(min(2, os.cpu_count() or 1))
    rng = np.random.default_rng(0)
    if op == "project":
        x = rng.standard_normal((rows, n), dtype=np.float32)
        fn = lambda: numpy_project(x, k, SEED)  # noqa: E731
    else:
        y = rng.standard_normal((rows, k), dtype=np.float32)
        fn = lambda: numpy_reconstruct(y, n, SEED)  # noqa: E731
    median = bench_time(fn, rounds=3, warmup=0, benchmark=benchmark)
    n_threads = torch.get_num_threads()
    core = numpy_blas_core()
    bench_report("sign-cpu").notes["baseline BLAS, this process"] = core
    _add(bench_report, cpu_clock, case, "numpy materialized", median, (rows, n, k), n_threads, isa="-",
         key=f"numpy {case}", blas=core.get("architecture"))


def numpy_blas_core() -> dict:
    """numpy's BLAS as threadpoolctl sees it: {"library", "architecture" (OpenBLAS core type), "threads"}."""
    try:
        import threadpoolctl
    except ImportError:
        return {"library": "?", "architecture": "unknown (threadpoolctl not installed)"}
    for lib in threadpoolctl.threadpool_info():
        if lib.get("user_api") == "blas" and "numpy" in lib.get("filepath", ""):
            return {"library": f"{lib.get('internal_api')} {lib.get('version')}",
                    "architecture": lib.get("architecture", "?"), "threads": lib.get("num_threads")}
    return {"library": "?", "architecture": "unknown (numpy's BLAS not found by threadpoolctl)"}


# The subprocess of the Haswell baseline: the same numpy functions, timed as bench_time does (median of
# 3 rounds, no warm-up), its BLAS core type read back by threadpoolctl.
_HASWELL_CHILD = """
import json, statistics, sys, time
import numpy as np
{functions}
{core}
rows, n, k, op, seed = json.loads(sys.argv[1])
rng = np.random.default_rng(0)
if op == "project":
    x = rng.standard_normal((rows, n), dtype=np.float32)
    fn = lambda: numpy_project(x, k, seed)
else:
    y = rng.standard_normal((rows, k), dtype=np.float32)
    fn = lambda: numpy_reconstruct(y, n, seed)
times = []
for _ in range(3):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
print(json.dumps({{"median_s": statistics.median(times), "core": numpy_blas_core()}}))
"""


@pytest.mark.parametrize("case", list(CASES))
def test_baseline_numpy_haswell(bench_report, cpu_clock, case):
    """The same baseline with numpy's OpenBLAS forced to its Haswell (AVX2) kernels, in a subprocess."""
    shape, op = CASES[case]
    rows, n, k = shape["rows"], shape["n"], shape["k"]
    if rows == 1:
        k = GEMV_BASELINE_K
    n_threads = min(2, os.cpu_count() or 1)
    code = _HASWELL_CHILD.format(
        functions="\n".join(inspect.getsource(f) for f in (numpy_sign_chunks, numpy_project, numpy_reconstruct)),
        core=textwrap.dedent(inspect.getsource(numpy_blas_core)))
    env = dict(os.environ, OPENBLAS_CORETYPE=HASWELL, OPENBLAS_NUM_THREADS=str(n_threads))
    res = subprocess.run([sys.executable, "-c", code, json.dumps([rows, n, k, op, SEED])], env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    bench_report("sign-cpu").notes["baseline BLAS, OPENBLAS_CORETYPE=Haswell subprocess"] = got["core"]
    if got["core"].get("architecture") != HASWELL:
        pytest.skip(f"OPENBLAS_CORETYPE=Haswell was not taken: {got['core']}")
    _add(bench_report, cpu_clock, case, "numpy materialized, OpenBLAS Haswell", got["median_s"], (rows, n, k),
         n_threads, isa="-", key=f"numpy haswell {case}", baseline=f"numpy haswell {case}", blas=HASWELL)


def _isas():
    best = _cpu.available_isas()[-1]
    return [best] + (["avx2"] if best == "avx512" else [])


@pytest.mark.parametrize("kernel", ("auto", "table", "fma", "lut", "lut8"))
@pytest.mark.parametrize("n_threads", (1, 2))
@pytest.mark.parametrize("isa", _isas())
@pytest.mark.parametrize("case", list(CASES))
def test_stabkern_cpu(benchmark, bench_report, bench_time, cpu_clock, threads, monkeypatch, case, isa, n_threads,
                      kernel):
    shape, op = CASES[case]
    rows, n, k = shape["rows"], shape["n"], shape["k"]
    if rows == 1 and kernel != "auto":
        pytest.skip("the FMA kernels are for the GEMM form")
    if n_threads > (os.cpu_count() or 1):
        pytest.skip(f"this machine has {os.cpu_count()} CPUs")
    monkeypatch.setenv("STABKERN_CPU_ISA", isa)
    if rows > 1 and kernel == "auto":
        family = _cpu.kernel(op, rows)
        bench_report("sign-cpu").notes[f"default kernel, {case}, {isa}"] = family + (
            f" ({_cpu.lut_rows(rows)}-row tables)" if family == "lut" else "")
        pytest.skip("the table, fma and lut rows cover the GEMM form; the notes say which one is the default")
    if kernel == "lut8" and isa != "avx2":
        pytest.skip("8-row LUT tables (for cores with a 32 KiB L1) are an AVX2-path choice")
    monkeypatch.setenv("STABKERN_CPU_KERNEL", "lut" if kernel == "lut8" else kernel)
    monkeypatch.setenv("STABKERN_CPU_LUT_ROWS", "8" if kernel == "lut8" else "")
    threads(n_threads)
    gen = torch.Generator().manual_seed(0)
    if op == "project":
        x = torch.randn(rows, n, generator=gen)
        fn = lambda: stabkern.sign_project(x, k, seed=SEED, backend="cpu")  # noqa: E731
    else:
        y = torch.randn(rows, k, generator=gen)
        fn = lambda: stabkern.sign_reconstruct(y, n, seed=SEED, backend="cpu")  # noqa: E731
    median = bench_time(fn, rounds=7 if rows == 1 else 5, warmup=1, benchmark=benchmark)
    family = _cpu.kernel(op, rows)
    row = _add(bench_report, cpu_clock, case, "stabkern cpu", median, (rows, n, k), n_threads, isa=isa,
               kernel=family, **({"lut_rows": _cpu.lut_rows(rows)} if family == "lut" else {}))
    if row is None:
        return
    report = bench_report("sign-cpu")
    RATES[(case, isa, kernel, n_threads)] = row["rate"]
    base, haswell = report.row(f"numpy {case}"), report.row(f"numpy haswell {case}")
    if haswell:
        row["vs_haswell_blas"] = f"{row['rate'] / haswell['rate']:.2f}x"
    if isa == "avx2" and base:
        label = row["kernel"] + (f" {row['lut_rows']}-row" if "lut_rows" in row else "")
        report.notes[f"AVX2 vs both baselines (numpy at {base['threads']} threads), {case}, {label}, "
                     f"{n_threads} thread{'s' * (n_threads > 1)}"] = (
            f"{row['rate'] / base['rate']:.2f}x numpy on OpenBLAS {base.get('blas', '?')}, "
            + (f"{row['rate'] / haswell['rate']:.2f}x numpy on OpenBLAS Haswell" if haswell else
               "no Haswell baseline this run"))
    one = RATES.get((case, isa, kernel, 1))
    if n_threads == 2 and one:
        label = row["kernel"] + (f" {row['lut_rows']}-row" if "lut_rows" in row else "")
        report.notes[f"scaling 1 -> 2 threads, {case}, {isa}, {label}"] = f"{row['rate'] / one:.2f}x"


def _add(bench_report, cpu_clock, case, backend, median, shape, n_threads, isa, key=None, kernel="table",
         baseline=None, **extra):
    """One row of sign-cpu: baseline numpy at the same case (or the key `baseline`), ceiling the bound of the
    row's kernel (vpermps for the table kernels, FMA or LUT for the GEMM-form kernels) at n_threads."""
    rows, n, k = shape
    clock = cpu_clock["ghz"]
    bound_isa = isa if isa in SIGN_MACS_PER_VPERMPS else _cpu.available_isas()[-1]
    per_cycle = (FMA_LANES if kernel == "fma" else SIGN_MACS_PER_VPERMPS).get(bound_isa)
    per_cycle = per_cycle * FMA_PORTS if per_cycle and kernel == "fma" else per_cycle
    per_cycle = LUT_SIGN_MACS_PER_CYCLE.get(bound_isa) if kernel == "lut" else per_cycle
    ceiling = n_threads * clock * 1e9 * per_cycle if clock and per_cycle else None
    report = bench_report("sign-cpu")
    report.notes["ceiling"] = ("threads x clock x sign-MACs per cycle: table kernels one vpermps (64 AVX-512, 24 "
                               f"AVX2; the best ISA here for the numpy rows), FMA kernels FMA lanes x {FMA_PORTS} "
                               f"ports (32 AVX-512, 16 AVX2), LUT kernels one lookup of two loads (64 AVX-512, 32 "
                               f"AVX2); clock {clock} GHz: {cpu_clock['how']}")
    report.notes["baseline"] = (f"numpy Philox int8 -> float32 sign chunks + matmul; GEMV baseline at k = "
                                f"{GEMV_BASELINE_K}; speed-up over numpy on OpenBLAS's own core type, "
                                "vs_haswell_blas over numpy with OPENBLAS_CORETYPE=Haswell (its AVX2 kernels)")
    if clock and rows > 1:
        for t in (1, 2):
            bounds = ", ".join(f"{name} FMA {t * clock * FMA_LANES[name] * FMA_PORTS:.0f} G/s, vpermps "
                               f"{t * clock * SIGN_MACS_PER_VPERMPS[name]:.0f} G/s, LUT "
                               f"{t * clock * LUT_SIGN_MACS_PER_CYCLE[name]:.0f} G/s" for name in FMA_LANES)
            report.notes[f"GEMM ceilings, {t} thread{'s' * (t > 1)}"] = bounds
    name = f"{ {'fma': 'FMA', 'lut': 'LUT'}.get(kernel, 'vpermps')} bound {bound_isa}"
    return report.add(case, shape=shape, dtype=torch.float32, device="cpu", backend=backend, median_s=median,
                      work=rows * n * k, unit="sign-MAC/s", key=key, baseline=baseline or f"numpy {case}",
                      ceiling=name if ceiling else None, ceiling_rate=ceiling, threads=n_threads, isa=isa,
                      **({} if isa == "-" else {"kernel": kernel}), **extra)
