"""GPU benchmarks of the sign kernels: GEMV, GEMM and scale, each backend and precision mode.

Run (GPU): STABKERN_BENCH_OUT=/some/dir python -m pytest benchmarks/bench_sign_gpu.py -s
Every case skips without a GPU. Results: one row per case (and per baseline), printed as measured and
as a table at the end, and written with the machine (GPU name, SMs, driver, CUDA, torch/Triton
versions, git revision) and the measured rule for backend="auto" (notes) to
$STABKERN_BENCH_OUT, else benchmarks/results/, as sign-gpu-<date>.json (see conftest.py).

Rates are sign-MACs per second: a sign-MAC is one multiply-add with one sign of S, so projection
and reconstruction of (rows, n) with k rows of S do rows * n * k of them; GEMM rows also give TFLOP/s
(2 per MAC) to compare with cuBLAS. Baselines and ceilings are measured in the same run:

- GEMV (n = 2,359,296, k = 4096, float32, one row): baseline "torch materialized": materialize chunks
  of a sign matrix (torch.randint) and matmul, what users do without stabkern (README, "GPU backends"); ceiling:
  the CUDA-core ALU estimate, SMs x max SM clock x 128 lanes / 3 instructions per sign (shift, LOP3,
  FADD). Target >= 10 T sign-MAC/s.
- GEMM (512 x 4608, k = 4096 and 16384): ceiling cuBLAS bf16 on a materialized sign matrix of the same
  shape (target >= 90% of it for "medium"); baseline cuBLAS float32 without TF32 for "highest"
  (target >= 2x), cuBLAS bf16 for "high" and "medium".
- scale: sign_compress of n = 2,359,296 with k = 10^6; baseline the GEMV torch rate (per sign-MAC,
  projection), ceiling the ALU estimate.
Times are medians of CUDA-synchronized rounds (several launches per round for short kernels).
"""

from __future__ import annotations

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
UNIT = "sign-MAC/s"


def _available(backend: str) -> str | None:
    b = backends.BACKENDS[backend]
    return b.missing() or b.refuses(torch.device("cuda"), torch.float32)


def _alu_ceiling(gpu: dict) -> float:
    """CUDA-core estimate in sign-MAC/s: SMs x max SM clock x 128 lanes / 3 instructions per sign."""
    return gpu["sms"] * gpu["sm_clock_mhz"] * 1e6 * 128 / 3


def _report(bench_report, gpu):
    report = bench_report("sign-gpu")
    report.notes["alu_estimate"] = f"{gpu['sms']} SMs x {gpu['sm_clock_mhz']} MHz ({gpu['sm_clock_how']}) x 128 / 3"
    return report


def _update_auto_rule(report) -> None:
    """notes["auto_rule"]: the faster backend per form and op at the default precision, from this run's rows."""
    rule = {}
    for kind in ("gemv", "gemm"):
        for op in ("project", "reconstruct"):
            times = {r["backend"]: 1e3 * r["median_s"] for r in report.rows
                     if r["case"] == f"{kind} {op}" and r.get("precision") == "highest"
                     and r["backend"] in ("cuda", "triton") and not r.get("forced_form")
                     and (kind == "gemv" or r["shape"][2] == GEMM_KS[0])}
            if times:
                rule[f"{kind}_{op}"] = dict(faster=min(times, key=times.get), time_ms=times)
    report.notes["auto_rule"] = rule


# --------------------------------------------------------------------------- baselines (same run)


def _gemv_torch_baseline(report, bench_time, gpu, op: str) -> str:
    """Row (key returned) of torch materialize-and-matmul for the GEMV shape (chunks of 256 rows of S)."""
    key = f"torch gemv {op}"
    if report.row(key) is None:
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

        report.add(f"gemv {op}", shape=(1, GEMV_N, GEMV_K), dtype="float32", device="cuda",
                   backend="torch materialized", median_s=bench_time(run, rounds=3, warmup=1, cuda=True),
                   work=GEMV_N * GEMV_K, unit=UNIT, key=key, baseline=key, ceiling="alu_estimate",
                   ceiling_rate=_alu_ceiling(gpu))
    return key


def _gemm_cublas_baselines(report, bench_time, op: str, k: int) -> tuple[str, str]:
    """Rows (keys returned) of cuBLAS bf16 and float32 (no TF32) on a materialized sign matrix of the GEMM shape."""
    bf16_key, f32_key = f"cublas bf16 gemm {op} k={k}", f"cublas f32 gemm {op} k={k}"
    if report.row(bf16_key) is None:
        s = torch.randint(0, 2, (k, GEMM_N), device="cuda", dtype=torch.int8).float().mul_(2).sub_(1)
        a = torch.randn(GEMM_ROWS, GEMM_N if op == "project" else k, device="cuda")
        rhs = s.T.contiguous() if op == "project" else s  # (n, k) or (k, n)
        macs = GEMM_ROWS * GEMM_N * k
        a16, r16 = a.bfloat16(), rhs.bfloat16()
        common = dict(shape=(GEMM_ROWS, GEMM_N, k), device="cuda", work=macs, unit=UNIT, ceiling=bf16_key)
        t16 = bench_time(lambda: a16 @ r16, rounds=10, inner=10, warmup=1, cuda=True)
        tf32 = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False
        try:
            t32 = bench_time(lambda: a @ rhs, rounds=5, inner=5, warmup=1, cuda=True)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = tf32
        for row in (report.add(f"gemm {op}", dtype="bfloat16", backend="cublas bf16", median_s=t16, key=bf16_key,
                               baseline=bf16_key, **common),
                    report.add(f"gemm {op}", dtype="float32", backend="cublas f32", median_s=t32, key=f32_key,
                               baseline=f32_key, **common)):
            row["tflops"] = 2 * row["rate"] / 1e12
    return bf16_key, f32_key


# --------------------------------------------------------------------------- cases


def _call(op: str, backend: str, a: torch.Tensor, k: int, n: int, precision: str, plan=None):
    """One projection (a: (rows, n) -> k) or reconstruction (a: (rows, k) -> n) through the backend."""
    b = backends.BACKENDS[backend]
    if plan is not None:  # a forced form, through the backend's own module
        if backend == "cuda":
            from stabkern.backends import cuda as cuda_sign

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
def test_gemv(benchmark, bench_report, bench_time, gpu, op, backend, precision, form):
    reason = _available(backend)
    if reason:
        pytest.skip(reason)
    report = _report(bench_report, gpu)
    base = _gemv_torch_baseline(report, bench_time, gpu, op)
    a = torch.randn(1, GEMV_N if op == "project" else GEMV_K, device="cuda")
    plan = None
    if form:
        from stabkern.backends import cuda as cuda_sign

        plan = (cuda_sign.plan_project(1, GEMV_N, GEMV_K, torch.float32, "medium", a.device) if op == "project" else
                cuda_sign.plan_reconstruct(1, GEMV_N, GEMV_K, torch.float32, "medium", a.device))
        assert plan.form == form
    fn = _call(op, backend, a, GEMV_K, GEMV_N, precision, plan)
    row = report.add(f"gemv {op}", shape=(1, GEMV_N, GEMV_K), dtype="float32", device="cuda", backend=backend,
                     median_s=bench_time(fn, rounds=10, inner=3, warmup=1, cuda=True, benchmark=benchmark),
                     work=GEMV_N * GEMV_K, unit=UNIT, baseline=base, ceiling="alu_estimate",
                     ceiling_rate=_alu_ceiling(gpu), precision=precision, forced_form=form, target="10T sign-MAC/s")
    if row:
        row["meets_target"] = row["rate"] >= 10e12
        _update_auto_rule(report)


GEMM_CASES = [(op, backend, precision, k) for k in GEMM_KS for op in ("project", "reconstruct")
              for backend in ("cuda", "triton") for precision in PRECISIONS]


@pytest.mark.parametrize("op,backend,precision,k", GEMM_CASES)
def test_gemm(benchmark, bench_report, bench_time, gpu, op, backend, precision, k):
    reason = _available(backend)
    if reason:
        pytest.skip(reason)
    report = _report(bench_report, gpu)
    bf16_key, f32_key = _gemm_cublas_baselines(report, bench_time, op, k)
    a = torch.randn(GEMM_ROWS, GEMM_N if op == "project" else k, device="cuda")
    fn = _call(op, backend, a, k, GEMM_N, precision)
    macs = GEMM_ROWS * GEMM_N * k
    target = dict(medium=">= 90% of ceiling", highest=">= 2x baseline").get(precision)
    row = report.add(f"gemm {op}", shape=(GEMM_ROWS, GEMM_N, k), dtype="float32", device="cuda", backend=backend,
                     median_s=bench_time(fn, rounds=10, inner=10, warmup=1, cuda=True, benchmark=benchmark),
                     work=macs, unit=UNIT, baseline=f32_key if precision == "highest" else bf16_key, ceiling=bf16_key,
                     precision=precision, target=target)
    if row:
        row["tflops"] = 2 * row["rate"] / 1e12
        if precision == "medium" and row["pct_ceiling"]:
            row["meets_target"] = row["pct_ceiling"] >= 90
        if precision == "highest" and row["speedup"]:
            row["meets_target"] = row["speedup"] >= 2
        _update_auto_rule(report)


@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_scale_sign_compress(benchmark, bench_report, bench_time, gpu, backend):
    """sign_compress (project then reconstruct) of a 512x512x3x3 conv weight with k = 10^6."""
    reason = _available(backend)
    if reason:
        pytest.skip(reason)
    report = _report(bench_report, gpu)
    base = _gemv_torch_baseline(report, bench_time, gpu, "project")
    w = torch.randn(512, 512, 3, 3, device="cuda")
    fn = lambda: stabkern.sign_compress(w, SCALE_K, seed=SEED, backend=backend)  # noqa: E731
    report.add("scale compress", shape=(1, GEMV_N, SCALE_K), dtype="float32", device="cuda", backend=backend,
               median_s=bench_time(fn, rounds=2, warmup=1, cuda=True, benchmark=benchmark), work=2 * GEMV_N * SCALE_K,
               unit=UNIT, baseline=base, ceiling="alu_estimate", ceiling_rate=_alu_ceiling(gpu), precision="highest")
