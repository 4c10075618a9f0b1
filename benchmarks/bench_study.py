"""The training monitor's overhead: the same training with and without `StabilityMonitor` at its defaults.

Case: grid_net(16, 3) of the study demo (stabkern.study.demo) trained on 1024 digits for EPOCHS epochs
(Adam, batch 64), the monitor stepping once per epoch with a 128-sample probe and the 450-digit held-out
set. Baseline: the same training without the monitor (same seed, same batches). Runs alternate (without,
with, without, ...) over ROUNDS rounds and the medians are compared, so load changes hit both. Target:
with / without <= 1.10 (the monitor's default max_overhead is 0.1). Rate: training samples per second.
Results in benchmarks/results/study-<date>.json.

    PYTHONPATH=. python -m pytest benchmarks/bench_study.py -q -s
"""

from __future__ import annotations

import os
import statistics
import time

import torch

from stabkern.study.demo import grid_net, noisy_training_set
from stabkern.study.monitor import StabilityMonitor
from stabkern.zoo.digits import load_digits_tensors, train_epoch

EPOCHS = int(os.environ.get("STABKERN_BENCH_MONITOR_EPOCHS", 20))
ROUNDS = int(os.environ.get("STABKERN_BENCH_MONITOR_ROUNDS", 3))
SIZE = 1024


def _train(monitored: bool) -> tuple[float, int]:
    """Seconds for the whole training, and how many records the monitor made (0 without it)."""
    x, y = noisy_training_set(SIZE, 0.0)
    _, test = load_digits_tensors()
    torch.manual_seed(0)
    model = grid_net(16, 3)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    monitor = StabilityMonitor(model, (x[:128], y[:128]), held_out=test) if monitored else None
    start = time.perf_counter()
    for epoch in range(EPOCHS):
        train_epoch(model, opt, x, y, gen)
        if monitor is not None:
            monitor.step(epoch=epoch + 1)
    return time.perf_counter() - start, len(monitor.records) if monitor else 0


def test_monitor_overhead(bench_report):
    _train(True)  # warm-up: imports, the first metering's setup
    without, with_monitor, records = [], [], []
    for _ in range(ROUNDS):
        without.append(_train(False)[0])
        seconds, count = _train(True)
        with_monitor.append(seconds)
        records.append(count)
    base, mon = statistics.median(without), statistics.median(with_monitor)
    report = bench_report("study")
    work = SIZE * EPOCHS
    report.add("training without monitor", shape=(SIZE, 1, 8, 8), dtype=torch.float32, device="cpu",
               backend="torch", median_s=base, work=work, unit="samples/s", key="no-monitor", baseline="no-monitor")
    report.add("training with StabilityMonitor (defaults)", shape=(SIZE, 1, 8, 8), dtype=torch.float32,
               device="cpu", backend="torch", median_s=mon, work=work, unit="samples/s", baseline="no-monitor")
    report.notes[f"monitor overhead: with / without, median of {ROUNDS} alternating rounds, {EPOCHS} epochs"] = \
        round(mon / base, 3)
    report.notes["monitor records per training (median)"] = statistics.median(records)
    print(f"monitor overhead: {mon / base:.3f}x ({mon:.2f} s against {base:.2f} s, {statistics.median(records)} records)")
