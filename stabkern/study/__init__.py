"""Does a measure rank nets by their generalization gap? Studies over many nets, and a training monitor.

- `ranking`: kendall_tau, tau_interval (BCa bootstrap over nets), granulated_tau (Jiang et al.'s, per
  hyperparameter axis, Student-t over groups)
- `measures`: one net's gap and every stabkern measure reduced to one number (MEASURES)
- `run`: run_study over `Net` records, cached per net and resumable; `write`: study.json / .md / figures
- `monitor`: StabilityMonitor, attenuation and accuracy during training within an overhead budget
- `demo`: the embedded digits grid (`stabkern study --demo`)
Definitions and the manifest format: docs/study.md.
"""

from .monitor import StabilityMonitor
from .ranking import Interval, drop_undefined, granulated_tau, kendall_tau, tau_interval
from .run import Net, Settings, run_study

__all__ = ["Interval", "Net", "Settings", "StabilityMonitor", "drop_undefined", "granulated_tau", "kendall_tau",
           "run_study", "tau_interval"]
