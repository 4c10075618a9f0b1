"""Noise-stability meters of Arora et al. (ICML 2018) for conv nets.

`noise_attenuation(model, data)` -> `AttenuationReport` (the paper's Figure 3, batched; noise.py).
"""

from .noise import noise_attenuation
from .report import AttenuationReport, summarize

__all__ = ["AttenuationReport", "noise_attenuation", "summarize"]
