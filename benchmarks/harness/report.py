"""The benchmark report: one results file's rows, their table, and the JSON/.txt writer.

`BenchReport(prefix)` holds the rows of one results file. Each measurement adds a row: case, shape,
dtype, device, backend, median time, rate (work per second in the row's unit), the baseline's rate
measured in the same run, the speed-up over it and the percentage of the case's ceiling. Baselines
and measured ceilings are rows of the same report that other rows name by key; their rates are
looked up when the report is printed or written, so the order in which cases run does not matter.

Each row is printed when it is measured (pytest -s shows it) and the report is rewritten to
<out>/<prefix>-<date>.json, with `machine_info()`, and its table to <prefix>-<date>.txt, so a run
cut short by a time box (gpu_check.sh) keeps every row measured so far. <out> is
$STABKERN_BENCH_OUT (the GPU machine's $OUT), else benchmarks/results/.

Not a timer (timer.py) and not a pytest plugin (benchmarks/conftest.py).
"""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path

from .machine import machine_info

RESULTS = Path(__file__).resolve().parent.parent / "results"


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
        load = (f"load average (1, 5, 15 min) at start {_loads(machine['load_average_at_start'])}, at the last "
                f"write {_loads(machine['load_average_at_end'])} on {os.cpu_count()} CPUs")
        path.with_suffix(".txt").write_text("\n".join([self.table(), *notes, load]) + "\n")
        return path


_STANDARD = {"case", "shape", "dtype", "device", "backend", "median_s", "rate", "unit", "key", "baseline",
             "baseline_rate", "speedup", "ceiling", "ceiling_rate", "pct_ceiling", "ceiling_measured"}


def _loads(loads) -> str:
    return "unknown" if loads is None else " ".join(f"{v:.2f}" for v in loads)


def _si(v: float | None) -> str:
    """3 significant digits with an SI prefix: 2.84e8 -> '284M'."""
    if v is None:
        return "-"
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"), (1, "")):
        if abs(v) >= scale:
            return f"{v / scale:.3g}{prefix}"
    return f"{v:.3g}"
