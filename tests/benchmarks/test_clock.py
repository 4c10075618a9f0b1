"""The core clock of benchmarks/harness/machine.py, which the CPU ceilings of bench_sign_cpu.py divide by.

Three checks that can fail and do not flake under load (the probe reads thread CPU time, so other
processes on a shared machine do not slow it; a busy 2-core CI VM was the case that broke the old
wall-clock probe):
- the compiled chain is what the probe's arithmetic assumes: 64 dependent register adds (and imuls)
  per loop turn in the disassembly, nothing folded;
- two chains of different latency (add: 1 cycle, imul: 3 cycles) give the same clock within 10%.
  Their samples alternate, so both see the same clock; what differs is the timer (ns on ~10 ms) and
  the refill after an interruption (microseconds), far below 1%, and 10% leaves room for a turbo
  step between neighbouring samples. A wrong latency is off by 4/3 or more (latencies are whole
  cycles), a shortened or folded chain by more;
- the clock is within a documented factor of what the OS says, where it says something:
  /proc/cpuinfo "cpu MHz" (in a VM: the nominal clock), bounds [0.7, 2.5] x that: a busy core runs
  at or above its nominal clock unless throttled, and x86 server parts turbo to at most about 2.1x
  their base (2.5 leaves margin). With cpufreq (bare metal, where "cpu MHz" is a momentary sample)
  the bounds are [0.7 x min, 1.1 x max] of cpufreq's limits;
- the regression test of the wall-clock probe: a busy process on the same CPU leaves the reading
  unchanged.
Readings of both probes on the 2-vCPU VM: benchmarks/results/clock-2026-11-30.txt.
"""

from __future__ import annotations

import importlib
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def machine():
    import sys

    sys.path.insert(0, str(BENCH))
    try:
        return importlib.import_module("harness.machine")
    finally:
        sys.path.remove(str(BENCH))


@pytest.fixture(scope="module")
def clock(machine):
    info = machine.cpu_clock_ghz()
    if info["add_chain_ghz"] is None:
        pytest.skip("no C compiler for the clock probe")
    return info


needs_x86 = pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86-64 chains")


@needs_x86
@pytest.mark.skipif(shutil.which("objdump") is None, reason="needs objdump")
def test_probe_chains_are_64_dependent_register_instructions(machine, tmp_path):
    lib, _ = machine.compile_probe(tmp_path) or pytest.skip("no C compiler")
    asm = subprocess.run(["objdump", "-d", "--no-show-raw-insn", str(lib)], capture_output=True, text=True,
                         check=True).stdout
    for name, op in (("add_chain", "add"), ("mul_chain", "imul")):
        body = re.search(rf"<{name}>:\n(.*?)\n\n", asm, re.S).group(1)
        # the chain: one destination register, a register source, CHAIN times
        chain = re.findall(rf"\s{op}\s+(%r\w+),(%r\w+)$", body, re.M)
        assert len(chain) == machine.CHAIN, body
        assert len({dst for _, dst in chain}) == 1 and len({src for src, _ in chain}) == 1


@needs_x86
def test_add_and_imul_chains_agree(clock):
    assert clock["mul_chain_ghz"] is not None
    assert 0.9 <= clock["add_chain_ghz"] / clock["mul_chain_ghz"] <= 1.1, clock


def test_clock_is_within_a_documented_factor_of_the_os_figure(clock):
    if clock["cpufreq_max_mhz"] and clock["cpufreq_min_mhz"]:
        low, high = 0.7 * clock["cpufreq_min_mhz"], 1.1 * clock["cpufreq_max_mhz"]
    elif clock["cpuinfo_mhz"]:
        low, high = 0.7 * clock["cpuinfo_mhz"], 2.5 * clock["cpuinfo_mhz"]
    else:
        pytest.skip("the OS gives no clock figure here")
    assert low <= 1e3 * clock["ghz"] <= high, clock


def test_clock_record_says_how(clock):
    """Both numbers and how each was obtained go into every results file."""
    assert clock["ghz"] == clock["add_chain_ghz"] and "thread CPU time" in clock["how"]
    assert clock["perf_how"] and clock["perf_how"] != "not run"


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs sched_setaffinity (Linux)")
def test_clock_is_the_same_when_another_process_shares_the_core(machine):
    """A busy process pinned to the probe's CPU takes about half its wall time, and at least a third
    even when a sample of ~10 ms meets only one scheduler slice (<= 5 ms) of it, so a wall-clock
    reading drops to 0.67x or less; the thread's CPU time does not see it. Bound: the readings alone
    and shared, seconds apart, agree within [0.75, 1/0.75], which leaves room for the clock's own
    turbo moves between them and fails the wall-clock probe."""
    alone = machine.measure_clock(perf=False)
    if alone["add_chain_ghz"] is None:
        pytest.skip("no C compiler for the clock probe")
    old = os.sched_getaffinity(0)
    cpu = min(old)
    hog = subprocess.Popen([sys.executable, "-c", "import os\nos.sched_setaffinity(0, {%d})\nwhile True: pass" % cpu])
    try:
        os.sched_setaffinity(0, {cpu})
        time.sleep(0.2)  # the hog is pinned and spinning
        shared = machine.measure_clock(perf=False)
    finally:
        os.sched_setaffinity(0, old)
        hog.kill()
        hog.wait()
    assert shared["wall_clock_ghz"] < 0.8 * shared["add_chain_ghz"], "the busy process did not share the core"
    assert 0.75 <= shared["ghz"] / alone["ghz"] <= 1 / 0.75, (alone, shared)


def test_perf_reading_is_cycles_over_task_clock(machine, tmp_path, monkeypatch):
    """Where perf can count cycles (not in this VM), its CSV (`perf stat -x ,`) is read as cycles per
    nanosecond of task-clock; a fake perf stands in for it here."""
    fake = tmp_path / "perf"
    fake.write_text("#!/bin/sh\necho '600000000,,cycles:u,200000000,100.00,,' >&2\n"
                    "echo '200.00,msec,task-clock:u,200000000,100.00,1.0,CPUs utilized' >&2\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    assert machine._perf_ghz(tmp_path / "probe") == (3.0, "perf stat -e cycles,task-clock: cycles / task-clock "
                                                          "of the add chain")
    fake.write_text("#!/bin/sh\necho '<not supported>,,cycles,0,100.00,,' >&2\n")
    ghz, how = machine._perf_ghz(tmp_path / "probe")
    assert ghz is None and "not supported" in how
