"""Meters on streamed data (a DataLoader, a list, a generator, (inputs, labels) pairs) and progress.

Why the streamed results are compared with ==: a stream is cut and joined into the meters' chunks
(context.DataSource), so each chunk holds the same samples as when the data is one tensor, and a sample's
noise counter is its position in the stream. The same chunks in, the same arithmetic runs: the results
are the same bits, which is stronger than any floating-point tolerance. The budget below makes chunks of
4 samples, so the loaders' batches of 1, 3 and 7 are cut and joined across chunk boundaries.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from stabkern.stability import (activation_contraction, interlayer_cushion, interlayer_smoothness, layer_cushion,
                                measure, noise_attenuation, noise_sensitivity)
from stabkern.stability.context import DataSource, plan_chunks
from stabkern.stability.layers import resolve_layers, trace_layers
from stabkern.zoo.digits import DigitsNet

TRIALS = 2
FAST = dict(trials=TRIALS, probes=2, draws=1, spectral_iters=3, margin=0.5)


def net_and_data(n=11):
    torch.manual_seed(0)
    model = DigitsNet(4).eval()
    x = torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 10, (n,), generator=torch.Generator().manual_seed(2))
    return model, x, y


def budget_for(model, x, samples: int, trials: int = TRIALS) -> int:
    """A memory_budget that makes attenuation chunks of `samples` samples (context.plan_chunks' cost model:
    2 x every layer's input and output kept, 4 x the largest activation per trial, float32)."""
    layers = trace_layers(model, x[:1], resolve_layers(model, None))
    kept = 2 * sum(math.prod(la.in_shape) + math.prod(la.out_shape) for la in layers) * 4
    per_trial = 4 * max(max(math.prod(la.in_shape), math.prod(la.out_shape)) for la in layers) * 4
    budget = samples * (kept + trials * per_trial)
    assert plan_chunks(layers, len(x), trials, 4, budget, torch.device("cpu")) == (samples, trials)
    return budget


def streams(x, y=None):
    """The same samples as a list, DataLoaders with batches of 1, 3, 7, and (x, y) pairs when y is given."""
    out = {"list": [x[:5], x[5:6], x[6:]]}
    for bs in (1, 3, 7):
        ds = TensorDataset(x) if y is None else TensorDataset(x, y)
        out[f"loader{bs}"] = DataLoader(ds, batch_size=bs)
    return out


def assert_same_report(a, b):
    for field in ("mean", "std", "ci_low", "ci_high", "mc_se", "per_sample", "per_sample_sq"):
        assert np.array_equal(getattr(a, field), getattr(b, field), equal_nan=True), field


def test_noise_attenuation_streams_equal_the_tensor():
    model, x, _ = net_and_data()
    budget = budget_for(model, x, 4)
    ref = noise_attenuation(model, x, trials=TRIALS, seed=3, memory_budget=budget)
    for name, data in streams(x).items():
        assert_same_report(noise_attenuation(model, data, trials=TRIALS, seed=3, memory_budget=budget), ref)
    gen = (x[i:i + 2] for i in range(0, len(x), 2))
    assert_same_report(noise_attenuation(model, gen, trials=TRIALS, seed=3, memory_budget=budget), ref)


def test_same_noise_per_sample_whatever_the_chunking():
    """A sample's noise is its stream position's: chunks of 1 sample give each sample's one-chunk values
    within float32 rounding of the batched convolutions (not bitwise: different batch shapes may take
    different kernels). Per-sample mean r is a ratio of norms of float32 activations of ~1e2 entries each;
    a relative error of 1e-4 is ~1e3 unit roundoffs (2^-24 ~ 6e-8), far above the rounding of 5 layers,
    far below the spread between different noise draws (r differs by O(1) relative)."""
    model, x, _ = net_and_data(6)
    one = noise_attenuation(model, x, trials=TRIALS, seed=5)
    single = noise_attenuation(model, [x[i:i + 1] for i in range(6)], trials=TRIALS, seed=5,
                               memory_budget=budget_for(model, x, 1))
    upper = ~np.isnan(one.per_sample)
    assert np.allclose(single.per_sample[upper], one.per_sample[upper], rtol=1e-4, atol=0)
    other_seed = noise_attenuation(model, x, trials=TRIALS, seed=6)
    assert not np.allclose(other_seed.per_sample[upper], one.per_sample[upper], rtol=1e-4, atol=0)


def test_every_meter_accepts_a_loader():
    model, x, _ = net_and_data(7)
    loader = DataLoader(TensorDataset(x), batch_size=3)
    for meter, kwargs in ((layer_cushion, {}), (activation_contraction, {}), (interlayer_cushion, dict(probes=2)),
                          (interlayer_smoothness, dict(draws=2)), (noise_sensitivity, dict(trials=2))):
        assert meter(model, loader, **kwargs) == meter(model, x, **kwargs), meter.__name__
        gen = (x[i:i + 3] for i in range(0, 7, 3))
        assert meter(model, gen, **kwargs) == meter(model, x, **kwargs), meter.__name__


def test_measure_streams_and_takes_labels_from_pairs():
    model, x, y = net_and_data(9)
    budget = budget_for(model, x, 4)
    ref = measure(model, x, y, memory_budget=budget, **FAST).to_dict()
    for name, data in streams(x, y).items():
        if name == "list":
            data = [(x[:5], y[:5]), (x[5:], y[5:])]
        got = measure(model, data, memory_budget=budget, **FAST).to_dict()
        assert got == ref, name
    gen = ((x[i:i + 2], y[i:i + 2]) for i in range(0, 9, 2))
    assert measure(model, gen, memory_budget=budget, **FAST).to_dict() == ref
    # without labels in the stream: the model's own predictions, as for the tensor without labels
    assert measure(model, DataLoader(TensorDataset(x), batch_size=4), **FAST).to_dict() == \
        measure(model, x, **FAST).to_dict()


def test_empty_and_bad_streams_are_clear_errors():
    model, x, _ = net_and_data(3)
    for empty in ([], iter([]), DataLoader(TensorDataset(x[:0]), batch_size=2), (b for b in [])):
        with pytest.raises(ValueError, match="empty"):
            noise_attenuation(model, empty, trials=1)
    with pytest.raises(ValueError, match="empty"):
        measure(model, [], **FAST)
    with pytest.raises(TypeError, match="each batch must be a tensor"):
        noise_attenuation(model, [x, "not a batch"], trials=1)
    with pytest.raises(ValueError, match="shape"):
        noise_attenuation(model, [x, torch.randn(2, 1, 9, 9)], trials=1)
    with pytest.raises(ValueError, match="NaN or Inf"):
        noise_attenuation(model, [x, torch.full((2, 1, 8, 8), float("nan"))], trials=1)
    with pytest.raises(TypeError, match="data must be"):
        noise_attenuation(model, 3.0, trials=1)
    with pytest.raises(ValueError, match=r"labels must have shape \(3,\)"):
        measure(model, [x[:2], x[2:]], torch.tensor([1, 2]), **FAST)


def test_one_shot_iterator_read_twice_is_a_clear_error():
    _, x, _ = net_and_data(3)
    source = DataSource(b for b in [x[:2], x[2:]])
    assert [s0 for s0, _, _ in source.chunks(2)] == [0, 2]
    with pytest.raises(ValueError, match="one-shot"):
        list(source.chunks(2))


def check_progress(calls, stage):
    """Monotone done, the last call done == total, and (here, known lengths) one total throughout."""
    calls = [c for c in calls if c[0] == stage]
    assert calls, stage
    done = [d for _, d, _ in calls]
    totals = {t for _, _, t in calls}
    assert done == sorted(done) and all(d >= 0 for d in done)
    assert len(totals) == 1 and done[-1] == calls[-1][2]
    return calls[-1][2]


def test_progress_is_monotone_and_ends_at_the_total():
    model, x, y = net_and_data(9)
    budget = budget_for(model, x, 4)
    layers = 5
    calls = []
    noise_attenuation(model, x, trials=TRIALS, memory_budget=budget, progress=lambda *a: calls.append(a))
    assert check_progress(calls, "attenuation") == 3 * layers  # 3 chunks of <= 4 samples x 5 injection layers
    calls = []
    interlayer_cushion(model, DataLoader(TensorDataset(x), batch_size=2), probes=2,
                       progress=lambda *a: calls.append(a))
    check_progress(calls, "interlayer cushion")
    calls = []
    measure(model, x, y, progress=lambda *a: calls.append(a), **FAST)
    check_progress(calls, "measure")
    # a generator: length unknown, so the total runs ahead of done until the end, then equals it
    calls = []
    noise_attenuation(model, (x[i:i + 4] for i in range(0, 9, 4)), trials=TRIALS, memory_budget=budget,
                      progress=lambda *a: calls.append(a))
    assert [d for _, d, _ in calls] == sorted(d for _, d, _ in calls)
    assert calls[-1][1] == calls[-1][2] == 3 * layers
    assert all(d < t for _, d, t in calls[:-1])
    with pytest.raises(TypeError, match="progress"):
        noise_attenuation(model, x, trials=1, progress="tqdm")


def test_group_is_checked_by_every_meter():
    if torch.distributed.is_initialized():
        pytest.skip("a process group exists in this process")
    model, x, _ = net_and_data(2)
    for meter in (layer_cushion, activation_contraction, interlayer_cushion, noise_attenuation):
        with pytest.raises(RuntimeError, match="init_process_group"):
            meter(model, x, group="world")
