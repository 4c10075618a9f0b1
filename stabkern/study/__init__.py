"""Does a measure rank nets by their generalization gap: Kendall's τ and Jiang et al.'s granulated τ.

- `ranking`: kendall_tau, tau_interval (BCa bootstrap over nets), granulated_tau (per hyperparameter
  axis, Student-t over groups), drop_undefined
"""

from .ranking import Interval, drop_undefined, granulated_tau, kendall_tau, tau_interval

__all__ = ["Interval", "drop_undefined", "granulated_tau", "kendall_tau", "tau_interval"]
