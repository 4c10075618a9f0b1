"""Run a function on N gloo ranks on the CPU (spawned processes) and collect what each returned.

`run_ranks(fn, size, tmp_path, *args)` starts `size` processes; each initializes a gloo group through a file
store in tmp_path, calls fn(group, *args) (fn must be importable: a module-level function) and saves its
return value with torch.save; the list of values, by rank, comes back. Threads per rank: 1 (so that two ranks
on a 2-core machine do not oversubscribe it), or `threads=[...]`, one count per rank. A collective that waits
longer than COLLECTIVE_TIMEOUT raises instead of hanging the test. `torch_threads(n)`: the single-process
side of a comparison with the ranks' thread count (stabkern.distributed's module note: bitwise equality holds
between processes with equal thread counts).
"""

from __future__ import annotations

import contextlib
import datetime
import os
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


COLLECTIVE_TIMEOUT = datetime.timedelta(seconds=120)


@contextlib.contextmanager
def torch_threads(n: int):
    """torch.set_num_threads(n) for the duration, the previous count restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _worker(rank: int, size: int, store: str, out: str, fn, args, threads) -> None:
    torch.set_num_threads(threads[rank])
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=size,
                            timeout=COLLECTIVE_TIMEOUT)
    try:
        value = fn(dist.group.WORLD, *args)
        torch.save(value, os.path.join(out, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def run_ranks(fn, size: int, tmp_path: Path, *args, threads=None) -> list:
    threads = [1] * size if threads is None else list(threads)
    store = tmp_path / f"store-{size}"
    out = tmp_path / f"out-{size}"
    out.mkdir()
    mp.spawn(_worker, args=(size, str(store), str(out), fn, args, threads), nprocs=size, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(size)]
