"""run_study: the report's contents and schema, resume after an interruption, a failing net, bad input."""

import json

import pytest
import torch
from torch import nn

from stabkern.schemas import validate
from stabkern.study import measures as study_measures
from stabkern.study.measures import MEASURES, accuracy_and_loss
from stabkern.study.run import Net, Settings, run_study

# random nets misclassify most samples: measure warns that the bounds are undefined, which is what they are
pytestmark = pytest.mark.filterwarnings("ignore:the 0.1 quantile of the margins")

SETTINGS = Settings(samples=12, seed=0, probes=2, trials=2)


def _net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 6 * 6, 4)).eval()


def _data(seed: int, n: int):
    g = torch.Generator().manual_seed(100 + seed)
    return torch.randn(n, 1, 6, 6, generator=g), torch.randint(0, 4, (n,), generator=g)


def _nets(count: int = 4):
    return [Net(name=f"net{i}", model=_net(i), train=_data(i, 16), test=_data(50 + i, 16),
                hyperparameters={"width": 3, "seed": i % 2, "lr": i // 2}) for i in range(count)]


def test_report_holds_each_nets_gap_and_measures_and_validates(tmp_path):
    nets = _nets()
    report = run_study(nets, tmp_path, settings=SETTINGS, resamples=200)
    validate(report)
    assert [r["name"] for r in report["nets"]] == [n.name for n in nets]
    for net, record in zip(nets, report["nets"]):
        train_acc, _ = accuracy_and_loss(net.model, *net.train)
        test_acc, _ = accuracy_and_loss(net.model, *net.test)
        assert record["error"] is None
        assert record["gap"] == pytest.approx(train_acc - test_acc)
        assert set(record["measures"]) == {m.name for m in MEASURES}
    assert set(report["ranking"]) == {m.name for m in MEASURES}
    markdown = (tmp_path / "study.md").read_text()
    assert all(f"| {n.name} | width=3" in markdown for n in nets)
    assert all(f"| {m.name} |" in markdown for m in MEASURES)
    for file in ("study.json", "measures_vs_gap.png", "tau.png"):
        assert (tmp_path / file).stat().st_size > 0
    assert json.loads((tmp_path / "study.json").read_text()) == report


def test_an_interrupted_study_resumes_with_the_same_report(tmp_path, monkeypatch):
    fresh = run_study(_nets(), tmp_path / "fresh", settings=SETTINGS, resamples=200)

    stages = []

    def stop_after_two(stage, done, total):
        stages.append(stage)
        if stage == "study" and done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_study(_nets(), tmp_path / "resumed", settings=SETTINGS, progress=stop_after_two)
    assert len(list((tmp_path / "resumed" / "nets").glob("*.json"))) == 2
    assert len(set(stages)) > 1  # measure's own stages are reported inside each net

    calls = []
    original = study_measures.net_measures
    monkeypatch.setattr("stabkern.study.run.net_measures", lambda *a, **k: calls.append(1) or original(*a, **k))
    resumed = run_study(_nets(), tmp_path / "resumed", settings=SETTINGS, resamples=200)
    assert len(calls) == 2  # only the two nets the first run did not reach
    assert resumed == fresh


def test_a_changed_net_or_setting_is_measured_again(tmp_path, monkeypatch):
    run_study(_nets(2), tmp_path, settings=SETTINGS, resamples=200)
    calls = []
    original = study_measures.net_measures
    monkeypatch.setattr("stabkern.study.run.net_measures", lambda *a, **k: calls.append(1) or original(*a, **k))
    nets = _nets(2)
    with torch.no_grad():
        nets[0].model[0].weight.add_(0.01)
    run_study(nets, tmp_path, settings=SETTINGS, resamples=200)
    assert len(calls) == 1
    run_study(_nets(2), tmp_path, settings=Settings(samples=12, seed=1, probes=2, trials=2), resamples=200)
    assert len(calls) == 3


def test_a_failing_net_is_reported_and_the_study_goes_on(tmp_path):
    def broken():
        raise RuntimeError("checkpoint unreadable")

    nets = _nets(3) + [Net(name="broken", model=broken, train=_data(9, 16), test=_data(9, 16),
                           hyperparameters={"width": 3, "seed": 0, "lr": 9})]
    report = run_study(nets, tmp_path, settings=SETTINGS, resamples=200)
    validate(report)
    bad = report["nets"][-1]
    assert bad["error"] == "RuntimeError: checkpoint unreadable"
    assert all(r["error"] is None for r in report["nets"][:3])
    assert report["ranking"]["log10_parameters"]["defined_nets"] <= 3
    assert "checkpoint unreadable" in (tmp_path / "study.md").read_text()
    assert not list((tmp_path / "nets").glob("broken*"))  # failures are not cached: a rerun tries again


def test_the_users_model_is_not_changed(tmp_path):
    nets = _nets(1)
    nets[0].model.train()
    before = {k: v.clone() for k, v in nets[0].model.state_dict().items()}
    run_study(nets, None, settings=SETTINGS, resamples=200)
    assert nets[0].model.training
    after = nets[0].model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_bad_input():
    with pytest.raises(ValueError, match="at least one net"):
        run_study([], None)
    with pytest.raises(ValueError, match="unique.*net0"):
        run_study(_nets(1) + _nets(1), None)
    with pytest.raises(TypeError, match="Net records"):
        run_study([{"name": "x"}], None)
