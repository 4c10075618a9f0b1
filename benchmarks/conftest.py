"""pytest fixtures and hooks of the benchmark suites under benchmarks/; the harness itself is benchmarks/harness/.

Fixtures (session-wide):
- `bench_report(prefix)`: the session's `harness.BenchReport` for one results file,
  <out>/<prefix>-<date>.json and .txt, <out> = $STABKERN_BENCH_OUT, else benchmarks/results/;
- `bench_time`: `harness.median_seconds`, the timer of one contender;
- `bench_interleaved`: `harness.interleaved_medians`, the timer of contenders timed in turn;
- `cpu_clock`: `harness.cpu_clock_ghz()`, the measured core clock {"ghz", "how", ...};
- `cpu_identity`: `harness.cpu_identity()`, {"vendor", "family", "model", "stepping", caches};
- `gpu`: `harness.gpu_info()`, None without CUDA.
Hooks: bench_*.py files are collected when the folder is given (`pytest benchmarks`), as well as by
name; at the end of the session every report is written once more (pytest_sessionfinish) and its
table printed (pytest_terminal_summary).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# pytest's default import mode puts this folder on sys.path for this file; --import-mode=importlib and
# tests/benchmarks/test_harness.py (which loads this file by path) do not.
if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import BenchReport, cpu_clock_ghz, gpu_info, interleaved_medians, median_seconds  # noqa: E402
from harness import cpu_identity as _cpu_identity  # noqa: E402

_REPORTS: dict[str, BenchReport] = {}


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
def bench_interleaved():
    """interleaved_medians(contenders, rounds=..., warmup=1, self_timed=(), settle_s=0.0)."""
    return interleaved_medians


@pytest.fixture(scope="session")
def cpu_identity() -> dict:
    """cpu_identity(): {"vendor", "family", "model", "stepping", "l1d_kib", "l2_kib", "l3_kib"}."""
    return _cpu_identity()


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
