"""StabilityCallback: the trainer's epoch ends step the monitor, the last epoch always recorded.

The trainer here is a stand-in with the attributes Lightning's Trainer gives a callback (current_epoch,
max_epochs, global_step): the callback's logic is tested on every machine, Lightning installed or not."""

import sys
from types import SimpleNamespace

import torch
from torch import nn

from stabkern.adapters.lightning import StabilityCallback


def test_epoch_ends_step_the_monitor_and_the_last_is_recorded():
    torch.manual_seed(0)
    module = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 6 * 6, 3))
    probe = (torch.randn(6, 1, 6, 6), torch.randint(0, 3, (6,)))
    callback = StabilityCallback(probe, trials=2, max_overhead=1e-9)  # a tiny budget: only forced records
    for epoch in range(4):
        trainer = SimpleNamespace(current_epoch=epoch, max_epochs=4, global_step=10 * (epoch + 1))
        callback.on_train_epoch_end(trainer, module)
    records = callback.monitor.records
    assert [r["epoch"] for r in records] == [1, 4]  # the first call, then the forced last epoch
    assert records[-1]["step"] == 40 and callback.monitor.model is module


def test_base_class_is_lightnings_callback_when_it_imports_else_object(monkeypatch):
    from stabkern.adapters import lightning as adapter

    for name in ("lightning", "lightning.pytorch", "pytorch_lightning"):
        monkeypatch.setitem(sys.modules, name, None)  # None in sys.modules: the import raises ImportError
    assert adapter._callback_base() is object
    fake = SimpleNamespace(Callback=type("Callback", (), {}))
    monkeypatch.setitem(sys.modules, "pytorch_lightning", fake)
    assert adapter._callback_base() is fake.Callback
