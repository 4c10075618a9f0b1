"""The benchmark suites under benchmarks/ still import, the harness (benchmarks/harness/) reports and
writes as documented, and gpu_check.sh still parses; no timing runs (the clock probe: test_clock.py).

CI runs tests/ only, so without this a syntax error or a renamed import in a benchmark would be
found on the next (rare, time-boxed) GPU run.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import re
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


def _harness(module: str, monkeypatch):
    """benchmarks/harness/<module>.py, imported as the suites import it (benchmarks/ on sys.path)."""
    monkeypatch.syspath_prepend(str(BENCH))
    return importlib.import_module(f"harness.{module}")


def test_every_suite_is_found():
    assert SUITES == ["bench_card.py", "bench_compress.py", "bench_sign_cpu.py", "bench_sign_gpu.py",
                      "bench_stability.py", "bench_study.py"]


@pytest.mark.parametrize("name", SUITES)
def test_suite_imports_and_has_cases(name):
    module = _load(name)
    assert [n for n in vars(module) if n.startswith("test_") and callable(getattr(module, n))]


@pytest.mark.parametrize("name", ["conftest.py", "cuda_resource_report.py"])
def test_helper_imports(name):
    _load(name)


@pytest.mark.parametrize("module", ["report", "timer", "machine"])
def test_harness_modules_import(module, monkeypatch):
    assert _harness(module, monkeypatch).__doc__


def test_conftest_keeps_the_fixtures_and_uses_the_harness(monkeypatch):
    conftest = _load("conftest.py")
    for name in ("bench_report", "bench_time", "cpu_clock", "gpu", "pytest_collect_file", "pytest_sessionfinish"):
        assert hasattr(conftest, name), name
    assert conftest.median_seconds is _harness("timer", monkeypatch).median_seconds
    assert conftest.BenchReport is _harness("report", monkeypatch).BenchReport


def test_bench_report_rows_resolve_baseline_and_ceiling(monkeypatch):
    """The shared report: a row's baseline and measured ceiling are found by key whatever the order."""
    report = _harness("report", monkeypatch).BenchReport("smoke")
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


def test_bench_report_writes_json_and_table_to_bench_out(tmp_path, monkeypatch):
    """$STABKERN_BENCH_OUT decides where a report goes; the JSON holds machine, notes and rows."""
    report_mod = _harness("report", monkeypatch)
    monkeypatch.setattr(report_mod, "machine_info", lambda: {"cpu": "test"})  # no clock probe here
    monkeypatch.setenv("STABKERN_BENCH_OUT", str(tmp_path))
    report = report_mod.BenchReport("smoke")
    report.add("c", shape=(4,), dtype="float32", device="cpu", backend="b", median_s=0.5, work=2.0, unit="op/s",
               key="b", baseline="b")
    report.notes["n"] = "a note"
    path = report.write()
    assert path.parent == tmp_path and path.name.startswith("smoke-")
    doc = json.loads(path.read_text())
    assert doc["machine"]["cpu"] == "test" and doc["notes"] == {"n": "a note"}
    assert [(r["rate"], r["speedup"]) for r in doc["rows"]] == [(4.0, 1.0)]
    text = path.with_suffix(".txt").read_text()
    assert "a note" in text and "load average (1, 5, 15 min) at start" in text  # a loaded machine is noisy


def test_median_seconds_is_the_median_per_call(monkeypatch):
    timer = _harness("timer", monkeypatch)
    ticks = iter([0.0, 3.0, 10.0, 11.0, 20.0, 22.0])  # rounds of 3, 1 and 2 seconds
    monkeypatch.setattr(timer.time, "perf_counter", lambda: next(ticks))
    calls = []
    assert timer.median_seconds(lambda: calls.append(1), rounds=3, inner=2, warmup=1) == 1.0
    assert len(calls) == 8  # one warm-up round and three timed rounds of two calls


def test_interleaved_medians_rotate_the_order_and_skip_the_warm_up(monkeypatch):
    """Every contender runs once a round, the first of each round rotating; warm-up calls are not timed; a
    self-timed contender's own figure is taken as it is."""
    timer = _harness("timer", monkeypatch)
    clock = iter(range(100))  # perf_counter: each timed call of a and b takes 1 s
    monkeypatch.setattr(timer.time, "perf_counter", lambda: float(next(clock)))
    order = []
    own = iter([9.0, 5.0, 7.0, 6.0])  # c's warm-up figure (9.0) is not kept

    def c():
        order.append("c")
        return next(own)

    medians = timer.interleaved_medians({"a": lambda: order.append("a"), "b": lambda: order.append("b"), "c": c},
                                        rounds=3, warmup=1, self_timed=("c",))
    assert order == ["a", "b", "c", "a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert medians == {"a": 1.0, "b": 1.0, "c": 6.0}


def test_cpu_identity_reads_the_first_processor(monkeypatch):
    """Vendor, family and model as integers from /proc/cpuinfo's first block (a VM's model name can be bare)."""
    machine = _harness("machine", monkeypatch)
    cpuinfo = ("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 1\n"
               "model name\t: AMD EPYC\nstepping\t: 1\n\nprocessor\t: 1\nvendor_id\t: GenuineIntel\n")
    ident = machine.cpu_identity(cpuinfo)
    assert (ident["vendor"], ident["family"], ident["model"], ident["stepping"]) == ("AuthenticAMD", 25, 1, 1)
    assert {"l1d_kib", "l2_kib", "l3_kib"} <= set(ident)


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_check_script_parses():
    done = subprocess.run(["bash", "-n", str(BENCH / "gpu_check.sh")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_gpu_check_names_existing_tests_and_suites():
    """gpu_check.sh runs on a rare, time-boxed GPU machine: a path it names that a move left behind
    would cost that run a step."""
    script = (BENCH / "gpu_check.sh").read_text()
    paths = set(re.findall(r"\b((?:tests|benchmarks)/[\w/]+\.py)\b", script))
    assert len(paths) >= 10, paths
    missing = [p for p in sorted(paths) if not (BENCH.parent / p).is_file()]
    assert not missing, missing
