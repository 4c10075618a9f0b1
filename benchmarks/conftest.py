"""Shared reporting and timing for the pytest-benchmark suites under benchmarks/.

Every suite reports the same way. `bench_report(prefix)` (a fixture) returns the session's
`BenchReport` for one results file and each measurement adds a row: case, shape, dtype, device,
backend, median time, rate (work per second in the row's unit), the baseline's rate measured in the
same run, the speed-up over it and the percentage of the case's ceiling. Baselines and measured
ceilings are rows of the same report that other rows name by key; their rates are looked up when
the report is printed or written, so the order in which cases run does not matter.

Each row is printed when it is measured (pytest -s shows it) and the report is rewritten to
<out>/<prefix>-<date>.json, with the machine (CPU, clock, load, GPU, driver, CUDA, library
versions, git revision), and its table to <prefix>-<date>.txt, so a run cut short by a time box
(gpu_check.sh) keeps every row measured so far. <out> is $STABKERN_BENCH_OUT (the GPU machine's
$OUT), else benchmarks/results/. At the end of the session every report is written once more
(pytest_sessionfinish) and its table printed (pytest_terminal_summary).

`bench_time` (a fixture, = `median_seconds`) is the one timer: the median over rounds of seconds per
call, CUDA-synchronized, through pytest-benchmark when the test's `benchmark` fixture is passed.

`cpu_clock_ghz()` (fixture `cpu_clock`) measures the core clock (for ALU ceilings) with a dependent
chain of integer adds, one per cycle, compiled on the fly; it falls back to /proc/cpuinfo's MHz.
`gpu_info()` (fixture `gpu`) gives the GPU's name, SMs, driver, CUDA and maximum SM clock.

bench_*.py files are collected when the folder is given (`pytest benchmarks`), as well as by name.
"""

from __future__ import annotations

import ctypes
import datetime
import functools
import json
import os
import platform
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import torch

RESULTS = Path(__file__).parent / "results"
_REPORTS: dict[str, "BenchReport"] = {}


def out_dir() -> Path:
    """Where reports are written: $STABKERN_BENCH_OUT (the GPU machine's $OUT), else benchmarks/results/."""
    return Path(os.environ.get("STABKERN_BENCH_OUT") or RESULTS)


class BenchReport:
    """The rows of one results file; see the module note."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.rows: list[dict] = []
        self.notes: dict = {}
        self.load_at_start = os.getloadavg() if hasattr(os, "getloadavg") else None
        self.path: Path | None = None

    def add(self, case: str, *, shape, dtype, device: str, backend: str, median_s: float | None, work: float,
            unit: str, key: str | None = None, baseline: str | None = None, ceiling: str | None = None,
            ceiling_rate: float | None = None, **extra) -> dict | None:
        """Record one measurement of `work` units done in median_s seconds; returns the row.

        rate = work / median_s in `unit` (e.g. "sign-MAC/s"). key: the name other rows use for this
        one; baseline: the key of the baseline's row (a baseline row names itself); ceiling: the key
        of the ceiling's row, or the ceiling's name when ceiling_rate (computed, in `unit`) is given.
        median_s None (pytest --benchmark-disable) records nothing and returns None.
        """
        if median_s is None:
            return None
        if key is not None and self.row(key) is not None:
            raise ValueError(f"{self.prefix}: two rows with key {key!r}")
        row = dict(case=case, shape=list(shape), dtype=str(dtype).replace("torch.", ""), device=device,
                   backend=backend, median_s=median_s, rate=work / median_s, unit=unit, key=key, baseline=baseline,
                   baseline_rate=None, speedup=None, ceiling=ceiling, ceiling_rate=ceiling_rate, pct_ceiling=None,
                   ceiling_measured=bool(ceiling) and ceiling_rate is None, **extra)
        self.rows.append(row)
        self._resolve(row)
        print(f"[{self.prefix}] " + "  ".join(self._cells(row)), flush=True)
        self.write()
        return row

    def row(self, key: str) -> dict | None:
        return next((r for r in self.rows if r["key"] == key), None)

    def _rate_of(self, row: dict, key: str) -> float | None:
        ref = self.row(key)
        if ref is None:
            return None
        if ref["unit"] != row["unit"]:
            raise ValueError(f"{self.prefix}: {row['case']!r} in {row['unit']} refers to {key!r} in {ref['unit']}")
        return ref["rate"]

    def _resolve(self, row: dict) -> None:
        """Fill baseline_rate, speedup, a measured ceiling's rate and pct_ceiling from the rows so far."""
        if row["baseline"]:
            row["baseline_rate"] = self._rate_of(row, row["baseline"])
        if row["ceiling_measured"]:
            row["ceiling_rate"] = self._rate_of(row, row["ceiling"])
        row["speedup"] = row["rate"] / row["baseline_rate"] if row["baseline_rate"] else None
        row["pct_ceiling"] = 100 * row["rate"] / row["ceiling_rate"] if row["ceiling_rate"] else None

    def resolve(self) -> None:
        for row in self.rows:
            self._resolve(row)

    def _cells(self, r: dict) -> list[str]:
        """A row's table cells; a measured ceiling is named by its row's backend."""
        ceiling = self.row(r["ceiling"]) if r["ceiling_measured"] else None
        other = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()
                         if k not in _STANDARD and v is not None)
        return [r["case"], "x".join(map(str, r["shape"])), r["dtype"], r["device"], r["backend"],
                f"{1e3 * r['median_s']:.3f}", _si(r["rate"]), r["unit"], _si(r["baseline_rate"]),
                f"{r['speedup']:.2f}x" if r["speedup"] else "-",
                f"{r['pct_ceiling']:.1f}%" if r["pct_ceiling"] else "-",
                (ceiling["backend"] if ceiling else r["ceiling"]) or "-", other]

    def table(self) -> str:
        """The rows as an aligned text table (rates with SI prefixes, in each row's unit)."""
        header = ["case", "shape", "dtype", "device", "backend", "median ms", "rate", "unit", "baseline",
                  "speed-up", "%ceiling", "ceiling", "other"]
        lines = [self._cells(r) for r in self.rows]
        width = [max(len(c) for c in col) for col in zip(header, *lines)]
        fmt = "  ".join(f"{{:<{w}}}" for w in width)
        return "\n".join([fmt.format(*header)] + [fmt.format(*line).rstrip() for line in lines])

    def write(self) -> Path:
        """Write <out>/<prefix>-<date>.json and .txt (the date of the first write); returns the JSON's path."""
        self.resolve()
        if self.path is None:
            out = out_dir()
            out.mkdir(parents=True, exist_ok=True)
            self.path = out / f"{self.prefix}-{datetime.date.today().isoformat()}.json"
        path = self.path
        machine = dict(machine_info(), load_average_at_start=self.load_at_start,
                       load_average_at_end=os.getloadavg() if hasattr(os, "getloadavg") else None)
        path.write_text(json.dumps({"machine": machine, "notes": self.notes, "rows": self.rows}, indent=1,
                                   default=str))
        notes = [f"{k}: {v}" for k, v in self.notes.items()]
        path.with_suffix(".txt").write_text("\n".join([self.table(), *notes]) + "\n")
        return path


_STANDARD = {"case", "shape", "dtype", "device", "backend", "median_s", "rate", "unit", "key", "baseline",
             "baseline_rate", "speedup", "ceiling", "ceiling_rate", "pct_ceiling", "ceiling_measured"}


def _si(v: float | None) -> str:
    """3 significant digits with an SI prefix: 2.84e8 -> '284M'."""
    if v is None:
        return "-"
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"), (1, "")):
        if abs(v) >= scale:
            return f"{v / scale:.3g}{prefix}"
    return f"{v:.3g}"


def median_seconds(fn, *, rounds: int, inner: int = 1, warmup: int = 1, cuda: bool = False,
                   benchmark=None) -> float | None:
    """Median over `rounds` rounds of seconds per call of fn; each round makes `inner` calls and, when
    `cuda`, ends with torch.cuda.synchronize(); `warmup` untimed rounds first (compiles, caches, cuDNN).

    With `benchmark` (the pytest-benchmark fixture) the rounds run through benchmark.pedantic, so its
    table and --benchmark-* options apply; returns None when it is disabled (--benchmark-disable).
    """

    def one_round():
        for _ in range(inner):
            fn()
        if cuda:
            torch.cuda.synchronize()

    if cuda:
        torch.cuda.synchronize()
    if benchmark is not None:
        benchmark.pedantic(one_round, rounds=rounds, iterations=1, warmup_rounds=warmup)
        return None if benchmark.disabled else benchmark.stats.stats.median / inner
    for _ in range(warmup):
        one_round()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        one_round()
        times.append(time.perf_counter() - start)
    return statistics.median(times) / inner


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _run(cmd: list[str], cwd=None) -> str | None:
    """stdout of cmd, stripped; None when it cannot run or fails."""
    try:
        done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _git_revision() -> str:
    root = Path(__file__).parent.parent
    rev = _run(["git", "rev-parse", "HEAD"], root)
    if not rev:
        return os.environ.get("STABKERN_GIT_REV", "unknown")
    dirty = _run(["git", "status", "--porcelain", "--untracked-files=no"], root)
    return rev + ("+dirty" if dirty else "")


@functools.lru_cache(maxsize=None)
def gpu_info() -> dict | None:
    """GPU 0: name, capability, SMs, memory, driver, CUDA runtime, cuDNN, maximum SM clock (MHz, how known);
    None without CUDA. The clock comes from nvidia-smi (NVML's maximum), else the H100 SXM boost figure."""
    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(0)
    smi = _run(["nvidia-smi", "-i", "0", "--query-gpu=driver_version,clocks.max.sm", "--format=csv,noheader,nounits"])
    driver, clock = (smi.split(", ") + [None, None])[:2] if smi else (None, None)
    try:
        mhz, how = float(clock), "nvidia-smi clocks.max.sm"
    except (TypeError, ValueError):
        mhz, how = 1980.0, "assumed 1980 MHz (H100 SXM boost)"
    return dict(name=props.name, capability=f"{props.major}.{props.minor}", sms=props.multi_processor_count,
                memory_gib=round(props.total_memory / 2 ** 30, 1), driver=driver, cuda=torch.version.cuda,
                cudnn=torch.backends.cudnn.version(), sm_clock_mhz=mhz, sm_clock_how=how)


@functools.lru_cache(maxsize=None)
def _static_machine_info() -> dict:
    info = dict(cpu=_cpu_name(), machine=platform.machine(), logical_cpus=os.cpu_count(),
                clock_ghz=cpu_clock_ghz(), python=platform.python_version(), torch=torch.__version__,
                torch_threads=torch.get_num_threads(), gpu=gpu_info(), git_revision=_git_revision())
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    return info


def machine_info() -> dict:
    return dict(_static_machine_info(), date=datetime.datetime.now().isoformat(timespec="seconds"))


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
    """bench_report(prefix) -> the BenchReport written to <out>/<prefix>-<date>.json."""

    def get(prefix: str) -> BenchReport:
        return _REPORTS.setdefault(prefix, BenchReport(prefix))

    return get


@pytest.fixture(scope="session")
def bench_time():
    """median_seconds(fn, rounds=..., inner=1, warmup=1, cuda=False, benchmark=None)."""
    return median_seconds


@pytest.fixture(scope="session")
def cpu_clock() -> dict:
    """cpu_clock_ghz(): {"ghz": ..., "how": ...}."""
    return cpu_clock_ghz()


@pytest.fixture(scope="session")
def gpu() -> dict | None:
    """gpu_info() (None without CUDA)."""
    return gpu_info()


def pytest_collect_file(file_path, parent):
    """bench_*.py are test modules here; a file named on the command line is collected by pytest itself."""
    if file_path.suffix == ".py" and file_path.name.startswith("bench_") and not parent.session.isinitpath(file_path):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


def pytest_sessionfinish(session):
    """The final write: load average at the end, notes added after the last row."""
    for report in _REPORTS.values():
        if report.rows:
            report.write()


def pytest_terminal_summary(terminalreporter):
    for report in _REPORTS.values():
        if not report.rows:
            continue
        terminalreporter.write_sep("=", f"{report.prefix} results")
        terminalreporter.write_line(report.table())
        for key, value in report.notes.items():
            terminalreporter.write_line(f"{key}: {value}")
        terminalreporter.write_line(f"written to {report.path} (and .txt)")
