"""The conformance table of issue 17: per zoo family, did the conformance checks pass, and what does the
card cost at 32x32 with 16 images.

Per family (tests/helpers/conformance_nets.py: one representative each, random weights, seed 0, 10 classes):
- attenuation, measure, compress: the outcome of tests/conformance/test_conformance_{attenuation,measure,
  compress}.py for that net (pass = every test of the file passed);
- card: `stabkern card ARCH:weights.pt` (the net's state_dict saved to a file) on 16 random 32x32 images
  without labels (random weights: labels would mean nothing, and without them the card skips the
  accuracy-vs-k sweep), default settings, --quiet, in a fresh process; ok = exit 0 and card.json validates;
  its wall time, with the card's own stage times.

Not a test and not a timing benchmark of a kernel: one run, wall times of a whole command on whatever the
machine is doing (the JSON records the load average at start and end).

    PYTHONPATH=. python3 benchmarks/conformance_table.py [ARCH ...] [--no-tests | --checks-from LOG ...]

Writes benchmarks/results/conformance-<date>.json and .md after every family (a partial run keeps its rows).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from helpers.conformance_nets import ARCHS, CLASSES, net_of  # noqa: E402

CHECKS = {"attenuation": "test_conformance_attenuation.py", "measure": "test_conformance_measure.py",
          "compress": "test_conformance_compress.py"}
TESTS_PER_NET = {"test_conformance_attenuation.py": 3, "test_conformance_measure.py": 1,
                 "test_conformance_compress.py": 3}  # a column passes when all of them ran and passed
IMAGES, SIZE = 16, 32


class Outcomes:
    """pytest plugin: per (file, architecture), whether every test passed."""

    def __init__(self):
        self.passed: dict = {}
        self.count: dict = {}

    def pytest_runtest_logreport(self, report):
        if report.when != "call" and not report.failed:
            return
        file = report.nodeid.split("::")[0].rsplit("/", 1)[-1]
        params = report.nodeid.rsplit("[", 1)[-1].rstrip("]").split("-") if "[" in report.nodeid else []
        arch = next((a for a in ARCHS if a in params), None)
        if arch is not None:
            key = (file, arch)
            self.passed[key] = self.passed.get(key, True) and report.passed
            self.count[key] = self.count.get(key, 0) + 1

    def column(self, file: str, arch: str):
        """True (every test of the file ran and passed for arch), False (one failed), None (some not run)."""
        key = (file, arch)
        if self.passed.get(key) is False:
            return False
        return True if self.count.get(key, 0) >= TESTS_PER_NET[file] else None


def run_checks(archs) -> dict:
    import pytest
    plugin = Outcomes()
    files = [str(ROOT / "tests" / "conformance" / f) for f in CHECKS.values()]
    pytest.main(["-q", "-p", "no:cacheprovider", "--rootdir", str(ROOT), *files, "-k", " or ".join(archs)],
                plugins=[plugin])
    return {arch: {check: plugin.column(file, arch) for check, file in CHECKS.items()} for arch in archs}


def checks_from_logs(paths, archs) -> dict:
    """The check columns read from logs of earlier `pytest -v tests/conformance` runs (lines
    "path::test[params] PASSED" / "FAILED" / "ERROR"), instead of running the tests again; a test in
    several logs counts as its last outcome (a rerun after a fix)."""
    last = {}
    for path in paths:
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 2 and "::" in parts[0] and parts[1] in ("PASSED", "FAILED", "ERROR"):
                last[parts[0]] = parts[1] == "PASSED"
    plugin = Outcomes()
    for nodeid, passed in last.items():
        plugin.pytest_runtest_logreport(argparse.Namespace(nodeid=nodeid, when="call", failed=not passed,
                                                           passed=passed))
    return {arch: {check: plugin.column(file, arch) for check, file in CHECKS.items()} for arch in archs}


def run_card(arch: str, folder: Path) -> dict:
    weights, data = folder / f"{arch}.pt", folder / "data.npz"
    torch.save(net_of(arch).state_dict(), weights)
    x = torch.randn(IMAGES, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3))
    np.savez(data, x=x.numpy())
    cmd = [sys.executable, "-m", "stabkern", "card", f"{arch}:{weights}", "--data", str(data), "--num-classes",
           str(CLASSES), "--quiet", "--json", "--out", str(folder / "cards"), "--name", arch]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    wall = time.perf_counter() - start
    row = {"card_ok": False, "card_wall_s": round(wall, 1), "card_stages_s": None, "error": None}
    if proc.returncode != 0:
        row["error"] = (proc.stderr.strip().splitlines() or ["exit %d" % proc.returncode])[-1][:300]
        return row
    from stabkern.schemas import validate
    doc = json.loads(proc.stdout)
    validate(doc)
    row["card_ok"] = all((folder / "cards" / arch / name).is_file() for name in doc["figures"].values())
    row["card_stages_s"] = {k: round(v, 1) for k, v in doc["provenance"]["wall_time_s"].items()}
    return row


def write(rows: dict, meta: dict) -> None:
    out = ROOT / "benchmarks" / "results" / f"conformance-{meta['date']}"
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")

    def mark(v):
        return {True: "pass", False: "FAIL", None: "not run"}[v]

    lines = [f"# Conformance table, {meta['date']}", "",
             f"{meta['machine']} (OMP_NUM_THREADS={meta.get('OMP_NUM_THREADS')}); torch {meta['torch']}; card at {SIZE}x{SIZE}, {IMAGES} images, no labels, "
             f"defaults; load average {meta['load_start']:.1f} at start, {meta.get('load_end', 0):.1f} at end.", "",
             "| family | arch | attenuation agrees | measure ok | compress ok | card ok | card wall (s) | card stages (s) |",
             "|---|---|---|---|---|---|---|---|"]
    for arch, r in rows.items():
        stages = ", ".join(f"{k} {v}" for k, v in (r.get("card_stages_s") or {}).items())
        lines.append(f"| {r['family']} | {arch} | {mark(r.get('attenuation'))} | {mark(r.get('measure'))} | "
                     f"{mark(r.get('compress'))} | {mark(r.get('card_ok'))} | {r.get('card_wall_s', '')} | "
                     f"{stages or r.get('error') or ''} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


def main(argv=None) -> None:
    from helpers.conformance_nets import REPRESENTATIVES
    parser = argparse.ArgumentParser(description="The conformance table of issue 17 (see the module docstring).")
    parser.add_argument("archs", nargs="*", metavar="ARCH", help=f"default: every family ({', '.join(ARCHS)})")
    parser.add_argument("--no-tests", action="store_true", help="cards only (the check columns: not run)")
    parser.add_argument("--checks-from", type=Path, action="append", default=[], metavar="LOG",
                        help="read the check columns from `pytest -v tests/conformance` logs instead of running it")
    parser.add_argument("--resume", action="store_true",
                        help="keep the cards of today's results file and run only the missing ones")
    parser.add_argument("--no-cards", action="store_true", help="run no card (card columns: resumed or not run)")
    args = parser.parse_args(argv)
    args.archs = args.archs or ARCHS
    unknown = sorted(set(args.archs) - set(ARCHS))
    if unknown:
        parser.error(f"unknown ARCH {unknown}: choose from {ARCHS}")
    family = {arch: fam for fam, arch in REPRESENTATIVES.items()}
    meta = {"date": datetime.date.today().isoformat(), "machine": f"{platform.processor() or platform.machine()}, "
            f"{os.cpu_count()} cores", "torch": torch.__version__, "load_start": os.getloadavg()[0],
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")}
    checks = {}
    if args.checks_from:
        checks = checks_from_logs(args.checks_from, args.archs)
    elif not args.no_tests:
        checks = run_checks(args.archs)
    rows = {arch: {"family": family[arch], **checks.get(arch, {})} for arch in args.archs}
    done = {}
    previous = ROOT / "benchmarks" / "results" / f"conformance-{meta['date']}.json"
    if args.resume and previous.is_file():
        old = json.loads(previous.read_text())
        meta["load_start"] = old["meta"]["load_start"]
        done = {arch: {k: v for k, v in row.items() if k.startswith("card") or k == "error"}
                for arch, row in old["rows"].items() if "card_ok" in row}
        rows = {**{arch: {"family": family[arch], **checks.get(arch, {})} for arch in done}, **rows}
    with tempfile.TemporaryDirectory() as tmp:
        for arch in rows:
            if arch in done or not args.no_cards:
                rows[arch].update(done[arch] if arch in done else run_card(arch, Path(tmp)))
            meta["load_end"] = os.getloadavg()[0]
            write(rows, meta)
            print(arch, rows[arch], flush=True)


if __name__ == "__main__":
    main()
