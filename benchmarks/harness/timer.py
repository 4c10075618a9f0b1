"""The benchmark suites' timers: the median over rounds of seconds per call.

Not a profiler and not a statistics package: one number per case, CUDA-synchronized, through
pytest-benchmark when the test passes its `benchmark` fixture (so its table and --benchmark-*
options apply). The `bench_time` fixture of benchmarks/conftest.py is `median_seconds`.
`interleaved_medians` times several contenders in turn, round by round, for ratios that a change of
the machine's load during the run reaches alike (a shared machine's load moves within seconds).
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



def interleaved_medians(contenders: dict, *, rounds: int, warmup: int = 1, self_timed=(),
                        settle_s: float = 0.0) -> dict:
    """{name: median seconds per call} of contenders {name: callable}: `warmup` untimed calls of each, then
    `rounds` rounds in which every contender runs once, in an order that rotates by one each round, so that
    none always runs first (after a pause) or last. A contender named in `self_timed` returns the seconds of
    its call itself (a worker process timing its own call); the others are timed here.

    settle_s: seconds of sleep before each timed call, so that it starts on idle cores. Thread pools keep
    their threads spinning after a call returns (OpenBLAS about 2^28 cycles, ~0.1 s; OpenMP's spin count),
    and those threads share the cores with whatever is timed next: on the 2-core AMD EPYC, stabkern's GEMM
    reconstruction right after bench_sign_cpu's Haswell worker process ran at 0.83x its rate after a 0.25 s
    sleep, and numpy's matmul right after stabkern at 0.85x (medians of 7 and 9, 2026-12-07)."""
    names = list(contenders)

    def seconds(name: str) -> float:
        if name in self_timed:
            return contenders[name]()
        start = time.perf_counter()
        contenders[name]()
        return time.perf_counter() - start

    for _ in range(warmup):
        for name in names:
            seconds(name)
    times: dict = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            if settle_s:
                time.sleep(settle_s)
            times[name].append(seconds(name))
    return {name: statistics.median(t) for name, t in times.items()}
