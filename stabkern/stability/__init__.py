"""Noise-stability meters of Arora et al. (ICML 2018) for conv nets: attenuation, cushions, the bound.

- `noise_attenuation(model, data)` -> `AttenuationReport` (the paper's Figure 3, batched; attenuation.py)
- `measure(model, data, labels)` -> `StabilityReport` (every meter and the bounds; measure.py)
- one function per meter (meters.py): `layer_cushion`, `interlayer_cushion`, `activation_contraction`,
  `interlayer_smoothness`, `noise_sensitivity`
- `weight_report(model)` -> `WeightReport`: what the weights alone say, no data (weights.py)
"""

from .measure import measure
from .meters import (activation_contraction, interlayer_cushion, interlayer_smoothness, layer_cushion,
                     noise_sensitivity)
from .attenuation import noise_attenuation
from .report import AttenuationReport, StabilityReport, summarize
from .weights import WeightReport, weight_report

__all__ = ["AttenuationReport", "StabilityReport", "activation_contraction", "interlayer_cushion",
           "interlayer_smoothness", "layer_cushion", "measure", "noise_attenuation", "noise_sensitivity",
           "summarize", "WeightReport", "weight_report"]
