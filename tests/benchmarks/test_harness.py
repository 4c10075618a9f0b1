"""The benchmark suites under benchmarks/ still import and gpu_check.sh still parses; no timing runs.

CI runs tests/ only, so without this a syntax error or a renamed import in a benchmark would be
found on the next (rare, time-boxed) GPU run.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
SUITES = sorted(p.name for p in BENCH.glob("bench_*.py"))


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"stabkern_benchmarks_{Path(name).stem}", BENCH / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_four_suites_are_found():
    assert SUITES == ["bench_compress.py", "bench_sign_cpu.py", "bench_sign_gpu.py", "bench_stability.py"]


@pytest.mark.parametrize("name", SUITES)
def test_suite_imports_and_has_cases(name):
    module = _load(name)
    assert [n for n in vars(module) if n.startswith("test_") and callable(getattr(module, n))]


@pytest.mark.parametrize("name", ["conftest.py", "cuda_resource_report.py"])
def test_helper_imports(name):
    _load(name)


def test_bench_report_rows_resolve_baseline_and_ceiling():
    """The shared report: a row's baseline and measured ceiling are found by key whatever the order."""
    report = _load("conftest.py").BenchReport("smoke")
    report.write = lambda: None  # no results file from a test
    fast = report.add("c", shape=(2, 3), dtype="float32", device="cpu", backend="fast", median_s=1.0, work=8.0,
                      unit="op/s", baseline="base", ceiling="copy")
    report.add("c", shape=(2, 3), dtype="float32", device="cpu", backend="slow", median_s=4.0, work=8.0, unit="op/s",
               key="base", baseline="base", ceiling="copy")
    report.add("c", shape=(2, 3), dtype="float32", device="cpu", backend="clone", median_s=0.5, work=8.0, unit="op/s",
               key="copy", ceiling="copy")
    report.resolve()
    assert (fast["rate"], fast["baseline_rate"], fast["speedup"], fast["pct_ceiling"]) == (8.0, 2.0, 4.0, 50.0)
    assert "fast" in report.table() and "4.00x" in report.table()
    with pytest.raises(ValueError, match="two rows"):
        report.add("c", shape=(1,), dtype="float32", device="cpu", backend="x", median_s=1.0, work=1.0, unit="op/s",
                   key="base")


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_check_script_parses():
    done = subprocess.run(["bash", "-n", str(BENCH / "gpu_check.sh")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
