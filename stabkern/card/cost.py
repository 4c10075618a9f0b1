"""The card's cost per stage, estimated before it starts from a cheap calibration.

What it is: `calibrate` times one forward pass of the data (batches of batch_size, no grad), noting with
forward hooks how far into the pass each Conv2d / Linear layer starts and ends, and one sign projection
(this machine's sign-MAC rate); `estimate` counts the work each stage of `build_card` does in those units
and returns seconds per stage. A few seconds for the calibration against minutes for the card.

The counts (each a forward pass of the data, or the part of one from or up to a layer):
- measure: the clean pass; per noise trial, the suffix from each layer (attenuation); per Hutchinson probe a
  forward and a backward up to each layer (the reverse sweeps, ~3 passes of that prefix); one forward-mode
  suffix per layer and draw (~3 passes); and the propagator's check, one suffix per layer.
- choose_k: one pass with per-layer statistics in float64 (the cushions, which give both choose_k's k and the
  card's predicted errors), whose cost grows with the weights (each batch converts every weight to float64).
- compress: per layer, a copy of the model, a pass of the data and three sign products of n x k
  (projection, the report's reconstruction, the output check's reconstruction).
- accuracy vs k: one projection and one reconstruction at the largest k per layer (sweep.py), and a pass
  of the data per fraction.
What it is not: a promise. Load from other processes, memory bandwidth and the kernels' shapes move the
actual times; the card records both (provenance: estimated_time_s beside wall_time_s).
"""

from __future__ import annotations

import time

import torch
from torch import nn

# Ratios of a stage's cost to its count of passes: forward-mode (jvp) and forward + backward passes cost
# about 3 forward passes each. The vgg11_bn card of benchmarks/bench_card.py (2-core EPYC at load 9-17) read
# measure 1125 s estimated / 1582 s actual, choose_k 22 / 109, compress 1747 / 526 and accuracy vs k 2272 / 324
# with a 64 x 4608 x 512 calibration projection and no weight term for choose_k, both since changed.
AUTODIFF_PASSES = 3.0
STATS_PASSES = 2.0  # a pass with choose_k's float64 per-layer statistics, in plain passes
COPY_BYTES_PER_S = 2e9  # copy.deepcopy of a model's parameters


def calibrate(model: nn.Module, x: torch.Tensor, batch_size: int = 256, backend: str = "auto") -> dict:
    """{"pass_s": seconds of one forward pass of x, "starts"/"ends": name -> fraction of the pass done when the
    layer starts / ends, "sign_mac_per_s": this machine's sign-MAC rate (GEMM form, 64 rows x 4608 x 512)}.
    The model is read in eval mode under no grad; its hooks and training flag are restored."""
    from ..compress import sketchable_layers
    from ..compress.data import eval_mode, iter_batches, model_device
    from ..ops import sign_project

    layers = [(name, m) for _, name, m in sketchable_layers(model)]
    marks: dict = {}
    handles = []

    def mark(key):  # a hook that notes the first time it runs (and returns None: the inputs stay as they are)
        def hook(*_):
            marks.setdefault(key, time.perf_counter())
        return hook

    for name, m in layers:
        handles.append(m.register_forward_pre_hook(mark(("start", name))))
        handles.append(m.register_forward_hook(mark(("end", name))))
    try:
        with eval_mode(model), torch.no_grad():
            batches = list(iter_batches(x, batch_size, model_device(model)))
            model(batches[0][:1])  # warm-up: first-call setup
            marks.clear()
            start = time.perf_counter()
            for b in batches:
                model(b)
            pass_s = max(time.perf_counter() - start, 1e-6)
    finally:
        for h in handles:
            h.remove()
    first = len(batches[0]) / len(x)  # the marks are the first batch's: fractions of its share of the pass
    fraction = {key: min(1.0, (t - start) / (pass_s * first)) for key, t in marks.items()}
    # A GEMM-form projection large enough that its fixed costs do not count (a 64 x 4608 x 512 one read 8x
    # slower than the card's sketches ran): 1.2e9 sign-MACs, ~11 ms at the ~110 G/s of 2 Zen 3 cores.
    rows = torch.randn(256, 4608, generator=torch.Generator().manual_seed(0))
    sign_project(rows[:8], 128, seed=0, backend=backend)  # warm-up
    times = []
    for _ in range(2):
        t0 = time.perf_counter()
        sign_project(rows, 1024, seed=0, backend=backend)
        times.append(time.perf_counter() - t0)
    # float64 matrix products, the weights section's unit (the spectra: stability/weights.py)
    a = torch.randn(512, 512, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    a @ a  # warm-up
    t0 = time.perf_counter()
    a @ a
    flop_s = 2 * 512**3 / max(time.perf_counter() - t0, 1e-9)
    return {"pass_s": pass_s, "float64_flop_per_s": flop_s,
            "starts": {n: fraction.get(("start", n), 0.0) for n, _ in layers},
            "ends": {n: fraction.get(("end", n), 1.0) for n, _ in layers},
            "sign_mac_per_s": 256 * 4608 * 1024 / max(min(times), 1e-9)}


def estimate(model: nn.Module, calibration: dict, *, mode: str, trials: int, probes: int, fractions,
             labels: bool, probe_fraction: float, draws: int = 1) -> dict:
    """Seconds per stage of build_card: {"weights", "measure", "choose_k", "compress", "accuracy vs k" (with labels and
    fractions)}; `calibration` from `calibrate`. The compress stage is counted at k = probe_fraction cap for
    every layer (choose_k's k are not known yet: they are at most that, or the layer stays dense)."""
    from ..compress import sketchable_layers
    from ..sketched import row_length

    pass_s, rate = calibration["pass_s"], calibration["sign_mac_per_s"]
    suffix = sum(1.0 - s for s in calibration["starts"].values())
    prefix = sum(calibration["ends"].values())
    num = len(calibration["starts"])
    measure_passes = 1 + (trials + 1) * suffix + AUTODIFF_PASSES * (probes * prefix + draws * suffix)
    copy_s = sum(p.numel() * p.element_size() for p in model.parameters()) / COPY_BYTES_PER_S
    weights = [m.weight for _, _, m in sketchable_layers(model)]

    def macs(shape, f):  # sign-MACs of one projection (or reconstruction) of the weight at k = f cap
        cap = row_length(shape, mode)
        rows = 1 if mode == "tensor" else shape[0]
        return rows * cap * max(1, round(f * cap))

    weight_bytes = sum(8 * w.numel() for w in weights)  # float64 copies
    result = {"weights": sum(_spectrum_flops(w.shape) for w in weights) / calibration["float64_flop_per_s"],
              "measure": measure_passes * pass_s,
              # one pass with the layers' statistics: float64 weights, squared, summed (~4 sweeps of them)
              "choose_k": STATS_PASSES * pass_s + 4 * weight_bytes / COPY_BYTES_PER_S,
              "compress": num * (copy_s + pass_s) + 3 * sum(macs(w.shape, probe_fraction) for w in weights) / rate}
    if labels and fractions:
        result["accuracy vs k"] = (copy_s + len(fractions) * pass_s
                                   + 2 * sum(macs(w.shape, max(fractions)) for w in weights) / rate)
    return result


def _spectrum_flops(shape) -> float:
    """float64 flops of one layer's singular values (stability/weights.py): the Gram matrix of the smaller side
    and its eigenvalues above SVD_LIMIT entries, an SVD below (LAPACK's ~ 4 rows cols small + 8 small^3 flops;
    eigvalsh ~ 4/3 small^3 to tridiagonal form)."""
    from ..stability.weights import SVD_LIMIT

    rows = shape[0]
    cols = 1
    for d in shape[1:]:
        cols *= d
    small, large = min(rows, cols), max(rows, cols)
    if rows * cols > SVD_LIMIT:
        return 2.0 * small * small * large + 1.5 * small**3
    return 4.0 * small * small * large + 8.0 * small**3
