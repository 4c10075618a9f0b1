"""The card's cost: the accuracy-vs-k fractions (validated, skippable), the one-projection sweep (the same
sketches as compress_model), the estimate given before the work, and measure's progress per layer."""

import json

import pytest
import torch
from torch import nn

from stabkern.card import build_card
from stabkern.card.build import check_fractions
from stabkern.card.sweep import fast_path_ok, sketched_copies, sweep
from stabkern.compress import compress_model
from stabkern.sketched import reconstruct_weight
from stabkern.cli.main import main

U32 = torch.finfo(torch.float32).eps / 2  # float32 unit roundoff


def small_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 4, 3), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 4 * 4, 5)).eval()


def data(n=12):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(n, 2, 6, 6, generator=gen)
    return x, torch.randint(0, 5, (n,), generator=gen)


@pytest.mark.parametrize("mode", ["filter", "tensor"])
def test_sweep_weights_are_compress_models_sketches(mode):
    """A_hat accumulated from one projection equals compress_model's A_hat at each k: the same coefficients
    (the first k of the largest k's) and the same signs, summed in another order. Each entry of
    (1/k) sum_t c_t S_t in float32 is within gamma_k sum_t |c_t| / k ~ u sum_t |c_t| of exact (k terms); two
    orders differ by at most twice that, plus one rounding of the division."""
    model = small_net()
    names = ["0", "2", "5"]
    caps = {n: (model.get_submodule(n).weight[0].numel() if mode == "filter" else model.get_submodule(n).weight.numel())
            for n in names}
    fractions = (0.2, 0.5, 1.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    seen = 0
    for f, ks, copy, errors in sketched_copies(model, caps, fractions, mode=mode, seed=7):
        small, report = compress_model(model, ks, mode=mode, seed=7, allow_no_compression=True)
        reported = {r.name: r.rel_fro_error for r in report.layers}
        for name in names:
            sk = small.get_submodule(name)
            expected = reconstruct_weight(sk.coefficients, tuple(sk.weight_shape), mode=mode, seed=7,
                                          stream=int(sk.stream))
            rows = sk.coefficients.reshape(len(sk.coefficients) if mode == "filter" else 1, -1)
            bound = (2.1 * ks[name] * U32 * rows.abs().sum(1) / ks[name]).reshape(-1, *[1] * (expected.dim() - 1))
            got = copy.get_submodule(name).weight
            entrywise = bound + 2 * U32 * expected.abs()
            assert ((got - expected).abs() <= entrywise).all(), (f, name)
            # the relative weight error: | ||got - A|| - ||expected - A|| | <= ||got - expected|| (triangle), so
            # the two reports differ by at most the entrywise bound's norm over ||A|| (plus float64 sums: nothing)
            a = model.get_submodule(name).weight
            assert abs(errors[name] - reported[name]) <= float(entrywise.norm() / a.norm()) + 1e-12, (f, name)
        seen += 1
    assert seen == len(fractions)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the model is untouched


def test_sweep_curve_matches_compress_model_totals():
    model, (x, y) = small_net(), data()
    caps = {n: model.get_submodule(n).weight[0].numel() for n in ["0", "2", "5"]}
    curve = sweep(model, x, y, caps, (0.5, 1.0), mode="filter", seed=3)
    for point in curve:
        _, report = compress_model(model, point["k"], mode="filter", seed=3, allow_no_compression=True)
        totals = report.totals()
        assert point["stored"] == totals["stored"] and point["ratio"] == pytest.approx(totals["ratio"])


def test_fast_path_only_where_it_mirrors_compress_model():
    model = small_net()
    assert fast_path_ok(model, ["0", "2", "5"])
    tied = small_net()
    tied.add_module("again", tied[5])  # one module under two names is fine: one weight, one holder
    assert fast_path_ok(tied, ["0", "5"])
    shared = small_net()
    shared.append(nn.Linear(5, 5))
    shared.append(nn.Linear(5, 5))
    shared[7].weight = shared[6].weight  # two modules, one Parameter: compress_model ties their sketches
    assert not fast_path_ok(shared, ["6", "7"])
    normed = small_net()
    nn.utils.parametrizations.weight_norm(normed[5])
    assert not fast_path_ok(normed, ["5"])


@pytest.mark.parametrize("fractions, says", [((0.5, 0.1), "increasing"), ((0.1, 0.1), "increasing"),
                                            ((0.0, 1.0), r"\(0, 1\]"), ((0.5, 2.0), r"\(0, 1\]")])
def test_fractions_are_checked(fractions, says):
    with pytest.raises(ValueError, match=says):
        check_fractions(fractions)
    model, (x, y) = small_net(), data()
    with pytest.raises(ValueError, match=says):
        build_card(model, x, y, fractions=fractions, trials=1)


def test_card_estimate_first_progress_per_layer_and_no_sweep():
    """The estimate comes before any progress; measure moves once per chunk and layer of each meter (not 0/1
    then 1/1); with fractions () the curve is skipped (null) and not timed."""
    model, (x, y) = small_net(), data()
    events = []
    card = build_card(model, x, y, trials=1, probes=2, fractions=(),
                      progress=lambda stage, done, total: events.append((stage, done, total)),
                      on_estimate=lambda estimate: events.append(("estimate", estimate)))
    assert events[0][0] == "estimate"
    estimate = events[0][1]
    assert set(estimate) == {"weights", "measure", "choose_k", "compress"} and all(v > 0 for v in estimate.values())
    measure = [(done, total) for stage, *rest in events[1:] if stage == "measure" for done, total in [rest]]
    layers = 3
    assert len(measure) >= 2 * layers and measure[-1][0] == measure[-1][1]
    assert [d for d, _ in measure] == sorted(d for d, _ in measure) and len({t for _, t in measure}) == 1
    prov = card.doc["provenance"]
    assert prov["estimated_time_s"] == estimate and "accuracy vs k" not in prov["wall_time_s"]
    assert card.doc["accuracy_vs_k"] is None


def test_cli_card_prints_the_estimate_and_takes_sweep(capsys, tmp_path):
    import numpy as np

    from stabkern.zoo.digits import DigitsNet

    torch.manual_seed(0)
    torch.save(DigitsNet().state_dict(), tmp_path / "net.pt")
    x = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    np.savez(tmp_path / "d.npz", x=x.numpy(), y=np.arange(16) % 10)
    argv = ["card", f"digits:{tmp_path / 'net.pt'}", "--data", str(tmp_path / "d.npz"), "--trials", "1",
            "--out", str(tmp_path / "out"), "--name", "c", "--json"]
    assert main(argv + ["--sweep", "0.5,0.2"]) == 2
    assert "--sweep 0.5,0.2" in capsys.readouterr().err
    assert main(argv + ["--sweep", "0.25,1"]) == 0
    out = capsys.readouterr()
    assert "estimated cost: weights" in out.err and ", measure " in out.err
    doc = json.loads(out.out)
    assert [p["fraction"] for p in doc["accuracy_vs_k"]] == [0.25, 1.0]
    assert set(doc["provenance"]["estimated_time_s"]) == set(doc["provenance"]["wall_time_s"])
    assert doc["data"]["normalization"]["source"] == "data as given"
    assert "Inputs: 8x8 pixels, not normalized" in (tmp_path / "out" / "c" / "card.md").read_text()


def test_accuracy_gives_each_module_its_own_training_flag_back():
    """A training model with a frozen BatchNorm keeps both flags after accuracy(), also when its forward raises."""
    from stabkern.card.sweep import accuracy

    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 3)).train()
    model[1].eval()  # frozen statistics inside a training model
    x, y = torch.randn(10, 4), torch.randint(0, 3, (10,))
    assert 0.0 <= accuracy(model, x, y) <= 1.0
    assert model.training and model[0].training and not model[1].training
    with pytest.raises(RuntimeError):
        accuracy(model, torch.randn(10, 5), y)  # wrong width: the first Linear raises
    assert model.training and model[0].training and not model[1].training
