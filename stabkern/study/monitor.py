"""`StabilityMonitor`: noise stability recorded during training, at a bounded share of the training time.

Call `monitor.step(epoch=e)` from any training loop (each epoch, or each N steps). The monitor meters the
model on a fixed probe set (the attenuation of noise from each layer to the output, `noise_attenuation`)
beside the accuracy on the probe set and, when given, on a held-out set, and appends one JSON line per
record to `path`. It records on the first call and then only when the training time since its last record
is at least its own last cost / max_overhead, so the monitor's share of the wall time stays near
`max_overhead` (10% by default) whatever the loop's pace; `step(..., force=True)` records regardless
(e.g. after the last epoch). The model is metered in eval mode and given back in the mode it was in.
TensorBoard scalars are written too when `tensorboard_dir` is given and tensorboard is installed.
"""

from __future__ import annotations

import json
import math
import pathlib
import time

import numpy as np
import torch
from torch import nn

from ..stability.report import json_value
from .measures import accuracy_and_loss


class StabilityMonitor:
    """Records, per call that is due: epoch, step, the attenuation first layer -> output and its median over
    injection layers, probe (and held-out) accuracy, and the monitor's seconds so far.

    model: the net being trained; probe: (x (N, ...), y (N,)) a fixed sample of the training data (64-256
    samples); held_out: optional (x, y); path: a JSON-lines file to append to (None: records kept in
    memory only, `records`); alpha, trials, seed: noise_attenuation's; max_overhead in (0, 1].
    """

    def __init__(self, model: nn.Module, probe: tuple[torch.Tensor, torch.Tensor], *, held_out=None, path=None,
                 alpha: float = 0.1, trials: int = 4, seed: int = 0, max_overhead: float = 0.1,
                 tensorboard_dir=None):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        if not (isinstance(max_overhead, (int, float)) and 0 < max_overhead <= 1):
            raise ValueError(f"max_overhead must be in (0, 1], got {max_overhead!r}")
        if len(probe) != 2 or len(probe[0]) != len(probe[1]) or len(probe[0]) == 0:
            raise ValueError("probe must be (x, y) with the same, non-zero number of samples")
        self.model, self.probe, self.held_out = model, probe, held_out
        self.path = None if path is None else pathlib.Path(path)
        self.alpha, self.trials, self.seed, self.max_overhead = alpha, trials, seed, float(max_overhead)
        self.records: list[dict] = []
        self.monitor_seconds = 0.0
        self._created = time.perf_counter()
        self._last_end: float | None = None
        self._last_cost = 0.0
        self._writer = _tensorboard(tensorboard_dir)

    def due(self) -> bool:
        """True when the training time since the last record pays for another at max_overhead."""
        if self._last_end is None:
            return True
        return time.perf_counter() - self._last_end >= self._last_cost / self.max_overhead

    def step(self, *, epoch: int | float | None = None, step: int | None = None, force: bool = False,
             **extra) -> dict | None:
        """Record now if due (or `force`); returns the record, or None when skipped. `extra` numbers (e.g. the
        loop's own train loss) are written into the record as given."""
        if not (force or self.due()):
            return None
        from .. import noise_attenuation
        from ..compress.data import eval_mode

        start = time.perf_counter()
        with eval_mode(self.model):
            att = noise_attenuation(self.model, self.probe[0], alpha=self.alpha, trials=self.trials, seed=self.seed)
            to_output = np.asarray(att.mean, dtype=np.float64)[:, -1]
            record = {"epoch": epoch, "step": step,
                      "attenuation_first_to_output": float(to_output[0]),
                      "attenuation_median_to_output": float(np.nanmedian(to_output)),
                      "probe_accuracy": accuracy_and_loss(self.model, *self.probe)[0]}
            if self.held_out is not None:
                record["held_out_accuracy"] = accuracy_and_loss(self.model, *self.held_out)[0]
        record.update({k: float(v) for k, v in extra.items()})
        end = time.perf_counter()
        self._last_cost, self._last_end = end - start, end
        self.monitor_seconds += end - start
        record["monitor_seconds"] = self.monitor_seconds
        record["wall_seconds"] = end - self._created
        self.records.append(record)
        if self.path is not None:
            with self.path.open("a") as f:
                f.write(json.dumps(json_value(record)) + "\n")
        if self._writer is not None:
            x = step if step is not None else epoch if epoch is not None else len(self.records)
            for k, v in record.items():
                if k not in ("epoch", "step") and isinstance(v, (int, float)) and v is not None:
                    self._writer.add_scalar(f"stabkern/{k}", v, x)
        return record

    def overhead(self) -> float:
        """The monitor's seconds over the wall seconds since it was made (its share of the run so far)."""
        return self.monitor_seconds / max(time.perf_counter() - self._created, 1e-9)

    def plot(self, path) -> None:
        """Each recorded measure against the epoch (or record number), one panel each, to a PNG at `path`."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        keys = [k for k in ("attenuation_first_to_output", "attenuation_median_to_output", "probe_accuracy",
                            "held_out_accuracy") if any(k in r for r in self.records)]
        fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 2.8), squeeze=False)
        xs = [r["epoch"] if r["epoch"] is not None else i for i, r in enumerate(self.records)]
        for ax, k in zip(axes[0], keys):
            ax.plot(xs, [r.get(k, math.nan) for r in self.records], "o-", ms=3)
            ax.set_title(k, fontsize=8)
            ax.set_xlabel("epoch", fontsize=7)
            ax.tick_params(labelsize=7)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)


def _tensorboard(folder):
    """A SummaryWriter in `folder` when one is asked for and tensorboard is installed, else None."""
    if folder is None:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(folder))
