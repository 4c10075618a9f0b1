"""The benchmark harness under benchmarks/: report writer, timer and machine description.

- report.py: `BenchReport` (rows, baselines and ceilings by key, tables, the JSON/.txt writer) and
  `out_dir()` ($STABKERN_BENCH_OUT, else benchmarks/results/).
- timer.py: `median_seconds`; `interleaved_medians` for contenders timed in turn.
- machine.py: `machine_info()` (CPU, measured clock, GPU, versions, git revision), `cpu_clock_ghz()`,
  `cpu_identity()` (vendor, family, model, caches),
  `gpu_info()`.

No pytest here: benchmarks/conftest.py wraps these in fixtures. Importable as `harness` with
benchmarks/ on sys.path (pytest puts it there for benchmarks/conftest.py).
"""

from .machine import cpu_clock_ghz, cpu_identity, gpu_info, machine_info
from .report import BenchReport, out_dir
from .timer import interleaved_medians, median_seconds

__all__ = ["BenchReport", "cpu_clock_ghz", "cpu_identity", "gpu_info", "interleaved_medians", "machine_info",
           "median_seconds", "out_dir"]
