"""Compression by random sign projection (Arora et al., 2018, Algorithm 1) for whole models.

- `compress_model(model, k, mode=..., seed=...)` -> (compressed copy, CompressionReport)
- `choose_k(model, data, eps, ...)` -> KChoice: per-layer k from the measured layer cushions
- `layer_cushions`: the measurements choose_k is built on; `k_from_cushions`: choose_k's rule on them
- `sketchable_layers(model)`: (stream, name, module) of the layers, stream = index
- `save_compressed(model, path)` / `load_compressed(path, model=None)`: the compressed model as one
  self-describing file (every sketch's seed, stream, k and mode; the architecture when it has a name)
- `measure_output_errors`, `linear_part`: a layer's relative output error on data, A z from A z + b
"""

from .choose_k import C_BERNSTEIN, KChoice, LayerChoice, choose_k, k_from_cushions, layer_cushions
from .data import linear_part, measure_output_errors
from .model import compress_model, fold_batchnorm, sketchable_layers
from .report import CompressionReport, LayerReport, OutputError
from .saved import load_compressed, save_compressed

__all__ = ["C_BERNSTEIN", "CompressionReport", "KChoice", "LayerChoice", "LayerReport", "OutputError", "choose_k",
           "compress_model", "fold_batchnorm", "k_from_cushions", "layer_cushions", "linear_part", "load_compressed",
           "measure_output_errors", "save_compressed", "sketchable_layers"]
