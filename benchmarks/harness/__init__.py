"""The benchmark harness under benchmarks/: report writer, timer and machine description.

- report.py: `BenchReport` (rows, baselines and ceilings by key, tables, the JSON/.txt writer) and
  `out_dir()` ($STABKERN_BENCH_OUT, else benchmarks/results/).
- timer.py: `median_seconds`, the one timer.
- machine.py: `machine_info()` (CPU, measured clock, GPU, versions, git revision), `cpu_clock_ghz()`,
  `gpu_info()`.

No pytest here: benchmarks/conftest.py wraps these in fixtures. Importable as `harness` with
benchmarks/ on sys.path (pytest puts it there for benchmarks/conftest.py).
"""

from .machine import cpu_clock_ghz, gpu_info, machine_info
from .report import BenchReport, out_dir
from .timer import median_seconds

__all__ = ["BenchReport", "cpu_clock_ghz", "gpu_info", "machine_info", "median_seconds", "out_dir"]
