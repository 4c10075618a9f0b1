"""stabkern.distributed: shards, fixed-order gathers and the sharded sign ops on 2 gloo ranks (CPU).

Projection: every row of S is its own counter, so gathering row blocks gives the single-process bits
whatever the number of ranks. Reconstruction: partial sums over each rank's rows, added in rank order:
bitwise equal on every rank and run to run, and equal to the single-process result within float32
rounding of a k-term sum (the bound is derived in the test).
"""

import numpy as np
import pytest
import torch

import stabkern
from helpers import stability_reference as ref
from helpers.distributed import run_ranks, torch_threads
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


# --- the meters, choose_k and compress_model on ranks -------------------------------------------------------
# Each (chunk, injection layer) of a meter and each layer of compress_model is computed by one rank and every
# entry is taken from its owner (distributed.merge_owned: a selection, no arithmetic), so every rank must get
# the one-process result bit for bit when the process runs with the ranks' torch thread count (1 here):
# compared with np.array_equal / torch.equal, no tolerance. With another thread count torch's matrix products
# may round differently (MKL's sgemm does on AMD EPYC): test_thread_count_changes_only_rounding.

def _digits_case():
    from stabkern.zoo.digits import DigitsNet

    torch.manual_seed(0)
    model = DigitsNet(4).eval()
    x = torch.randn(7, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    return model, x


def _meters_on_ranks(group):
    from stabkern.compress import choose_k, compress_model
    from stabkern.stability import interlayer_cushion, measure, noise_attenuation

    model, x = _digits_case()
    calls = []
    att = noise_attenuation(model, [x[:3], x[3:]], trials=3, seed=9, memory_budget=_budget(), group="world",
                            progress=lambda *a: calls.append(a))
    rep = measure(model, x, alpha=0.2, trials=2, probes=2, draws=1, spectral_iters=3, margin=0.5, group=group)
    cushion = interlayer_cushion(model, x, probes=2, group=group)
    compressed, report = compress_model(model, 24, seed=3, group=group)
    kc = choose_k(model, x, 0.9, C=0.5, batch_size=3, group=group)
    try:  # non-finite noisy values; one injection layer, one chunk: one unit, its owner (rank 0) raises
        noise_attenuation(model, x[:2], trials=1, alpha=1e38, layers=["features.0"], group=group)
        failure = None
    except Exception as err:  # noqa: BLE001 - the type is what the test checks
        failure = type(err).__name__
    return (att.per_sample, att.per_sample_sq, att.mean, rep.to_dict(), cushion, compressed.state_dict(),
            [r.rel_fro_error for r in report.layers], kc.to_dict(), calls, failure)


def _budget():
    return 80_000  # chunks of 2 samples for DigitsNet(4) (context.plan_chunks): 4 chunks x 5 injection layers


def test_meters_and_compress_on_two_ranks_equal_one_process(tmp_path):
    from stabkern.compress import choose_k, compress_model
    from stabkern.stability import interlayer_cushion, measure, noise_attenuation

    model, x = _digits_case()
    with torch_threads(1):
        att = noise_attenuation(model, x, trials=3, seed=9, memory_budget=_budget())
        rep = measure(model, x, alpha=0.2, trials=2, probes=2, draws=1, spectral_iters=3, margin=0.5).to_dict()
        cushion = interlayer_cushion(model, x, probes=2)
        compressed, report = compress_model(model, 24, seed=3)
        kc = choose_k(model, x, 0.9, C=0.5, batch_size=3).to_dict()
    results = run_ranks(_meters_on_ranks, 2, tmp_path)
    for got in results:
        per_sample, per_sample_sq, mean, rep2, cushion2, state, errors, kc2, calls, failure = got
        assert np.array_equal(per_sample, att.per_sample, equal_nan=True)
        assert np.array_equal(per_sample_sq, att.per_sample_sq, equal_nan=True)
        assert np.array_equal(mean, att.mean, equal_nan=True)
        assert _same(rep2, rep)
        assert _same(cushion2, cushion)
        assert state.keys() == compressed.state_dict().keys()
        assert all(torch.equal(state[k], v) for k, v in compressed.state_dict().items())
        assert errors == [r.rel_fro_error for r in report.layers]
        assert _same(kc2, kc)
        done = [d for _, d, _ in calls]
        assert done == sorted(done) and calls[-1][1] == calls[-1][2]
        assert failure in ("FloatingPointError", "RuntimeError")
    assert [got[-1] for got in results] == ["FloatingPointError", "RuntimeError"]  # the owner's error, the other's


def _same(a, b) -> bool:
    """a == b for nested dicts/lists of floats, NaN equal to NaN (the reports hold NaN where undefined)."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(_same(u, v) for u, v in zip(a, b))
    if isinstance(a, float) and isinstance(b, float) and np.isnan(a) and np.isnan(b):
        return True
    return a == b


def _attenuation_on_ranks(group):
    from stabkern.stability import noise_attenuation

    model, x = _digits_case()
    return noise_attenuation(model, x, trials=2, seed=4, memory_budget=_budget(), group=group).per_sample


def test_attenuation_on_four_ranks_equals_one_process(tmp_path):
    from stabkern.stability import noise_attenuation

    model, x = _digits_case()
    with torch_threads(1):
        single = noise_attenuation(model, x, trials=2, seed=4, memory_budget=_budget()).per_sample
    for per_sample in run_ranks(_attenuation_on_ranks, 4, tmp_path):
        assert np.array_equal(per_sample, single, equal_nan=True)


def test_thread_count_changes_only_rounding():
    """The same meter in one process with 1 and with 2 torch threads: stabkern's kernels give the same bits,
    torch's matrix products may not (a (6, 64) x (64, 64) Linear on an AMD EPYC), so the two agree within
    the float32 rounding of the net (`ref.rounding_tolerance`, derived in its docstring), not bit for bit."""
    from stabkern.stability import noise_attenuation

    model, x = _digits_case()
    reports = []
    for threads in (1, 2):
        with torch_threads(threads):
            reports.append(noise_attenuation(model, x, trials=3, seed=9, memory_budget=_budget()))
    one, two = (rep.per_sample for rep in reports)
    assert np.array_equal(np.isnan(one), np.isnan(two))
    tol = np.broadcast_to(ref.rounding_tolerance(model, x, reports[0]), one.shape)
    defined = ~np.isnan(one)
    assert (np.abs(one - two)[defined] <= tol[defined]).all()


def _attenuation_with_warnings(group):
    import warnings

    from stabkern.stability import noise_attenuation

    model, x = _digits_case()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        noise_attenuation(model, x, trials=1, seed=4, memory_budget=_budget(), group=group)
    return [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]


def test_ranks_with_different_thread_counts_are_warned(tmp_path):
    """1 and 2 threads: the merged result is no single process's bits, and every rank says so."""
    for messages in run_ranks(_attenuation_with_warnings, 2, tmp_path, threads=[1, 2]):
        assert any("different thread counts [1, 2]" in m for m in messages)


def test_ranks_with_equal_thread_counts_are_not_warned(tmp_path):
    for messages in run_ranks(_attenuation_with_warnings, 2, tmp_path):
        assert not any("thread counts" in m for m in messages)


class _FailsOnMarkedBatch(torch.nn.Module):
    """A Linear that raises on a batch holding the marker value 123."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x):
        if (x == 123.0).any():
            raise ValueError("marked batch")
        return self.fc(x)


def _choose_k_on_ranks(group):
    from stabkern.compress import choose_k

    torch.manual_seed(0)
    x = torch.randn(6, 4)
    x[4, 0] = 123.0  # in batch 1 (batch_size 3), owned by rank 1
    try:
        choose_k(_FailsOnMarkedBatch(), x, 0.9, C=0.5, batch_size=3, group=group)
    except Exception as err:  # noqa: BLE001 - the type is what the test checks
        return type(err).__name__
    return None


def test_choose_k_failure_on_one_rank_raises_on_every_rank(tmp_path):
    """Regression: rank 0 waited forever in the gather of statistics when rank 1's batch raised."""
    assert run_ranks(_choose_k_on_ranks, 2, tmp_path) == ["RuntimeError", "ValueError"]


def test_is_main_process_without_a_group():
    assert D.is_main_process(None)


def test_merge_owned_single_process_is_identity():
    a = np.arange(6.0).reshape(3, 2)
    (b,) = D.merge_owned([a], np.zeros(3, dtype=int), None)
    assert b is a


def _study_nets():
    from stabkern.study import Net

    nets = []
    for i in range(3):
        torch.manual_seed(i)
        model = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                                    torch.nn.Linear(3 * 6 * 6, 4)).eval()
        g = torch.Generator().manual_seed(100 + i)
        data = (torch.randn(12, 1, 6, 6, generator=g), torch.randint(0, 4, (12,), generator=g))
        nets.append(Net(name=f"net{i}", model=model, train=data, test=data, hyperparameters={"i": i}))
    return nets


def _study_on_ranks(group, out):
    import warnings

    from stabkern.study import Settings, run_study

    warnings.simplefilter("ignore")  # random nets: measure warns that the bounds are undefined
    return run_study(_study_nets(), f"{out}/rank{D.group_rank_size(group)[0]}",
                     settings=Settings(samples=8, probes=2, trials=2), resamples=200, group=group)


@pytest.mark.filterwarnings("ignore:the 0.1 quantile of the margins")
def test_study_shares_nets_over_ranks_and_equals_one_process(tmp_path):
    from stabkern.study import Settings, run_study

    reports = run_ranks(_study_on_ranks, 2, tmp_path, str(tmp_path))
    with torch_threads(1):
        one = run_study(_study_nets(), None, settings=Settings(samples=8, probes=2, trials=2), resamples=200)
    assert reports[0] == reports[1] == one
    assert (tmp_path / "rank0" / "study.json").exists() and not (tmp_path / "rank1" / "study.json").exists()
    # each rank cached only the nets it measured (round robin)
    assert sorted(p.name[:4] for p in (tmp_path / "rank1" / "nets").glob("*.json")) == ["net1"]
