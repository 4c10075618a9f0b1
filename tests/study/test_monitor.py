"""StabilityMonitor: what a record holds, when it records (its time budget), the model left as it was."""

import json

import numpy as np
import pytest
import torch
from torch import nn

import stabkern
from stabkern.study import monitor as monitor_module
from stabkern.study.monitor import StabilityMonitor


def _model_and_probe():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 6 * 6, 4))
    g = torch.Generator().manual_seed(1)
    return model, (torch.randn(10, 1, 6, 6, generator=g), torch.randint(0, 4, (10,), generator=g))


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_a_record_equals_the_attenuation_and_accuracy_it_names(tmp_path):
    model, probe = _model_and_probe()
    monitor = StabilityMonitor(model, probe, held_out=probe, path=tmp_path / "log.jsonl", trials=2, seed=3)
    record = monitor.step(epoch=0, loss=1.5)
    att = stabkern.noise_attenuation(model.eval(), probe[0], alpha=0.1, trials=2, seed=3)
    to_output = np.asarray(att.mean, dtype=np.float64)[:, -1]
    assert record["attenuation_first_to_output"] == to_output[0]
    assert record["attenuation_median_to_output"] == np.nanmedian(to_output)
    with torch.no_grad():
        accuracy = (model(probe[0]).argmax(1) == probe[1]).float().mean().item()
    assert record["probe_accuracy"] == pytest.approx(accuracy) and record["held_out_accuracy"] == record["probe_accuracy"]
    assert record["loss"] == 1.5 and record["epoch"] == 0
    lines = (tmp_path / "log.jsonl").read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["epoch"] == 0


def test_it_records_only_when_its_cost_fits_the_overhead_budget(monkeypatch):
    model, probe = _model_and_probe()
    clock = FakeClock()
    monkeypatch.setattr(monitor_module.time, "perf_counter", clock)
    monitor = StabilityMonitor(model, probe, trials=2, max_overhead=0.1)
    real_attenuation = stabkern.noise_attenuation

    def costs_two_seconds(*args, **kwargs):
        clock.now += 2.0
        return real_attenuation(*args, **kwargs)

    monkeypatch.setattr(stabkern, "noise_attenuation", costs_two_seconds)
    assert monitor.step(epoch=0) is not None  # the first call always records
    clock.now += 19.0  # 19 s of training: less than 2 s / 0.1
    assert monitor.step(epoch=1) is None
    clock.now += 1.0
    assert monitor.step(epoch=2) is not None
    assert monitor.step(epoch=3) is None
    assert monitor.step(epoch=3, force=True) is not None
    assert len(monitor.records) == 3 and monitor.monitor_seconds == 6.0
    assert monitor.overhead() == pytest.approx(6.0 / clock.now)


def test_the_model_keeps_its_mode_and_weights(tmp_path):
    model, probe = _model_and_probe()
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    monitor = StabilityMonitor(model, probe, trials=2)
    monitor.step(epoch=0)
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    monitor.plot(tmp_path / "m.png")
    assert (tmp_path / "m.png").stat().st_size > 0


def test_bad_arguments():
    model, probe = _model_and_probe()
    with pytest.raises(ValueError, match="max_overhead"):
        StabilityMonitor(model, probe, max_overhead=0)
    with pytest.raises(ValueError, match="probe"):
        StabilityMonitor(model, (probe[0], probe[1][:3]))
    with pytest.raises(TypeError, match="nn.Module"):
        StabilityMonitor(lambda x: x, probe)
