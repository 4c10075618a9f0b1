"""CPU sign kernels (`stabkern._cpu`, called through the public ops with backend="cpu") against
what users get without stabkern. Rates are sign-MACs per second (rows * n * k per call); times
are medians. Results: benchmarks/results/sign-cpu-<date>.json (see conftest.py), with the CPU's
vendor, family, model, caches, measured clock and the load average at start and end.

Baselines and peers (test_baselines_and_peers), timed interleaved in one test per case (every
contender once per round, the order rotating; one warm-up call each, median of 7 rounds; each timed
call after SETTLE_S idle, so that no contender shares the cores with the threads the one before it
left spinning), all at the same thread count (2, or the machine's CPUs):
- `numpy` (the speed-up column's baseline): numpy as a user would write it, drawing the signs in
  chunks of rows of S on every call (np.random.Generator(np.random.Philox(seed)).integers(0, 2,
  int8) -> float32, 2 s - 1, about 64 MiB per chunk) and matmul. The GEMV cases run it at k = 16
  (its rate per sign-MAC does not depend on k; k = 256 would take ~6 s a call).
- `numpy, OPENBLAS_CORETYPE=Haswell`: the same in a worker process whose OpenBLAS (DYNAMIC_ARCH,
  which picks its kernels when it loads) was forced to its AVX2 kernels, what an AVX2-only CPU
  runs; left out when the worker got another core type. Each numpy row names the core type it ran
  (threadpoolctl): on an AVX2-only CPU both are Haswell and differ by noise only.
- GEMM form only, `numpy matmul, pre-made S`: x @ S.T (y @ S / k) on a float32 S made once, the
  matrix multiply alone: the stricter ratio (`vs_matmul_alone`). The speed-up column is over numpy
  generating its signs each call, what a user without a seeded sign generator does.
- GEMM projection only, the dense random projections a user would pick on a CPU: traker's
  `BasicProjector` (Rademacher, block_size = k: its matrix generated once and cached), scikit-learn's
  `GaussianRandomProjection.transform` (fitted once), torch.matmul on a cached +-1 matrix; and
  scikit-learn's `SparseRandomProjection.transform`, a different operation (a sparse matrix of
  density 1/sqrt(n): about sqrt(n) times fewer MACs, and a different guarantee), labelled so.
- stabkern's default kernel at the same thread count, in the same rounds.

The kernel matrix (test_stabkern_cpu): GEMV projection and reconstruction at n = 512*512*9 =
2,359,296, k = 256 (the acceptance case) with 1 and 2 threads (torch.set_num_threads; the cpu
backend uses torch.get_num_threads()), also with the AVX2 path forced (STABKERN_CPU_ISA=avx2) on
AVX-512 machines; GEMM form 512 x 4608 (a 512x512x3x3 conv's filters), k = 4096, with each kernel
family forced (STABKERN_CPU_KERNEL=table|fma|lut; the notes say which one is the default). On the
AVX2 path the LUT kernel runs twice, with STABKERN_CPU_LUT_ROWS=8 and =16 (`lut8`, `lut16`): left
to itself it takes one table height per CPU, so a single `lut` row would measure the 8-row kernel
twice on a 32 KiB-L1 core; each row records the height the kernel reported. These rows are timed
one case after another (one warm-up, median of 5 or 7), not interleaved with the baselines.

The table-height sweep (test_lut_table_heights): the AVX2 LUT kernel with 8-row and with 16-row
tables interleaved in one run (median of 9), GEMM form n = 4608, k = 4096, at 32, 64 and 512 rows,
1 and 2 threads, both directions: the measurements behind the table-height rule (`lut16()` in
csrc/cpu/sign/sign_kernels.cpp).

Ceilings: each kernel's own, from what it issues per core and cycle (threads x clock x sign-MACs
per cycle; the clock measured by harness.cpu_clock_ghz):
- table projection: one vpermps applies 64 sign-MACs (16 rows of S x 4 columns, AVX-512) or 24
  (8 x 3, AVX2), at one vpermps per cycle;
- table reconstruction, AVX-512: the table trick in reverse (16 signed sums of 4 values of y, one
  vpermps per 64 sign-MACs), so the vpermps bound; AVX2: no vpermps; per register of 8 columns it
  issues a shift and an andnot (shared by the R rows of y of a block) and an xor and an add per
  row: 2 + 2R vector ops per 8R sign-MACs, at the core's vector-ALU ops per cycle (4 on AMD Zen, 3
  on Intel), e.g. 8 sign-MAC/cycle at R = 1 on Zen 3. The vpermps bound stays as its goal (the
  reverse table trick on AVX2): `pct_vpermps_goal`;
- FMA kernels, and the numpy and dense peer rows (sgemm): FMA lanes x 2 FMA ports (32 AVX-512, 16
  AVX2; the best ISA here for numpy and the peers);
- LUT kernels: no ceiling. The rate of one table lookup (two loads) per cycle at two load ports
  (64 AVX-512, 32 AVX2 sign-MAC/cycle) is given as a reference rate (`pct_lut_reference`), not a
  bound: its loop alone ran at 38-41 sign-MAC/cycle on Zen 3 and past it on Intel.

The TRAK-shaped case (test_traker_resnet18): per-sample gradients of a ResNet-18 (10 classes, 11.2M
parameters; eval mode, CIFAR-sized 3x32x32 inputs, torch.func) projected to 2048 dimensions in
batches of 16, rows per second for stabkern's `StabkernProjector` against traker's `BasicProjector`
(Rademacher, its default block_size 100: the 11.2M x 2048 matrix does not fit in memory, so it is
regenerated in 21 blocks per call, as TRAKer does on a CPU), one call each (minutes per call for
BasicProjector on a 2-core machine).

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
VECTOR_ALU_OPS = {"AuthenticAMD": 4, "GenuineIntel": 3}  # 256-bit vector-ALU ops issued per cycle (Zen; Intel)
TABLE_RECONSTRUCT_ROWS = 8  # rows of y per block of the table reconstruction (sign_kernels_avx2.h)
LUT_REFERENCE_PER_CYCLE = {"avx512": 64, "avx2": 32}  # one lookup (two loads) per cycle: not a bound
HASWELL = "Haswell"
SEED = 2024
INTERLEAVED_ROUNDS = 7
SETTLE_S = 0.25  # idle seconds before each interleaved call (harness.interleaved_medians): spinning pools go quiet
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


def numpy_case(op: str, rows: int, n: int, k: int):
    """The numpy baseline's call for a case, on inputs drawn once (seed 0)."""
    rng = np.random.default_rng(0)
    if op == "project":
        x = rng.standard_normal((rows, n), dtype=np.float32)
        return lambda: numpy_project(x, k, SEED)
    y = rng.standard_normal((rows, k), dtype=np.float32)
    return lambda: numpy_reconstruct(y, n, SEED)


# The worker of the Haswell baseline: the same numpy functions; it reports its BLAS core type, then
# times one call per line read from stdin (the parent interleaves these calls with its own contenders).
_WORKER = """
import json, sys, time
import numpy as np
SEED = {seed}
{functions}
rows, n, k, op = json.loads(sys.argv[1])
fn = numpy_case(op, rows, n, k)
print(json.dumps(numpy_blas_core()), flush=True)
for _ in sys.stdin:
    start = time.perf_counter()
    fn()
    print(time.perf_counter() - start, flush=True)
"""


class HaswellWorker:
    """numpy's baseline in a process started with OPENBLAS_CORETYPE=Haswell (OpenBLAS reads it when it loads,
    so only a fresh process can take it); `core` is the core type it got, calling the worker times one call."""

    def __init__(self, rows: int, n: int, k: int, op: str, n_threads: int):
        code = _WORKER.format(seed=SEED, functions="\n".join(textwrap.dedent(inspect.getsource(f)) for f in (
            numpy_sign_chunks, numpy_project, numpy_reconstruct, numpy_blas_core, numpy_case)))
        env = dict(os.environ, OPENBLAS_CORETYPE=HASWELL, OPENBLAS_NUM_THREADS=str(n_threads))
        self.process = subprocess.Popen([sys.executable, "-c", code, json.dumps([rows, n, k, op])], env=env,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.core = json.loads(self.process.stdout.readline())

    def __call__(self) -> float:
        self.process.stdin.write("\n")
        self.process.stdin.flush()
        return float(self.process.stdout.readline())

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=60)


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


def _peers(n: int, k: int, x_np: np.ndarray, x: torch.Tensor) -> dict:
    """{label: call} of the dense (and one sparse) random projections of (rows, n) to k a user would pick."""
    from sklearn.random_projection import GaussianRandomProjection, SparseRandomProjection
    from trak.projectors import BasicProjector, ProjectionType

    basic = BasicProjector(n, k, seed=SEED, proj_type=ProjectionType.rademacher, device=torch.device("cpu"),
                           block_size=k)
    gaussian = GaussianRandomProjection(n_components=k, random_state=SEED).fit(x_np)
    sparse = SparseRandomProjection(n_components=k, random_state=SEED, dense_output=True).fit(x_np)
    signs = torch.randint(0, 2, (n, k), generator=torch.Generator().manual_seed(SEED)).float() * 2 - 1
    return {"trak BasicProjector, matrix cached": lambda: basic.project(x, model_id=0),
            "sklearn GaussianRandomProjection.transform": lambda: gaussian.transform(x_np),
            "torch.matmul, cached +-1 matrix": lambda: torch.matmul(x, signs),
            "sklearn SparseRandomProjection.transform (different operation: sparse S, fewer MACs)":
                lambda: sparse.transform(x_np)}


@pytest.mark.parametrize("n_threads", (2, 1))
@pytest.mark.parametrize("case", list(CASES))
def test_baselines_and_peers(bench_report, bench_interleaved, cpu_clock, cpu_identity, threads, case, n_threads):
    """numpy (signs drawn each call; forced Haswell; GEMM form: the matmul alone), the peers and stabkern's
    default kernel, interleaved, at the same thread count: 2 threads (the machine's CPUs if fewer), and for the
    GEMM form 1 thread too, its rows under the case "gemm 1-thread <op>"."""
    from threadpoolctl import threadpool_limits

    shape, op = CASES[case]
    rows, n, k = shape["rows"], shape["n"], shape["k"]
    if n_threads == 1 and rows == 1:
        pytest.skip("the GEMV baselines run at 2 threads only (numpy's rate per sign-MAC is its generator's)")
    numpy_k = GEMV_BASELINE_K if rows == 1 else k
    n_threads = min(n_threads, os.cpu_count() or 1)
    if n_threads == 1:
        case = case.replace("gemm", "gemm 1-thread")
    threads(n_threads)
    report = bench_report("sign-cpu")
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(rows, n if op == "project" else k, generator=gen)
    stabkern_call = ((lambda: stabkern.sign_project(a, k, seed=SEED, backend="cpu")) if op == "project" else
                     (lambda: stabkern.sign_reconstruct(a, n, seed=SEED, backend="cpu")))
    contenders = {"numpy": numpy_case(op, rows, n, numpy_k)}
    shapes = {"numpy": (rows, n, numpy_k)}
    if rows > 1:
        s = np.concatenate([chunk for _, chunk in numpy_sign_chunks(k, n, SEED)])
        a_np = a.numpy()
        contenders["numpy matmul, pre-made S"] = ((lambda: a_np @ s.T) if op == "project" else
                                                  (lambda: (a_np @ s) / k))
        if op == "project":
            contenders.update(_peers(n, k, a_np, a))
    contenders["stabkern cpu, default kernel"] = stabkern_call
    worker = HaswellWorker(rows, n, numpy_k, op, n_threads)
    report.notes[f"baseline BLAS, OPENBLAS_CORETYPE=Haswell worker, {n_threads} thread(s)"] = worker.core
    if worker.core.get("architecture") == HASWELL:
        contenders["numpy, OPENBLAS_CORETYPE=Haswell"] = worker
        shapes["numpy, OPENBLAS_CORETYPE=Haswell"] = (rows, n, numpy_k)
    try:
        with threadpool_limits(n_threads, user_api="blas"):
            core = numpy_blas_core()
            medians = bench_interleaved(contenders, rounds=INTERLEAVED_ROUNDS, warmup=1, settle_s=SETTLE_S,
                                        self_timed=("numpy, OPENBLAS_CORETYPE=Haswell",))
    finally:
        worker.close()
    report.notes[f"baseline BLAS, this process, {n_threads} thread(s)"] = core
    report.notes["interleaved"] = (f"baselines, peers and stabkern's default kernel: one warm-up call each, then "
                                   f"{INTERLEAVED_ROUNDS} rounds, each contender once a round in rotating order, each call after "
                                   f"{SETTLE_S} s idle (the last caller's spinning threads go quiet); medians; "
                                   f"all at the row's thread count (torch and numpy's BLAS)")
    isa, cpu = _cpu.available_isas()[-1], dict(cpu_clock, vendor=cpu_identity["vendor"])
    for name, median in medians.items():
        numpy_row = name.startswith("numpy") and "pre-made" not in name
        extra = ({"blas": (core if name == "numpy" else worker.core).get("architecture")} if numpy_row else {})
        if name.startswith("stabkern"):
            family = _cpu.kernel(op, rows)
            extra = dict(kernel=family, **({"lut_rows": _cpu.lut_rows(rows)} if family == "lut" else {}))
        elif "Sparse" in name:
            extra["ceiling"] = None  # fewer MACs than rows * n * k: the rate is per dense sign-MAC equivalent
        _add(bench_report, cpu, case, name, median, shapes.get(name, (rows, n, k)), n_threads,
             isa=isa if name.startswith("stabkern") else "-", key=f"{name} {case}", **extra)
    _ratio_notes(report, case)


def _ratio_notes(report, case: str) -> None:
    """stabkern's default kernel against each contender of its interleaved rounds."""
    ours = report.row(f"stabkern cpu, default kernel {case}")
    for row in report.rows:
        if row["case"] == case and row["key"] and not row["key"].startswith("stabkern") and ours:
            report.notes[f"{case}: stabkern default kernel / {row['backend']}"] = f"{ours['rate'] / row['rate']:.2f}x"


def _isas():
    best = _cpu.available_isas()[-1]
    return [best] + (["avx2"] if best == "avx512" else [])


@pytest.mark.parametrize("kernel", ("auto", "table", "fma", "lut", "lut8", "lut16"))
@pytest.mark.parametrize("n_threads", (1, 2))
@pytest.mark.parametrize("isa", _isas())
@pytest.mark.parametrize("case", list(CASES))
def test_stabkern_cpu(benchmark, bench_report, bench_time, cpu_clock, cpu_identity, threads, monkeypatch, case, isa,
                      n_threads, kernel):
    shape, op = CASES[case]
    rows, n, k = shape["rows"], shape["n"], shape["k"]
    if rows == 1 and kernel != "auto":
        pytest.skip("the FMA and LUT kernels are for the GEMM form")
    if n_threads > (os.cpu_count() or 1):
        pytest.skip(f"this machine has {os.cpu_count()} CPUs")
    monkeypatch.setenv("STABKERN_CPU_ISA", isa)
    monkeypatch.setenv("STABKERN_CPU_LUT_ROWS", "")
    if rows > 1 and kernel == "auto":
        family = _cpu.kernel(op, rows)
        bench_report("sign-cpu").notes[f"default kernel, {case}, {isa}, {n_threads} thread(s)"] = family + (
            f" ({_cpu.lut_rows(rows)}-row tables)" if family == "lut" else "")
        pytest.skip("the table, fma and lut rows cover the GEMM form; the notes say which one is the default")
    if kernel in ("lut8", "lut16") and isa != "avx2":
        pytest.skip("8- and 16-row LUT tables are an AVX2-path choice (AVX-512 takes 16 rows)")
    if kernel == "lut" and isa == "avx2":
        pytest.skip("on the AVX2 path the lut8 and lut16 rows force each table height")
    forced_rows = {"lut8": "8", "lut16": "16"}.get(kernel, "")
    monkeypatch.setenv("STABKERN_CPU_KERNEL", "lut" if kernel.startswith("lut") else kernel)
    monkeypatch.setenv("STABKERN_CPU_LUT_ROWS", forced_rows)
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
    lut_rows = _cpu.lut_rows(rows) if family == "lut" else None
    assert forced_rows in ("", str(lut_rows)), f"{kernel} ran {lut_rows}-row tables"
    row = _add(bench_report, dict(cpu_clock, vendor=cpu_identity["vendor"]), case, "stabkern cpu", median,
               (rows, n, k), n_threads, isa=isa, kernel=family, **({"lut_rows": lut_rows} if lut_rows else {}))
    if row is None:
        return
    report = bench_report("sign-cpu")
    RATES[(case, isa, kernel, n_threads)] = row["rate"]
    label = row["kernel"] + (f" {lut_rows}-row" if lut_rows else "")
    for key, name in ((f"numpy, OPENBLAS_CORETYPE=Haswell {case}", "vs_haswell_blas"),
                      (f"numpy matmul, pre-made S {case}", "vs_matmul_alone")):
        other = report.row(key)
        if other:
            row[name] = f"{row['rate'] / other['rate']:.2f}x"
    base, alone = report.row(f"numpy {case}"), report.row(f"numpy matmul, pre-made S {case}")
    if base:
        report.notes[f"{case}, {isa}, {label}, {n_threads} thread{'s' * (n_threads > 1)} (numpy at "
                     f"{base['threads']} threads)"] = (
            f"{row['rate'] / base['rate']:.2f}x numpy drawing its signs each call (OpenBLAS {base.get('blas', '?')})"
            + (f", {row['rate'] / alone['rate']:.2f}x the matmul alone on a pre-made S" if alone else ""))
    one = RATES.get((case, isa, kernel, 1))
    if n_threads == 2 and one:
        report.notes[f"scaling 1 -> 2 threads, {case}, {isa}, {label}"] = f"{row['rate'] / one:.2f}x"


def _sign_macs_per_cycle(kernel: str, op: str, isa: str, rows: int, vendor: str | None) -> tuple[str, float | None]:
    """(name, sign-MACs per core and cycle) of the ceiling of `kernel` ("table", "fma", "lut", or "sgemm" for
    numpy and the dense peers) on `isa`; None where the kernel has no ceiling (lut: see the module note)."""
    if kernel in ("fma", "sgemm"):
        return f"FMA bound {isa}", FMA_LANES[isa] * FMA_PORTS
    if kernel == "lut":
        return "none (LUT: see lut reference)", None
    if op == "project" or isa == "avx512":
        return f"vpermps bound {isa}", SIGN_MACS_PER_VPERMPS[isa]
    ops = VECTOR_ALU_OPS.get(vendor)
    r = min(rows, TABLE_RECONSTRUCT_ROWS)
    return f"vector-ALU issue bound {isa}", ops and FMA_LANES[isa] * r * ops / (2 + 2 * r)


def _add(bench_report, cpu, case, backend, median, shape, n_threads, isa, key=None, kernel=None, **extra):
    """One row of sign-cpu: baseline the numpy row of the case, ceiling the bound of the row's kernel (numpy and
    the dense peers: sgemm's FMA bound at the best ISA) at n_threads (module note). cpu: the cpu_clock fixture's
    record with the CPU's "vendor"."""
    rows, n, k = shape
    clock = cpu["ghz"]
    op = case.split()[-1]
    vendor = cpu["vendor"]
    bound_isa = isa if isa in SIGN_MACS_PER_VPERMPS else _cpu.available_isas()[-1]
    per_core_ghz = n_threads * clock * 1e9 if clock else None
    name, per_cycle = _sign_macs_per_cycle(kernel or "sgemm", op, bound_isa, rows, vendor) if bound_isa in FMA_LANES \
        else (None, None)
    if extra.pop("ceiling", True) is None:
        name, per_cycle = None, None
    ceiling = per_core_ghz * per_cycle if per_core_ghz and per_cycle else None
    report = bench_report("sign-cpu")
    report.notes["ceilings"] = ("threads x clock x sign-MACs per cycle of each kernel's own issue: table projection "
                                "and AVX-512 reconstruction one vpermps (24 AVX2, 64 AVX-512); AVX2 table "
                                "reconstruction 2 + 2R vector ops per 8R sign-MACs at 4 (AMD) or 3 (Intel) vector "
                                f"ops a cycle (R = rows per block, <= {TABLE_RECONSTRUCT_ROWS}); FMA kernels, "
                                f"numpy and the dense peers FMA lanes x {FMA_PORTS} ports; LUT kernels none "
                                "(lut_reference_rate: one lookup of two loads a cycle, 32 AVX2 / 64 AVX-512, passed "
                                f"in practice); clock {clock} GHz: "
                                f"{cpu['how']}")
    if kernel == "lut" and per_core_ghz:
        reference = per_core_ghz * LUT_REFERENCE_PER_CYCLE[bound_isa]
        extra.update(lut_reference_rate=reference, pct_lut_reference=round(100 * rows * n * k / median / reference, 1))
    if kernel == "table" and op == "reconstruct" and bound_isa == "avx2" and per_core_ghz:
        goal = per_core_ghz * SIGN_MACS_PER_VPERMPS[bound_isa]
        extra["pct_vpermps_goal"] = round(100 * rows * n * k / median / goal, 1)
    return report.add(case, shape=shape, dtype=torch.float32, device="cpu", backend=backend, median_s=median,
                      work=rows * n * k, unit="sign-MAC/s", key=key, baseline=f"numpy {case}",
                      ceiling=name if ceiling else None, ceiling_rate=ceiling, threads=n_threads, isa=isa,
                      **({} if kernel is None else {"kernel": kernel}), **extra)


LUT_HEIGHT_ROWS = (32, 64, 512)


@pytest.mark.parametrize("rows", LUT_HEIGHT_ROWS)
@pytest.mark.parametrize("n_threads", (1, 2))
@pytest.mark.parametrize("op", ("project", "reconstruct"))
def test_lut_table_heights(bench_report, bench_interleaved, cpu_clock, cpu_identity, threads, monkeypatch, op,
                           n_threads, rows):
    """The AVX2 LUT kernel with 8-row tables against 16-row tables (STABKERN_CPU_LUT_ROWS forces each), interleaved
    in one run, GEMM form n = 4608, k = 4096: the sweep behind `lut16()`'s rule (csrc/README.md). The baseline of
    each pair is the 8-row kernel; the note gives 16-row / 8-row."""
    if "avx2" not in _cpu.available_isas():
        pytest.skip("the table heights are an AVX2-path choice")
    if n_threads > (os.cpu_count() or 1):
        pytest.skip(f"this machine has {os.cpu_count()} CPUs")
    n, k = GEMM["n"], GEMM["k"]
    monkeypatch.setenv("STABKERN_CPU_ISA", "avx2")
    monkeypatch.setenv("STABKERN_CPU_KERNEL", "lut")
    threads(n_threads)
    a = torch.randn(rows, n if op == "project" else k, generator=torch.Generator().manual_seed(0))

    def height(h: str):
        def call():
            os.environ["STABKERN_CPU_LUT_ROWS"] = h  # read at every call; monkeypatch restores it after the test
            if op == "project":
                stabkern.sign_project(a, k, seed=SEED, backend="cpu")
            else:
                stabkern.sign_reconstruct(a, n, seed=SEED, backend="cpu")
        return call

    monkeypatch.setenv("STABKERN_CPU_LUT_ROWS", "")
    medians = bench_interleaved({"8": height("8"), "16": height("16")}, rounds=9, warmup=1, settle_s=SETTLE_S)
    report = bench_report("sign-cpu")
    case = f"lut heights {rows} rows {op}"
    cpu = dict(cpu_clock, vendor=cpu_identity["vendor"])
    for h in ("8", "16"):
        key = f"lut{h} {case} {n_threads}t"
        report.add(case, shape=(rows, n, k), dtype=torch.float32, device="cpu", backend=f"stabkern cpu, lut{h}",
                   median_s=medians[h], work=rows * n * k, unit="sign-MAC/s", key=key,
                   baseline=f"lut8 {case} {n_threads}t", threads=n_threads, isa="avx2", kernel="lut",
                   lut_rows=int(h), clock_ghz=cpu["ghz"], vendor=cpu["vendor"])
    report.notes[f"{case}, {n_threads} thread(s): 16-row / 8-row"] = f"{medians['8'] / medians['16']:.2f}x"


# One round: BasicProjector draws 21 x 11.2M x 100 signs per batch, 7.7 minutes a call on the quiet 2-core
# AMD EPYC of 2026-12-07 (23 minutes loaded; StabkernProjector: 4.5 s).
TRAK_BATCH, TRAK_PROJ_DIM, TRAK_ROUNDS = 16, 2048, 1


def resnet18_per_sample_grads(batch: int) -> torch.Tensor:
    """(batch, 11.2M) per-sample gradients of a random ResNet-18 (10 classes, eval mode) on random 3x32x32
    inputs and labels, torch.func.vmap of torch.func.grad, flattened in named_parameters order."""
    from torch.func import functional_call, grad, vmap

    from stabkern import zoo

    torch.manual_seed(0)
    model = zoo.build("resnet18", 10).eval()
    params = {name: p.detach() for name, p in model.named_parameters()}
    buffers = dict(model.named_buffers())

    def loss(p, x, t):
        return torch.nn.functional.cross_entropy(functional_call(model, (p, buffers), (x[None],)), t[None])

    xs, ts = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    grads = vmap(grad(loss), in_dims=(None, 0, 0))(params, xs, ts)
    return torch.cat([g.reshape(batch, -1) for g in grads.values()], dim=1)


def test_traker_resnet18(bench_report, bench_interleaved, threads):
    """TRAK's projection on a CPU: StabkernProjector against BasicProjector, rows per second."""
    from trak.projectors import BasicProjector, ProjectionType

    from stabkern.adapters.traker import StabkernProjector

    n_threads = min(2, os.cpu_count() or 1)
    threads(n_threads)
    grads = resnet18_per_sample_grads(TRAK_BATCH)
    grad_dim = grads.shape[1]
    ours = StabkernProjector(grad_dim, TRAK_PROJ_DIM, seed=SEED, device="cpu", backend="cpu")
    basic = BasicProjector(grad_dim, TRAK_PROJ_DIM, seed=SEED, proj_type=ProjectionType.rademacher,
                           device=torch.device("cpu"))
    medians = bench_interleaved({"stabkern StabkernProjector": lambda: ours.project(grads, 0),
                                 "trak BasicProjector": lambda: basic.project(grads, 0)}, rounds=TRAK_ROUNDS, warmup=0)
    report = bench_report("sign-cpu")
    case = f"trak resnet18 grads -> {TRAK_PROJ_DIM}"
    for name, median in medians.items():
        report.add(case, shape=(TRAK_BATCH, grad_dim, TRAK_PROJ_DIM), dtype=torch.float32, device="cpu",
                   backend=name, median_s=median, work=TRAK_BATCH, unit="rows/s", key=f"{name} {case}",
                   baseline=f"trak BasicProjector {case}", threads=n_threads,
                   **({"block_size": basic.block_size} if "Basic" in name else {}))
    report.notes[case] = (f"real per-sample gradients (torch.func) of a random ResNet-18, {grad_dim} parameters, "
                          f"batches of {TRAK_BATCH}; BasicProjector Rademacher with its default block_size "
                          f"{basic.block_size} ({basic.num_blocks} blocks, each regenerated at every call when there "
                          f"is more than one); interleaved, no "
                          f"warm-up, median of {TRAK_ROUNDS}; {n_threads} threads")
