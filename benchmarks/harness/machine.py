"""What a benchmark ran on: CPU, measured core clock, GPU, library versions, git revision.

`machine_info()` goes into every results file (harness/report.py): CPU name, vendor, family, model and
caches (`cpu_identity()`), the measured clock, load averages (report.py). `cpu_clock_ghz()` measures the core
clock for the ALU ceilings of bench_sign_cpu.py; `gpu_info()` names the GPU and its maximum SM clock
for bench_sign_gpu.py. Not a profiler: nothing here times a kernel.

How the core clock is measured, and why so. A chain of dependent instructions of known latency runs
at one instruction per latency, whatever else the core could issue, so (instructions x latency) /
seconds is the clock. The earlier probe timed a one-add loop by the wall clock and read well below
/proc/cpuinfo's nominal clock on shared machines, by a factor that followed the load
(benchmarks/results/clock-2026-11-30.txt): the wall clock counts the time the process waits while
others run. So:
- time is the thread's CPU time (CLOCK_THREAD_CPUTIME_ID), which stops while the thread is
  descheduled, and the best of many short samples is taken: interruptions only lengthen a sample;
- the chain is 64 register-register adds per loop turn inside one asm volatile block, so the
  compiler can neither shorten nor fold it and the loop's own add/compare/branch are 1/64 of it
  (register addends: some cores resolve add-immediate chains at rename, faster than one a cycle);
- 0.2 s of the chain runs first, so the core has left any low-power state before the samples;
- on x86-64 a second chain of 64-bit imul (3-cycle latency on every Intel core since Nehalem and
  every AMD Zen) must give the same clock: a mismatch means a latency assumption is wrong here.
Beside it the record keeps /proc/cpuinfo's "cpu MHz" (in a VM the nominal clock, on bare metal a
momentary sample), cpufreq's limits where the OS has them, the wall-clock reading (what the old
probe reported) and, where `perf stat` can count cycles (not in most VMs), cycles / task-clock of
the same chain run as a program.
"""

from __future__ import annotations

import ctypes
import datetime
import functools
import os
import platform
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import torch


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


_CPUINFO_FIELDS = {"vendor_id": "vendor", "cpu family": "family", "model": "model", "stepping": "stepping"}


def cpu_identity(cpuinfo: str | None = None) -> dict:
    """The first CPU of /proc/cpuinfo (or the text `cpuinfo`): {"vendor" (AuthenticAMD, GenuineIntel),
    "family", "model", "stepping"} (model and family as integers: the model name of a VM can be bare,
    "AMD EPYC", while family 25 model 1 says Zen 3 Milan), plus cpu0's caches in KiB from sysfs
    (l1d_kib, l2_kib, l3_kib; None where the OS does not say)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    ident: dict = {name: None for name in _CPUINFO_FIELDS.values()}
    for line in cpuinfo.splitlines():
        if not line.strip():
            break  # the first processor's block only
        key, _, value = line.partition(":")
        name = _CPUINFO_FIELDS.get(key.strip())
        if name is not None:
            value = value.strip()
            ident[name] = int(value) if value.isdigit() else value
    caches = Path("/sys/devices/system/cpu/cpu0/cache")
    for level, kind, name in (("1", "Data", "l1d_kib"), ("2", "Unified", "l2_kib"), ("3", "Unified", "l3_kib")):
        ident[name] = None
        for index in sorted(caches.glob("index*")):
            try:
                if (index / "level").read_text().strip() == level and (index / "type").read_text().strip() == kind:
                    size = (index / "size").read_text().strip()
                    ident[name] = int(size[:-1]) if size.endswith("K") else int(size) // 1024
            except (OSError, ValueError):
                continue
    return ident


def _run(cmd: list[str], cwd=None) -> str | None:
    """stdout of cmd, stripped; None when it cannot run or fails."""
    try:
        done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _git_revision() -> str:
    root = Path(__file__).resolve().parents[2]
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
    info = dict(cpu=_cpu_name(), cpu_identity=cpu_identity(), machine=platform.machine(), logical_cpus=os.cpu_count(),
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



PROBE_SOURCE = r"""
/* stabkern clock probe: chains of dependent register instructions, 64 per loop turn. */
#define X8(s) s s s s s s s s
#if defined(__x86_64__)
#define ADD1 "add %1, %0\n\t"
#define MUL1 "imul %1, %0\n\t"
long mul_chain(long turns, long one) {
  long x = 1;
  for (long i = 0; i < turns; ++i) __asm__ volatile(X8(X8(MUL1)) : "+r"(x) : "r"(one));
  return x;
}
#elif defined(__aarch64__)
#define ADD1 "add %0, %0, %1\n\t"
#else
#error no clock probe for this architecture
#endif
long add_chain(long turns, long one) {
  long x = 0;
  for (long i = 0; i < turns; ++i) __asm__ volatile(X8(X8(ADD1)) : "+r"(x) : "r"(one));
  return x;
}
#ifdef PROBE_MAIN
#include <stdlib.h>
int main(int argc, char **argv) {
  volatile long sink = add_chain(argc > 1 ? atol(argv[1]) : 1, 1);
  (void)sink;
  return 0;
}
#endif
"""

CHAIN = 64  # instructions per loop turn of each chain
LATENCY = {"add_chain": 1, "mul_chain": 3}  # cycles per instruction (Intel and AMD optimization manuals)
_TURNS = {"add_chain": 1 << 19, "mul_chain": 1 << 17}  # about 10 ms a sample at 3 GHz
_SAMPLES = 15
_WARMUP_S = 0.2


def compile_probe(directory: Path) -> tuple[Path, Path] | None:
    """Build PROBE_SOURCE in `directory`: (shared library, program running add_chain(argv[1]));
    None without a working C compiler."""
    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if not cc:
        return None
    src, lib, exe = directory / "probe.c", directory / "probe.so", directory / "probe"
    src.write_text(PROBE_SOURCE)
    for cmd in ([cc, "-O2", "-shared", "-fPIC", str(src), "-o", str(lib)],
                [cc, "-O2", "-DPROBE_MAIN", str(src), "-o", str(exe)]):
        if subprocess.run(cmd, capture_output=True).returncode != 0:
            return None
    return lib, exe


def _chains_ghz(lib, names: list[str]) -> dict[str, tuple[float, float]]:
    """{chain: (clock by thread CPU time, clock by wall time)}, each from the best of _SAMPLES runs; the
    chains' runs alternate, so a change of clock during the measurement reaches all of them alike."""
    best = {name: [float("inf"), float("inf")] for name in names}
    for _ in range(_SAMPLES):
        for name in names:
            wall, cpu = time.perf_counter(), time.thread_time()
            getattr(lib, name)(_TURNS[name], 1)
            cpu, wall = time.thread_time() - cpu, time.perf_counter() - wall
            best[name] = [min(best[name][0], cpu), min(best[name][1], wall)]
    cycles = {name: _TURNS[name] * CHAIN * LATENCY[name] for name in names}
    return {name: (cycles[name] / cpu / 1e9, cycles[name] / wall / 1e9) for name, (cpu, wall) in best.items()}


def _perf_ghz(exe: Path) -> tuple[float | None, str]:
    """cycles / task-clock of the add chain run as a program under `perf stat`, and how (or why not)."""
    perf = shutil.which("perf")
    if perf is None:
        return None, "perf not installed"
    turns = str(20 * _TURNS["add_chain"])  # about 0.2 s
    try:
        done = subprocess.run([perf, "stat", "-x", ",", "-e", "cycles,task-clock", "--", str(exe), turns],
                              capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as err:
        return None, f"perf stat failed: {err}"
    counts = {}
    for line in done.stderr.splitlines():
        fields = line.split(",")
        if len(fields) > 2:
            counts[fields[2].split(":")[0]] = fields[0]
    try:
        cycles, msec = float(counts["cycles"]), float(counts["task-clock"])
    except (KeyError, ValueError):
        return None, f"perf stat could not count cycles ({counts.get('cycles', done.stderr.strip()[-80:])})"
    return round(cycles / (msec * 1e6), 3), "perf stat -e cycles,task-clock: cycles / task-clock of the add chain"


def cpuinfo_mhz() -> float | None:
    """The largest "cpu MHz" of /proc/cpuinfo (a VM's nominal clock; on bare metal a momentary sample)."""
    try:
        with open("/proc/cpuinfo") as f:
            values = [float(line.split(":")[1]) for line in f if line.startswith("cpu MHz")]
    except (OSError, ValueError):
        return None
    return max(values) if values else None


def cpufreq_mhz(which: str) -> float | None:
    """cpu0's cpufreq limit `which` ("cpuinfo_min_freq" or "cpuinfo_max_freq") in MHz; None where the OS
    has no cpufreq (most VMs)."""
    try:
        return int(Path(f"/sys/devices/system/cpu/cpu0/cpufreq/{which}").read_text()) / 1e3
    except (OSError, ValueError):
        return None


@functools.lru_cache(maxsize=None)
def cpu_clock_ghz() -> dict:
    """measure_clock(), once per process."""
    return measure_clock()


def measure_clock(perf: bool = True) -> dict:
    """The core clock, measured as the module note says: {"ghz", "how"} plus every reading beside it
    (add_chain_ghz, mul_chain_ghz, wall_clock_ghz, cpuinfo_mhz, cpuinfo_how, cpufreq_min_mhz, cpufreq_max_mhz,
    perf_ghz, perf_how; perf=False skips perf). Falls back to /proc/cpuinfo's MHz without a C compiler."""
    info = dict(ghz=None, how="unknown", add_chain_ghz=None, mul_chain_ghz=None, wall_clock_ghz=None,
                cpuinfo_mhz=cpuinfo_mhz(), cpuinfo_how='largest "cpu MHz" of /proc/cpuinfo (in a VM the nominal '
                'clock; on bare metal a momentary sample)', cpufreq_min_mhz=cpufreq_mhz("cpuinfo_min_freq"),
                cpufreq_max_mhz=cpufreq_mhz("cpuinfo_max_freq"), perf_ghz=None, perf_how="not run")
    with tempfile.TemporaryDirectory() as tmp:
        built = compile_probe(Path(tmp))
        if built is None:
            if info["cpuinfo_mhz"]:
                info.update(ghz=info["cpuinfo_mhz"] / 1e3, how="/proc/cpuinfo cpu MHz (no C compiler for the probe)")
            return info
        lib = ctypes.CDLL(str(built[0]))
        chains = [name for name in LATENCY if hasattr(lib, name)]
        for name in chains:
            getattr(lib, name).argtypes, getattr(lib, name).restype = [ctypes.c_long, ctypes.c_long], ctypes.c_long
        start = time.thread_time()
        while time.thread_time() - start < _WARMUP_S:
            lib.add_chain(_TURNS["add_chain"], 1)
        readings = _chains_ghz(lib, chains)
        for name, (cpu, _) in readings.items():
            info[f"{name}_ghz"] = round(cpu, 3)
        info["wall_clock_ghz"] = round(readings["add_chain"][1], 3)
        if perf:
            info["perf_ghz"], info["perf_how"] = _perf_ghz(built[1])
    info["ghz"] = info["add_chain_ghz"]
    info["how"] = (f"{CHAIN}-deep unrolled chain of dependent register adds (1 cycle each), best of {_SAMPLES} "
                   f"samples of thread CPU time after {_WARMUP_S} s warm-up"
                   + ("; cross-check: imul chain (3 cycles each)" if info["mul_chain_ghz"] else ""))
    return info
