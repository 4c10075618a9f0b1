"""Many processes with torch.distributed: how work is split over ranks and put back in a fixed order.

What it is: the small layer every sharded computation in stabkern goes through. A computation is cut
into work units whose results do not depend on which rank computes them (each row t of S is its own
Philox counter; each (injection layer, trial, sample) of a meter its own noise counter). A rank takes
a contiguous block of units (`shard`); results come back to every rank with `gather_rows`, in unit
order, so what follows is the single-process computation on the same numbers.

What it is not: data parallelism. Every rank must call a sharded function with the SAME arguments
(same tensor, same seed): stabkern shards its own work, it does not combine different data from
different ranks. So nothing is sharded unless asked: pass `group=` (a ProcessGroup, or "world" for the
default group; note that `torch.distributed.group.WORLD` is None until the default group exists);
`group=None` is the single-process computation even under torchrun.
Collectives use the group's backend: gloo for CPU tensors, NCCL for CUDA tensors (one device a rank).

- `sign_project_sharded`: rank r projects onto its block of rows of S (row_offset); the blocks are
  gathered in rank order. Bitwise equal to `sign_project` for any number of ranks.
- `sign_reconstruct_sharded`: rank r reconstructs from its block of y's columns (its rows of S) with
  the full 1/k scale; the partial sums are added in rank order. Bitwise reproducible for a given number
  of ranks; equal to `sign_reconstruct` within float32 rounding of the k-term sums (the order differs).
- The meters and compress_model: each work unit has an `owner` rank; every rank computes its own units,
  `merge_owned` takes every entry from its owner (a selection, no arithmetic), so the result is the
  single-process bits on any number of ranks. `agree_on_failure` makes every rank raise when one did,
  instead of leaving the others waiting in the next collective.
- `is_main_process(group)`: True on the rank that writes files and prints (rank 0; always without a group).

Threads. "The single-process bits" means those of one process run with the same number of torch
threads (`torch.get_num_threads()`) as each rank. stabkern's own kernels give the same bits for any
thread count, but torch's CPU matrix products need not: MKL's sgemm, for one, splits some shapes over
threads and sums in a thread-dependent order (on an AMD EPYC, a (6, 64) x (64, 64) Linear differs in the
last bit between 1 and 2 threads). Across thread counts, results agree within the float32 rounding of those
products (tests/test_distributed.py derives the bound). Ranks of a gloo group compare their thread counts
in `agree_on_failure` and warn when they differ: the merged result is then no single process's bits.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from . import ops
from ._checks import check_int


def group_rank_size(group) -> tuple[int, int]:
    """(rank, size) of this process in `group`; (0, 1) for group=None (no sharding)."""
    group = resolve_group(group)
    if group is None:
        return 0, 1
    import torch.distributed as dist

    return dist.get_rank(group), dist.get_world_size(group)


def resolve_group(group):
    """None (no sharding), or the ProcessGroup that `group` names ("world": the default group)."""
    if group is None:
        return None
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError(f"group={group!r} was given but torch.distributed is not initialized: call "
                           "torch.distributed.init_process_group first (torchrun sets up its environment)")
    if isinstance(group, str):
        if group != "world":
            raise ValueError(f"group must be None, 'world' or a ProcessGroup; got {group!r}")
        return dist.group.WORLD
    return group


def is_main_process(group=None) -> bool:
    """True on the one rank that should write files and print: rank 0 of `group` (True for group=None)."""
    return group_rank_size(group)[0] == 0


def owner(unit: int, size: int) -> int:
    """The rank that computes work unit number `unit` (round robin, so consecutive units spread out)."""
    return unit % size


def collective_device(group) -> torch.device:
    """Where collective buffers live: the current CUDA device under NCCL, else the CPU (gloo)."""
    import torch.distributed as dist

    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def agree_on_failure(error: BaseException | None, group) -> None:
    """Raise on every rank when any rank failed: `error` on the ranks that caught one, a RuntimeError naming
    the failed ranks on the others. Call it (on every rank) after sharded work, before the next collective.
    On CPU ranks it also warns (RuntimeWarning) when their torch thread counts differ (see the module note)."""
    rank, size = group_rank_size(group)
    if size == 1:
        if error is not None:
            raise error
        return
    import torch.distributed as dist

    group = resolve_group(group)
    device = collective_device(group)
    # one collective for both: whether each rank failed, and its torch thread count (see the module note)
    flags = [torch.zeros(2, dtype=torch.int64, device=device) for _ in range(size)]
    mine = torch.tensor([int(error is not None), torch.get_num_threads()], dtype=torch.int64, device=device)
    dist.all_gather(flags, mine, group=group)
    threads = [int(f[1]) for f in flags]
    if device.type == "cpu" and len(set(threads)) > 1:
        warnings.warn(f"the ranks run torch with different thread counts {threads}: torch's CPU matrix products "
                      "may round differently with each, so the result is not bitwise that of one process; call "
                      "torch.set_num_threads(n) with the same n on every rank", RuntimeWarning, stacklevel=2)
    if error is not None:
        raise error
    failed = [r for r, f in enumerate(flags) if int(f[0])]
    if failed:
        raise RuntimeError(f"rank(s) {failed} failed in sharded work (their error is raised there)")


def merge_owned(values, owners: np.ndarray, group):
    """Every entry from the rank that owns it: a list of (N, ...) arrays or tensors, the same shapes on every
    rank, each valid where `owners` (int, shape (N,) or (N, L), broadcast over the trailing dims) is this
    rank. Returns them (same kinds) with each entry taken from its owner: the same bits on every rank, and
    the single-process bits when each unit's value does not depend on who computed it."""
    rank, size = group_rank_size(group)
    if size == 1:
        return list(values)
    import torch.distributed as dist

    group = resolve_group(group)
    device = collective_device(group)
    out = []
    for v in values:
        t = torch.as_tensor(v)
        local = t.to(device).contiguous()
        pieces = [torch.empty_like(local) for _ in range(size)]
        dist.all_gather(pieces, local, group=group)
        stacked = torch.stack(pieces)
        idx = torch.as_tensor(np.asarray(owners), dtype=torch.int64, device=device)
        idx = idx.reshape(*idx.shape, *([1] * (t.dim() - idx.dim()))).expand(t.shape).unsqueeze(0)
        merged = stacked.gather(0, idx).squeeze(0).to(t.device)
        out.append(merged.numpy() if isinstance(v, np.ndarray) else merged)
    return out


def shard(total: int, rank: int, size: int) -> tuple[int, int]:
    """(start, count) of rank's contiguous block of `total` units: the first total % size ranks get one more."""
    total = check_int("total", total, 0)
    size = check_int("size", size, 1)
    rank = check_int("rank", rank, 0, size)
    base, extra = divmod(total, size)
    start = rank * base + min(rank, extra)
    return start, base + (1 if rank < extra else 0)


def gather_rows(part: torch.Tensor, total: int, group, dim: int = -1) -> torch.Tensor:
    """Concatenate every rank's `part` along `dim` in rank order (parts as `shard(total, r, size)` gives).

    part: (..., count_r, ...) on this rank -> (..., total, ...) on every rank. Uneven blocks are padded for
    the collective and cut after it, so nothing depends on how many ranks there are.
    """
    rank, size = group_rank_size(group)
    if size == 1:
        return part
    import torch.distributed as dist

    group = resolve_group(group)
    dim = dim % part.dim()
    counts = [shard(total, r, size)[1] for r in range(size)]
    if part.shape[dim] != counts[rank]:
        raise ValueError(f"rank {rank} holds {part.shape[dim]} units along dim {dim}, expected {counts[rank]}")
    width = max(counts)
    padded_shape = list(part.shape)
    padded_shape[dim] = width
    padded = part.new_zeros(padded_shape)
    padded.narrow(dim, 0, counts[rank]).copy_(part)
    pieces = [torch.empty_like(padded) for _ in range(size)]
    dist.all_gather(pieces, padded.contiguous(), group=group)
    return torch.cat([p.narrow(dim, 0, c) for p, c in zip(pieces, counts)], dim=dim)


def sum_in_rank_order(part: torch.Tensor, group) -> torch.Tensor:
    """sum over ranks of `part` (same shape on every rank), added in rank order 0, 1, ... on every rank.

    Unlike all_reduce, whose order of additions is the library's choice, the result is the same bits on
    every rank and from run to run.
    """
    rank, size = group_rank_size(group)
    if size == 1:
        return part
    import torch.distributed as dist

    group = resolve_group(group)
    pieces = [torch.empty_like(part) for _ in range(size)]
    dist.all_gather(pieces, part.contiguous(), group=group)
    out = pieces[0].clone()
    for p in pieces[1:]:
        out += p
    return out


def sign_project_sharded(x: torch.Tensor, k: int, *, seed: int, stream: int = 0, group=None,
                         **kwargs) -> torch.Tensor:
    """`sign_project(x, k, ...)` with the k rows of S split over the ranks of `group`.

    x: (..., n), the same on every rank -> (..., k) on every rank, bitwise equal to `sign_project`.
    kwargs: backend, precision (row_offset/col_offset as in sign_project: the block starts there).
    """
    k = check_int("k", k, 1)
    rank, size = group_rank_size(group)
    row_offset = kwargs.pop("row_offset", 0)
    start, count = shard(k, rank, size)
    if count == 0:
        part = x.new_zeros(*x.shape[:-1], 0)
    else:
        part = ops.sign_project(x, count, seed=seed, stream=stream, row_offset=row_offset + start, **kwargs)
    return gather_rows(part, k, group, dim=-1)


def sign_reconstruct_sharded(y: torch.Tensor, n: int, *, seed: int, stream: int = 0, scale: float | None = None,
                             group=None, **kwargs) -> torch.Tensor:
    """`sign_reconstruct(y, n, ...)` with the k rows of S split over the ranks of `group`.

    y: (..., k), the same on every rank -> (..., n) on every rank: rank r reconstructs from its columns of
    y (its rows of S) with scale 1/k of the whole k, and the partials are added in rank order.
    """
    k = y.shape[-1]
    if k == 0:
        raise ValueError("y has no coefficients (k = 0)")
    scale = 1.0 / k if scale is None else scale
    rank, size = group_rank_size(group)
    row_offset = kwargs.pop("row_offset", 0)
    start, count = shard(k, rank, size)
    if count == 0:
        part = y.new_zeros(*y.shape[:-1], n)
    else:
        part = ops.sign_reconstruct(y[..., start:start + count], n, seed=seed, stream=stream, scale=scale,
                                    row_offset=row_offset + start, **kwargs)
    return sum_in_rank_order(part, group)


__all__ = ["agree_on_failure", "gather_rows", "group_rank_size", "is_main_process", "merge_owned", "owner",
           "resolve_group", "shard", "sign_project_sharded", "sign_reconstruct_sharded",
           "sum_in_rank_order"]
