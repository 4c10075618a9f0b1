"""GPU benchmarks of the sign kernels: GEMV, GEMM and scale, each backend and precision mode.

Run (GPU): STABKERN_BENCH_OUT=/some/dir python -m pytest benchmarks/bench_sign_gpu.py -s
Every case skips without a GPU. Results: printed per case and as a table at the end, and written as
JSON (GPU name, driver, torch/Triton versions, git revision, every case, the measured rule for
backend="auto") to $STABKERN_BENCH_OUT, else $OUT, else benchmarks/results/, as bench_sign_gpu.json.

Rates are sign-MACs per second (T = 10^12): a sign-MAC is one multiply-add with one sign of S, so
projection and reconstruction of (rows, n) with k rows of S do rows * n * k of them; GEMM cases also
give TFLOP/s (2 per MAC) to compare with cuBLAS. Baselines and ceilings are measured in the same run:

- GEMV (n = 2,359,296, k = 4096, float32, one row): baseline "torch": materialize chunks of a sign
  matrix (torch.randint) and matmul, what users do without stabkern (DESIGN.md s6); ceiling: the
  CUDA-core ALU estimate, SMs x SM clock x 128 lanes / 3 instructions per sign (shift, LOP3, FADD).
  Target >= 10 T sign-MAC/s.
- GEMM (512 x 4608, k = 4096 and 16384): ceiling and baseline cuBLAS bf16 on a materialized sign
  matrix of the same shape (target >= 90% of it for "medium"); baseline cuBLAS float32 without TF32
  (target >= 2x for "highest").
- scale: sign_compress of n = 2,359,296 with k = 10^6.
Times are medians of CUDA-synchronized rounds (several launches per round for short kernels).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path

import pytest
import torch

import stabkern
from stabkern import backends

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="GPU benchmarks need a CUDA GPU")

GEMV_N, GEMV_K = 2_359_296, 4096
GEMM_ROWS, GEMM_N = 512, 4608
GEMM_KS = (4096, 16384)
SCALE_K = 1_000_000
SEED = 0x5EED_0000_1234_5678
PRECISIONS = ("highest", "high", "medium")

_CASES: list[dict] = []
_BASELINES: dict[str, float] = {}


# --------------------------------------------------------------------------- helpers


def _sync_time(fn, rounds: int, inner: int) -> float:
    """Median seconds per call of fn over `rounds` rounds of `inner` calls, each round synchronized."""
    times = []
    for _ in range(rounds):
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(inner):
            fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - start) / inner)
    return statistics.median(times)


def _bench(benchmark, fn, rounds: int, inner: int) -> float:
    """Time fn with pytest-benchmark (median of synchronized rounds); seconds per call."""

    def run():
        for _ in range(inner):
            fn()
        torch.cuda.synchronize()

    fn()  # compile / load, outside the timing
    torch.cuda.synchronize()
    benchmark.pedantic(run, rounds=rounds, iterations=1, warmup_rounds=1)
    stats = getattr(benchmark, "stats", None)
    if stats is None or getattr(stats, "stats", None) is None:  # --benchmark-disable
        return _sync_time(fn, rounds, inner)
    return stats.stats.median / inner


def _available(backend: str) -> str | None:
    b = backends.BACKENDS[backend]
    return b.missing() or b.refuses(torch.device("cuda"), torch.float32)


def _sm_clock_hz() -> tuple[float, str]:
    """The SM clock for the ALU estimate: NVML's maximum SM clock, else the H100 SXM boost clock."""
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device())
        return pynvml.nvmlDeviceGetMaxClockInfo(handle, pynvml.NVML_CLOCK_SM) * 1e6, "nvml max SM clock"
    except Exception:  # noqa: BLE001 - any NVML trouble: fall back to the data-sheet figure
        return 1.98e9, "assumed 1980 MHz (H100 SXM boost)"


def _alu_ceiling() -> float:
    """CUDA-core estimate in sign-MAC/s: SMs x clock x 128 lanes / 3 instructions per sign."""
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    return sms * _sm_clock_hz()[0] * 128 / 3


def _record(kind: str, op: str, backend: str, precision: str, shape: tuple, dtype: str, seconds: float, macs: float,
            baseline: str | None = None, ceiling: str | None = None, ceiling_rate: float | None = None,
            **extra) -> dict:
    rate = macs / seconds
    base_rate = _BASELINES.get(baseline) if baseline else None
    ceil_rate = ceiling_rate if ceiling_rate is not None else (_BASELINES.get(ceiling) if ceiling else None)
    case = dict(kind=kind, op=op, backend=backend, precision=precision, shape=list(shape), dtype=dtype,
                time_ms=seconds * 1e3, rate_tmacs=rate / 1e12, tflops=2 * rate / 1e12,
                baseline=baseline, baseline_tmacs=base_rate / 1e12 if base_rate else None,
                speedup=rate / base_rate if base_rate else None, ceiling=ceiling,
                ceiling_tmacs=ceil_rate / 1e12 if ceil_rate else None,
                pct_of_ceiling=100 * rate / ceil_rate if ceil_rate else None, **extra)
    _CASES.append(case)
    print(_line(case), flush=True)
    return case


def _fmt(v, spec):
    return "-" if v is None else format(v, spec)


def _line(c: dict) -> str:
    return (f"{c['kind']:5} {c['op']:11} {c['backend']:7} {c['precision']:8} {str(tuple(c['shape'])):26} "
            f"{c['dtype']:8} {c['time_ms']:10.3f} ms {c['rate_tmacs']:8.3f} T/s  base {_fmt(c['baseline_tmacs'], '8.3f')}"
            f"  x{_fmt(c['speedup'], '7.2f')}  {_fmt(c['pct_of_ceiling'], '6.1f')}% of {c['ceiling'] or '-'}")


def _out_dir() -> Path:
    return Path(os.environ.get("STABKERN_BENCH_OUT") or os.environ.get("OUT") or Path(__file__).parent / "results")


def _meta() -> dict:
    props = torch.cuda.get_device_properties(0)
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                             cwd=Path(__file__).parent).stdout.strip()
    except OSError:
        rev = ""
    try:
        driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=30).stdout.strip()
    except OSError:
        driver = ""
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return dict(gpu=props.name, sms=props.multi_processor_count, driver=driver or None, torch=torch.__version__,
                cuda=torch.version.cuda, triton=triton_version, git_revision=rev or os.environ.get("STABKERN_GIT_REV"),
                python=platform.python_version(), sm_clock=_sm_clock_hz()[1],
                time=time.strftime("%Y-%m-%dT%H:%M:%S%z"))


def _auto_rule(cases: list[dict]) -> dict:
    """Faster backend per form and op at the default precision, from this run's cases."""
    rule = {}
    for kind in ("gemv", "gemm"):
        for op in ("project", "reconstruct"):
            times = {c["backend"]: c["time_ms"] for c in cases
                     if c["kind"] == kind and c["op"] == op and c["precision"] == "highest"
                     and c["backend"] in ("cuda", "triton") and not c.get("forced_form")
                     and (kind == "gemv" or c["shape"][2] == GEMM_KS[0])}
            if times:
                best = min(times, key=times.get)
                rule[f"{kind}_{op}"] = dict(faster=best, time_ms=times)
    return rule


@pytest.fixture(scope="module", autouse=True)
def _write_results():
    yield
    if not torch.cuda.is_available():
        return
    out = _out_dir()
    out.mkdir(parents=True, exist_ok=True)
    doc = dict(meta=_meta(), baselines_tmacs={k: v / 1e12 for k, v in _BASELINES.items()}, cases=_CASES,
               auto_rule=_auto_rule(_CASES))
    (out / "bench_sign_gpu.json").write_text(json.dumps(doc, indent=1))
    print(f"\nauto rule: {json.dumps(doc['auto_rule'])}\nwrote {out / 'bench_sign_gpu.json'}", flush=True)


# --------------------------------------------------------------------------- baselines (same run)


def _gemv_torch_baseline(op: str) -> float:
    """Sign-MAC/s of torch materialize-and-matmul for the GEMV shape (chunks of 256 rows of S)."""
    key = f"torch_gemv_{op}"
    if key not in _BASELINES:
        x = torch.randn(1, GEMV_N, device="cuda")
        y = torch.randn(1, GEMV_K, device="cuda")
        chunk = 256

        def run():
            out = torch.zeros(1, GEMV_K if op == "project" else GEMV_N, device="cuda")
            for t in range(0, GEMV_K, chunk):
                s = torch.randint(0, 2, (chunk, GEMV_N), device="cuda", dtype=torch.int8).float().mul_(2).sub_(1)
                if op == "project":
                    out[:, t:t + chunk] = x @ s.T
                else:
                    out += y[:, t:t + chunk] @ s
            return out

        run()
        _BASELINES[key] = GEMV_N * GEMV_K / _sync_time(run, rounds=3, inner=1)
    return _BASELINES[key]


def _gemm_cublas_baselines(op: str, k: int) -> tuple[str, str]:
    """cuBLAS bf16 and float32 (no TF32) on a materialized sign matrix of the GEMM shape."""
    bf16_key, f32_key = f"cublas_bf16_{op}_k{k}", f"cublas_f32_{op}_k{k}"
    if bf16_key not in _BASELINES:
        s = torch.randint(0, 2, (k, GEMM_N), device="cuda", dtype=torch.int8).float().mul_(2).sub_(1)
        a = torch.randn(GEMM_ROWS, GEMM_N if op == "project" else k, device="cuda")
        rhs = s.T.contiguous() if op == "project" else s  # (n, k) or (k, n)
        macs = GEMM_ROWS * GEMM_N * k
        a16, r16 = a.bfloat16(), rhs.bfloat16()
        _BASELINES[bf16_key] = macs / _sync_time(lambda: a16 @ r16, rounds=10, inner=10)
        tf32 = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False
        try:
            _BASELINES[f32_key] = macs / _sync_time(lambda: a @ rhs, rounds=5, inner=5)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = tf32
    return bf16_key, f32_key


# --------------------------------------------------------------------------- cases


def _call(op: str, backend: str, a: torch.Tensor, k: int, n: int, precision: str, plan=None):
    """One projection (a: (rows, n) -> k) or reconstruction (a: (rows, k) -> n) through the backend."""
    b = backends.BACKENDS[backend]
    if plan is not None:  # a forced form, through the backend's own module
        if backend == "cuda":
            from stabkern import cuda_sign

            if op == "project":
                return lambda: cuda_sign.project(b.module, a, k, SEED, 1, 0, 0, precision, plan=plan)
            return lambda: cuda_sign.reconstruct(b.module, a, n, 1.0 / k, SEED, 1, 0, 0, precision, plan=plan)
        if op == "project":
            return lambda: b.module.project(a, k, SEED, 1, 0, 0, precision, plan=plan)
        return lambda: b.module.reconstruct(a, n, 1.0 / k, SEED, 1, 0, 0, precision, plan=plan)
    if op == "project":
        return lambda: b.project(a, k, SEED, 1, 0, 0, precision)
    return lambda: b.reconstruct(a, n, 1.0 / k, SEED, 1, 0, 0, precision)


GEMV_CASES = [(op, backend, precision, form) for op in ("project", "reconstruct") for backend in ("cuda", "triton")
              for precision, form in (("highest", None), ("medium", None), ("highest", "gemm"))
              if not (backend == "triton" and form)]


@pytest.mark.parametrize("op,backend,precision,form", GEMV_CASES)
def test_gemv(benchmark, op, backend, precision, form):
    reason = _available(backend)
    if reason:
        pytest.skip(reason)
    base = _gemv_torch_baseline(op)
    a = torch.randn(1, GEMV_N if op == "project" else GEMV_K, device="cuda")
    plan = None
    if form:
        from stabkern import cuda_sign

        plan = (cuda_sign.plan_project(1, GEMV_N, GEMV_K, torch.float32, "medium", a.device) if op == "project" else
                cuda_sign.plan_reconstruct(1, GEMV_N, GEMV_K, torch.float32, "medium", a.device))
        assert plan.form == form
    fn = _call(op, backend, a, GEMV_K, GEMV_N, precision, plan)
    seconds = _bench(benchmark, fn, rounds=10, inner=3)
    _record("gemv", op, backend, precision, (1, GEMV_N, GEMV_K), "float32", seconds, GEMV_N * GEMV_K,
            baseline=f"torch_gemv_{op}", ceiling="alu_estimate", ceiling_rate=_alu_ceiling(), target_tmacs=10.0,
            forced_form=form, torch_baseline_tmacs=base / 1e12)


GEMM_CASES = [(op, backend, precision, k) for k in GEMM_KS for op in ("project", "reconstruct")
              for backend in ("cuda", "triton") for precision in PRECISIONS]


@pytest.mark.parametrize("op,backend,precision,k", GEMM_CASES)
def test_gemm(benchmark, op, backend, precision, k):
    reason = _available(backend)
    if reason:
        pytest.skip(reason)
    bf16_key, f32_key = _gemm_cublas_baselines(op, k)
    a = torch.randn(GEMM_ROWS, GEMM_N if op == "project" else k, device="cuda")
    fn = _call(op, backend, a, k, GEMM_N, precision)
    seconds = _bench(benchmark, fn, rounds=10, inner=10)
    shape = (GEMM_ROWS, GEMM_N, k)
    target = dict(medium=("cublas_bf16 x 0.9", 0.9 * _BASELINES[bf16_key]),
                  highest=("cublas_f32 x 2", 2 * _BASELINES[f32_key])).get(precision)
    _record("gemm", op, backend, precision, shape, "float32", seconds, GEMM_ROWS * GEMM_N * k,
            baseline=f32_key if precision == "highest" else bf16_key, ceiling=bf16_key,
            target=target[0] if target else None, target_tmacs=target[1] / 1e12 if target else None,
            cublas_f32_tmacs=_BASELINES[f32_key] / 1e12)


@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_scale_sign_compress(benchmark, backend):
    """sign_compress (project then reconstruct) of a 512x512x3x3 conv weight with k = 10^6."""
    reason = _available(backend)
    if reason:
        pytest.skip(reason)
    w = torch.randn(512, 512, 3, 3, device="cuda")
    fn = lambda: stabkern.sign_compress(w, SCALE_K, seed=SEED, backend=backend)  # noqa: E731
    seconds = _bench(benchmark, fn, rounds=2, inner=1)
    _record("scale", "compress", backend, "highest", (1, GEMV_N, SCALE_K), "float32", seconds,
            2 * GEMV_N * SCALE_K, ceiling="alu_estimate", ceiling_rate=_alu_ceiling())
