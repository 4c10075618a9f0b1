"""stabkern: seeded random-sign sketches and noise-stability meters for conv nets.

Ops (spec stabkern-sign-v1, see `stabkern.spec`): `sign_project`, `sign_reconstruct`,
`sign_compress`, `sign_matrix`. Compressors: `compress_model`, `choose_k`, `SketchedLinear`,
`SketchedConv2d`; `save_compressed` / `load_compressed` write and reload a compressed model.
Meters: `noise_attenuation`, `measure` and one function per meter.
`python -m stabkern.info` says which backends are usable here.
"""

from .compress import choose_k, compress_model, load_compressed, save_compressed
from .sketched import SketchedConv2d, SketchedLinear
from .ops import BackendUnavailableError, sign_compress, sign_matrix, sign_project, sign_reconstruct
from .spec import SPEC
from .stability import (AttenuationReport, StabilityReport, activation_contraction, interlayer_cushion,
                        interlayer_smoothness, layer_cushion, measure, noise_attenuation, noise_sensitivity)

__version__ = "0.1.0"

__all__ = [
    "SPEC", "BackendUnavailableError", "sign_compress", "sign_matrix", "sign_project", "sign_reconstruct",
    "compress_model", "choose_k", "save_compressed", "load_compressed", "SketchedLinear", "SketchedConv2d",
    "noise_attenuation", "measure", "layer_cushion", "interlayer_cushion", "activation_contraction",
    "interlayer_smoothness", "noise_sensitivity", "AttenuationReport", "StabilityReport", "__version__",
]
