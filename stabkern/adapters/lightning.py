"""`StabilityCallback`: a StabilityMonitor stepped by a Lightning Trainer at the end of each training epoch.

    from stabkern.adapters.lightning import StabilityCallback
    trainer = lightning.Trainer(callbacks=[StabilityCallback(probe=(x, y), held_out=(xt, yt), path="s.jsonl")])

The monitor is made on the first epoch's end, on the LightningModule the trainer trains, and records by its
own overhead budget (max_overhead, 10% by default); the last epoch is always recorded. A subclass of
Lightning's Callback when `lightning` (or `pytorch_lightning`) imports; without either it is a plain class
with the same hooks, so stabkern never requires Lightning.
"""

from __future__ import annotations

from ..study.monitor import StabilityMonitor


def _callback_base():
    for module in ("lightning.pytorch", "pytorch_lightning"):
        try:
            return __import__(module, fromlist=["Callback"]).Callback
        except ImportError:
            continue
    return object


class StabilityCallback(_callback_base()):
    """probe, held_out and every keyword: StabilityMonitor's (the model is the trainer's module)."""

    def __init__(self, probe, **monitor_kwargs):
        super().__init__()
        self.probe, self.monitor_kwargs = probe, monitor_kwargs
        self.monitor: StabilityMonitor | None = None

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self.monitor is None:
            self.monitor = StabilityMonitor(pl_module, self.probe, **self.monitor_kwargs)
        epoch = trainer.current_epoch + 1
        last = trainer.max_epochs is not None and epoch >= trainer.max_epochs
        self.monitor.step(epoch=epoch, step=trainer.global_step, force=last)
