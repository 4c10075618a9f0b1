"""Regressions of the propagation defects a 2,500-probe fuzz found (issue 16, items 2a, 2b, 2f, 2g and the
one-sample chunk): each model against the naive per-layer, per-trial loop (tests/helpers/stability_reference.py)
with the same noise (stabkern-noise-v1).

Tolerance: `rounding_tolerance` (derivation in its docstring): float32 unit roundoff times each layer's
condition estimate and fan-in, carried through the measured gains. Under precision "medium" the same bound
with bfloat16's unit roundoff (2^-8, against float32's 2^-24): the bound is linear in the unit roundoff.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from helpers import stability_reference as ref
from stabkern.stability import noise_attenuation
from stabkern.stability.context import DataSource, metering, plan_chunks, prepare

ALPHA, TRIALS, SEED = 0.1, 2, 3
BF16_OVER_FP32 = 2.0 ** 16  # unit roundoff of bfloat16 (2^-8) over float32's (2^-24)


class ThreeLinear(nn.Module):
    """fc0 and fc1 both read the input (parallel); fc2 reads what the forward makes of them."""

    def __init__(self):
        super().__init__()
        self.fc0, self.fc1, self.fc2 = nn.Linear(8, 16), nn.Linear(8, 16), nn.Linear(16, 4)


class DetachOnly(ThreeLinear):  # fc2 sees fc0 only through .detach(): no tangent reaches it
    def forward(self, x):
        a = self.fc0(x).detach()
        return self.fc2(self.fc1(x) + torch.relu(a))


class MaskOnly(ThreeLinear):  # fc2 sees fc0 only through a mask compared from its output
    def forward(self, x):
        a = self.fc0(x)
        b = self.fc1(x)
        b.masked_fill_(a > 0, 0)
        return self.fc2(b)


class UntraceableDetach(DetachOnly):  # a Python branch on a value: torch.fx cannot trace it, auto uses hooks
    def forward(self, x):
        a = self.fc0(x)
        if a.sum() > -1e9:
            a = a.detach()
        return self.fc2(self.fc1(x) + torch.relu(a))


class WritesInput(ThreeLinear):  # fc1 reads the input after the forward doubled it in place
    def forward(self, x):
        a = self.fc0(x)
        x.mul_(2)
        return self.fc2(a + self.fc1(x))


class ConvWritesInput(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv0, self.conv1 = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        a = self.conv0(x)
        x.mul_(2)
        h = torch.relu(a + self.conv1(x))
        return self.fc(h.mean((2, 3)))


class NewOnes(ThreeLinear):  # a non-batch tensor made from the input before fc0, read after it
    def forward(self, x):
        scale = x.new_ones(16)
        a = self.fc0(x)
        return self.fc2(a * scale + self.fc1(x))


class Linspace(ThreeLinear):
    def forward(self, x):
        ramp = torch.linspace(0, 1, 2 * x.shape[-1], device=x.device)
        a = self.fc0(x)
        return self.fc2(a * ramp + self.fc1(x))


class NewTensor(ThreeLinear):
    def forward(self, x):
        two = x.new_tensor(2.0)
        a = self.fc0(x)
        return self.fc2(a * two + self.fc1(x))


class BatchStatistic(ThreeLinear):  # h.mean(0): a sample's output depends on the other samples
    def forward(self, x):
        a = self.fc0(x)
        return self.fc2(self.fc1(x) - a.mean(0, keepdim=True))


class IndexAdd(nn.Module):  # issue 16 item 2g: index_add_ of a noisy value into a clean tensor
    def __init__(self):
        super().__init__()
        self.fc0, self.fc1, self.fc2 = nn.Linear(8, 16), nn.Linear(16, 16), nn.Linear(16, 4)

    def forward(self, x):
        a = self.fc0(x)
        z = torch.zeros_like(a)  # bf16 under autocast, like a; float32 in the clean pass
        z.index_add_(1, torch.arange(16, device=x.device), self.fc1(a))
        return self.fc2(z)


class Squeeze(nn.Module):  # (B, C, 1, 1).squeeze(): (C,) for a one-sample batch
    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(nn.functional.adaptive_avg_pool2d(torch.relu(self.conv(x)), 1).squeeze())


def _model(cls):
    torch.manual_seed(1)
    return cls().eval()


def _vectors(n=6):
    return torch.randn(n, 8, generator=torch.Generator().manual_seed(2))


def _images(n=6):
    return torch.randn(n, 3, 8, 8, generator=torch.Generator().manual_seed(2))


def check_against_naive(model, x, methods=("graph", "hooks"), **kwargs):
    """Per-sample mean r of each method within rounding of the naive loop, NaN exactly for the layer pairs where
    the naive loop sees no change on any sample; the data bitwise unchanged (values and strides). Returns the
    reports."""
    given, strides = x.clone(), x.stride()
    naive = ref.attenuation_reference(model, x, alpha=ALPHA, trials=TRIALS, seed=SEED, spec_noise=True).mean(0).numpy()
    reports = {}
    for method in methods:
        rep = noise_attenuation(model, x, alpha=ALPHA, trials=TRIALS, seed=SEED, method=method, **kwargs)
        assert torch.equal(x, given) and x.stride() == strides, "the meter wrote into the data"
        tol = ref.rounding_tolerance(model, x, rep)
        upper = np.triu(np.ones(tol.shape, dtype=bool))
        undefined = np.isnan(rep.per_sample)
        # NaN per layer pair: where no sample's output changes (a mask may stay put for one sample: r = 0 there)
        np.testing.assert_array_equal(undefined[:, upper], np.broadcast_to((naive == 0).all(0), naive.shape)[:, upper])
        err = np.abs(rep.per_sample - naive)
        assert np.all(err[~undefined] <= np.broadcast_to(tol, err.shape)[~undefined]), (method, np.nanmax(err))
        reports[method] = rep
    return reports


# -- 2a: the hooks path sees noise that no tangent carries ------------------------------------------------

@pytest.mark.parametrize("cls", [DetachOnly, MaskOnly])
def test_hooks_path_sees_noise_through_detach_and_masks(cls):
    """fc2 depends on fc0 only through .detach() / a mask: the naive loop sees r ~ 0.1 there; the hooks path
    reported NaN ("does not depend")."""
    model = _model(cls)
    reports = check_against_naive(model, _vectors())
    assert np.isfinite(reports["hooks"].mean[0, 2]) and reports["hooks"].mean[0, 2] > 0.01
    assert np.isnan(reports["hooks"].mean[0, 1])  # fc1 is parallel to fc0: no change, NaN as before


def test_auto_warns_when_fx_cannot_trace_and_hooks_are_exact():
    model, x = _model(UntraceableDetach), _vectors()
    with pytest.warns(UserWarning, match=r"forward hooks .* torch\.fx cannot trace UntraceableDetach"):
        rep = noise_attenuation(model, x, alpha=ALPHA, trials=TRIALS, seed=SEED)
    assert rep.method == "hooks"
    check_against_naive(model, x, methods=("hooks",))


# -- 2b: a forward that writes into its input --------------------------------------------------------------

def test_forward_writing_its_input_matches_the_naive_loop_and_leaves_2d_data_unwritten():
    """The hooks noisy passes reran on the input the clean pass had doubled (r 44x the naive loop's), and the
    caller's 2-D tensor was doubled on every pass."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the graph replays it: no fallback
        check_against_naive(_model(WritesInput), _vectors())


@pytest.mark.parametrize("channels_last_data", [False, True])
def test_conv_forward_writing_its_input_leaves_the_data_unwritten(channels_last_data):
    """4-D data already channels_last was passed through `.contiguous()` uncopied and written."""
    x = _images()
    if channels_last_data:
        x = x.contiguous(memory_format=torch.channels_last)
    check_against_naive(_model(ConvWritesInput), x)


# -- 2f: values made from the input without the batch dimension; batch statistics ---------------------------

@pytest.mark.parametrize("cls", [NewOnes, Linspace, NewTensor, IndexAdd])
def test_graph_path_reuses_values_without_a_batch_dimension(cls):
    """x.new_ones(C), torch.linspace(.., x.shape[-1]), x.new_tensor(2.0), torch.arange(.., device=x.device)
    were repeated over the trials as if batched: a raw shape error."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # graph path, no fallback
        check_against_naive(_model(cls), _vectors())


@pytest.mark.parametrize("method", ["auto", "graph", "hooks"])
def test_batch_statistics_are_refused(method):
    """A sample's output depends on the others (h.mean(0)): neither path can batch trials for it."""
    with pytest.raises(ValueError, match="couples the samples of a batch: layer 'fc2'"):
        noise_attenuation(_model(BatchStatistic), _vectors(), alpha=ALPHA, trials=TRIALS, method=method)


# -- 2g: precision "medium" -------------------------------------------------------------------------------

def test_medium_precision_reads_clean_values_in_the_autocast_dtype():
    """index_add_ of a noisy bf16 value into the clean float32 `z` crashed; under autocast `z` is bf16. Graph
    and hooks (the model run under autocast as it is) agree within the bfloat16 rounding bound."""
    model, x = _model(IndexAdd), _vectors()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(x).dtype == torch.bfloat16  # the model itself runs under autocast
    reps = {m: noise_attenuation(model, x, alpha=ALPHA, trials=TRIALS, seed=SEED, method=m, precision="medium")
            for m in ("graph", "hooks")}
    assert reps["graph"].method == "graph"
    fp32 = noise_attenuation(model, x, alpha=ALPHA, trials=TRIALS, seed=SEED, method="graph")
    tol = BF16_OVER_FP32 * ref.rounding_tolerance(model, x, fp32)
    upper = np.triu(np.ones(tol.shape, dtype=bool))
    for rep in reps.values():
        assert np.all(np.isfinite(rep.mean[upper]))
        assert np.all(np.abs(rep.mean - fp32.mean)[upper] <= tol[upper])
    assert np.all(np.abs(reps["graph"].mean - reps["hooks"].mean)[upper] <= 2 * tol[upper])


# -- one-sample chunks -------------------------------------------------------------------------------------

def test_chunks_never_leave_one_sample_behind():
    sizes = {n: [x.shape[0] for _, x, _ in DataSource(torch.zeros(n, 2)).chunks(3)] for n in (6, 7, 8, 10)}
    assert sizes == {6: [3, 3], 7: [3, 2, 2], 8: [3, 3, 2], 10: [3, 3, 2, 2]}
    starts = [s0 for s0, _, _ in DataSource([torch.zeros(4, 2), torch.zeros(3, 2)]).chunks(3)]
    assert starts == [0, 3, 5]


def _budget_for(model, x, samples):
    """A memory_budget that plan_chunks turns into `samples` samples a chunk."""
    with metering(model):
        layers = prepare(model, x).layers
    budget = 1 << 20
    while plan_chunks(layers, x.shape[0], TRIALS, 4, budget, torch.device("cpu"))[0] > samples:
        budget -= 1000
    assert plan_chunks(layers, x.shape[0], TRIALS, 4, budget, torch.device("cpu"))[0] == samples
    return budget


@pytest.mark.parametrize("method", ["graph", "hooks"])
def test_squeezing_model_meters_with_a_remainder_of_one(method):
    """7 samples in chunks of 3 left a chunk of one, which x.squeeze() turned into (C,): a raw IndexError."""
    model, x = _model(Squeeze), _images(7)
    check_against_naive(model, x, methods=(method,), memory_budget=_budget_for(model, x, 3))


def test_one_sample_chunk_of_a_squeezing_model_is_a_clear_error():
    """Chunks of 2 cannot cover 7 samples without a one-sample chunk: the error names the cause."""
    model, x = _model(Squeeze), _images(7)
    with pytest.raises(ValueError, match="drops the batch dimension"):
        noise_attenuation(model, x, trials=TRIALS, memory_budget=_budget_for(model, x, 2))
