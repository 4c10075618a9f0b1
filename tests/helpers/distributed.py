"""Run a function on N gloo ranks on the CPU (spawned processes) and collect what each returned.

`run_ranks(fn, size, tmp_path, *args)` starts `size` processes; each initializes a gloo group through a file
store in tmp_path, calls fn(group, *args) (fn must be importable: a module-level function) and saves its
return value with torch.save; the list of values, by rank, comes back. Threads per rank: 1, so that two ranks
on a 2-core machine do not oversubscribe it.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _worker(rank: int, size: int, store: str, out: str, fn, args) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=size)
    try:
        value = fn(dist.group.WORLD, *args)
        torch.save(value, os.path.join(out, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def run_ranks(fn, size: int, tmp_path: Path, *args) -> list:
    store = tmp_path / f"store-{size}"
    out = tmp_path / f"out-{size}"
    out.mkdir()
    mp.spawn(_worker, args=(size, str(store), str(out), fn, args), nprocs=size, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(size)]
