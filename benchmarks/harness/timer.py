"""The benchmark suites' one timer: the median over rounds of seconds per call.

Not a profiler and not a statistics package: one number per case, CUDA-synchronized, through
pytest-benchmark when the test passes its `benchmark` fixture (so its table and --benchmark-*
options apply). The `bench_time` fixture of benchmarks/conftest.py is `median_seconds`.
"""

from __future__ import annotations

import statistics
import time

import torch


def median_seconds(fn, *, rounds: int, inner: int = 1, warmup: int = 1, cuda: bool = False,
                   benchmark=None) -> float | None:
    """Median over `rounds` rounds of seconds per call of fn; each round makes `inner` calls and, when
    `cuda`, ends with torch.cuda.synchronize(); `warmup` untimed rounds first (compiles, caches, cuDNN).

    With `benchmark` (the pytest-benchmark fixture) the rounds run through benchmark.pedantic, so its
    table and --benchmark-* options apply; returns None when it is disabled (--benchmark-disable).
    """

    def one_round():
        for _ in range(inner):
            fn()
        if cuda:
            torch.cuda.synchronize()

    if cuda:
        torch.cuda.synchronize()
    if benchmark is not None:
        benchmark.pedantic(one_round, rounds=rounds, iterations=1, warmup_rounds=warmup)
        return None if benchmark.disabled else benchmark.stats.stats.median / inner
    for _ in range(warmup):
        one_round()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        one_round()
        times.append(time.perf_counter() - start)
    return statistics.median(times) / inner
