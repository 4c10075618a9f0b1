"""Shared helpers for the pytest-benchmark suites under benchmarks/.

`bench_report(prefix)` (a fixture) returns the session's report for one results file; tests add a
row per measurement. At the end of the session every report prints as a table and is written, with
the machine, library versions and git revision, to benchmarks/results/<prefix>-<date>.json.

`cpu_clock_ghz()` (fixture `cpu_clock`) measures the core clock (for ALU ceilings) with a dependent
chain of integer adds, one per cycle, compiled on the fly; it falls back to /proc/cpuinfo's MHz.
"""

from __future__ import annotations

import ctypes
import datetime
import functools
import json
import os
import platform
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import torch

RESULTS = Path(__file__).parent / "results"
_REPORTS: dict[str, "BenchReport"] = {}


class BenchReport:
    """Rows of {case, shape, dtype, backend, median_s, rate, baseline_rate, speedup, pct_ceiling, ...}."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.rows: list[dict] = []
        self.notes: dict = {}

    def add(self, case: str, *, shape, dtype, backend: str, median_s: float, work: float,
            baseline_rate: float | None = None, ceiling_rate: float | None = None, unit: str = "G sign-MAC/s",
            **extra) -> dict:
        """Record one measurement; rate = work / median_s / 1e9 in `unit`. Returns the row."""
        rate = work / median_s / 1e9
        row = dict(case=case, shape=list(shape), dtype=str(dtype).replace("torch.", ""), backend=backend,
                   median_s=median_s, rate=rate, unit=unit, baseline_rate=baseline_rate,
                   speedup=rate / baseline_rate if baseline_rate else None, ceiling_rate=ceiling_rate,
                   pct_ceiling=100 * rate / ceiling_rate if ceiling_rate else None, **extra)
        self.rows.append(row)
        return row

    def table(self) -> str:
        cols = ["case", "shape", "dtype", "backend", "median_ms", "rate", "speedup", "%ceiling"]
        extra = sorted({k for r in self.rows for k in r} - {"case", "shape", "dtype", "backend", "median_s", "rate",
                                                             "unit", "baseline_rate", "speedup", "ceiling_rate",
                                                             "pct_ceiling"})
        lines = []
        for r in self.rows:
            lines.append([r["case"], "x".join(map(str, r["shape"])), r["dtype"], r["backend"],
                          f"{1e3 * r['median_s']:.2f}", f"{r['rate']:.3g}",
                          f"{r['speedup']:.1f}x" if r["speedup"] else "-",
                          f"{r['pct_ceiling']:.0f}%" if r["pct_ceiling"] else "-"]
                         + [str(r.get(k, "")) for k in extra])
        header = cols + extra
        width = [max(len(str(c)) for c in col) for col in zip(header, *lines)]
        fmt = "  ".join(f"{{:<{w}}}" for w in width)
        units = sorted({r["unit"] for r in self.rows})
        return "\n".join([f"{self.prefix}: rate in {', '.join(units)}", fmt.format(*header)]
                         + [fmt.format(*line) for line in lines])

    def write(self) -> Path:
        RESULTS.mkdir(exist_ok=True)
        path = RESULTS / f"{self.prefix}-{datetime.date.today().isoformat()}.json"
        path.write_text(json.dumps({"machine": machine_info(), "notes": self.notes, "rows": self.rows}, indent=2))
        return path


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_revision() -> str:
    root = Path(__file__).parent.parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except OSError:
        return "unknown"


def machine_info() -> dict:
    info = dict(cpu=_cpu_name(), machine=platform.machine(), logical_cpus=os.cpu_count(),
                clock_ghz=cpu_clock_ghz(), python=platform.python_version(), torch=torch.__version__,
                torch_threads=torch.get_num_threads(), git_revision=_git_revision(),
                date=datetime.datetime.now().isoformat(timespec="seconds"))
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if hasattr(os, "getloadavg"):
        info["load_average"] = os.getloadavg()
    return info


# Register-register adds: some cores (Intel Golden Cove) resolve add-immediate chains at rename,
# faster than one per cycle, so the addend is a run-time register value.
_CLOCK_PROBE = r"""
long chain(long n, long one) {
  long x = 0;
  for (long i = 0; i < n; ++i) {
#if defined(__x86_64__)
    __asm__ volatile("add %1, %0" : "+r"(x) : "r"(one));
#elif defined(__aarch64__)
    __asm__ volatile("add %0, %0, %1" : "+r"(x) : "r"(one));
#else
#error no probe for this architecture
#endif
  }
  return x;
}
"""


@functools.lru_cache(maxsize=None)
def cpu_clock_ghz() -> dict:
    """{"ghz": core clock, "how": ...}: a chain of dependent adds runs at one per cycle."""
    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if cc:
        with tempfile.TemporaryDirectory() as tmp:
            src, lib = Path(tmp) / "probe.c", Path(tmp) / "probe.so"
            src.write_text(_CLOCK_PROBE)
            if subprocess.run([cc, "-O2", "-shared", "-fPIC", str(src), "-o", str(lib)],
                              capture_output=True).returncode == 0:
                chain = ctypes.CDLL(str(lib)).chain
                chain.argtypes, chain.restype = [ctypes.c_long, ctypes.c_long], ctypes.c_long
                n, best = 100_000_000, float("inf")
                for _ in range(5):  # best of 5: other processes only ever slow it down
                    t = time.perf_counter()
                    chain(n, 1)
                    best = min(best, time.perf_counter() - t)
                return {"ghz": round(n / best / 1e9, 3), "how": "dependent register adds, one per cycle (best of 5)"}
    try:
        with open("/proc/cpuinfo") as f:
            mhz = next(float(line.split(":")[1]) for line in f if line.startswith("cpu MHz"))
        return {"ghz": mhz / 1e3, "how": "/proc/cpuinfo cpu MHz (nominal)"}
    except (OSError, StopIteration):
        return {"ghz": None, "how": "unknown"}


@pytest.fixture(scope="session")
def bench_report():
    """bench_report(prefix) -> the BenchReport written to results/<prefix>-<date>.json."""

    def get(prefix: str) -> BenchReport:
        return _REPORTS.setdefault(prefix, BenchReport(prefix))

    return get


@pytest.fixture(scope="session")
def cpu_clock() -> dict:
    """cpu_clock_ghz(): {"ghz": ..., "how": ...}."""
    return cpu_clock_ghz()


def pytest_terminal_summary(terminalreporter):
    for report in _REPORTS.values():
        if not report.rows:
            continue
        terminalreporter.write_sep("=", f"{report.prefix} results")
        terminalreporter.write_line(report.table())
        for key, value in report.notes.items():
            terminalreporter.write_line(f"{key}: {value}")
        terminalreporter.write_line(f"written to {report.write().relative_to(RESULTS.parent.parent)}")
