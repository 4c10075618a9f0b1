"""stabkern.distributed: shards, fixed-order gathers and the sharded sign ops on 2 gloo ranks (CPU).

Projection: every row of S is its own counter, so gathering row blocks gives the single-process bits
whatever the number of ranks. Reconstruction: partial sums over each rank's rows, added in rank order:
bitwise equal on every rank and run to run, and equal to the single-process result within float32
rounding of a k-term sum (the bound is derived in the test).
"""

import pytest
import torch

import stabkern
from helpers.distributed import run_ranks
from stabkern import distributed as D


def test_shard_covers_every_unit_once_in_order():
    for total in (0, 1, 5, 8, 13):
        for size in (1, 2, 3, 4, 7):
            blocks = [D.shard(total, r, size) for r in range(size)]
            assert blocks[0][0] == 0
            assert all(a[0] + a[1] == b[0] for a, b in zip(blocks, blocks[1:]))
            assert sum(c for _, c in blocks) == total
            assert max(c for _, c in blocks) - min(c for _, c in blocks) <= 1


def test_shard_refuses_bad_arguments():
    with pytest.raises(ValueError, match="rank"):
        D.shard(4, 2, 2)
    with pytest.raises(TypeError, match="total"):
        D.shard(4.0, 0, 2)


def test_group_without_init_is_a_clear_error():
    if torch.distributed.is_initialized():
        pytest.skip("a process group exists in this process")
    with pytest.raises(RuntimeError, match="init_process_group"):
        D.sign_project_sharded(torch.randn(3, 40), 5, seed=1, group="world")


def test_no_group_is_the_plain_op():
    x = torch.randn(3, 300)
    assert torch.equal(D.sign_project_sharded(x, 17, seed=4, stream=2), stabkern.sign_project(x, 17, seed=4, stream=2))
    y = torch.randn(3, 17)
    assert torch.equal(D.sign_reconstruct_sharded(y, 300, seed=4), stabkern.sign_reconstruct(y, 300, seed=4))


def _ops_on_ranks(group, x, y, k, n):
    group = "world"  # the name resolves to the default group the runner made
    return (D.sign_project_sharded(x, k, seed=2**63 + 5, stream=7, group=group),
            D.sign_reconstruct_sharded(y, n, seed=2**63 + 5, stream=7, group=group))


def test_sharded_ops_on_two_ranks(tmp_path):
    gen = torch.Generator().manual_seed(0)
    k, n = 37, 1000  # k odd: ranks hold 19 and 18 rows
    x = torch.randn(5, n, generator=gen)
    y = torch.randn(5, k, generator=gen)
    results = run_ranks(_ops_on_ranks, 2, tmp_path, x, y, k, n)
    single_p = stabkern.sign_project(x, k, seed=2**63 + 5, stream=7)
    single_r = stabkern.sign_reconstruct(y, n, seed=2**63 + 5, stream=7)
    for proj, rec in results:
        assert torch.equal(proj, single_p)  # bitwise, whatever the number of ranks
        assert torch.equal(rec, results[0][1])  # the same bits on every rank
        # Each entry is (1/k) sum_t y_t S_t: float32 sums of k terms in two different orders differ by at
        # most 2 (k - 1) u sum_t |y_t| / k (u = 2^-24, first-order bound for recursive summation).
        bound = 2 * (k - 1) * 2.0**-24 * y.abs().sum(-1, keepdim=True) / k
        assert ((rec - single_r).abs() <= bound).all()
