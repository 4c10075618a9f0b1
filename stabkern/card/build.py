"""Computing a stability card: the weights alone, the meters, choose_k, the per-layer compressibility and
accuracy vs k.

What it is: `build_card` runs, in timed stages reported through `stabkern.progress`, the weights-only
section (stability/weights.py; all there is without data), `stabkern.measure`
(attenuation, cushions, contraction, the capacity terms), `choose_k`, one `compress_model` per layer
(the measured output error beside the cushions' prediction) and, with labels, the accuracy of the model
compressed at a ladder of k. It returns a `Card` whose `doc` is the JSON of format stabkern-card-v1
(docs/card.md). What it is not: the writer (render.py) or the figures (figures.py).
"""

from __future__ import annotations

import contextlib
import copy
import math
import platform
import time
import warnings
from dataclasses import dataclass, field

import torch
from torch import nn

from ..progress import Progress, silent, steps
from ..schemas import SCHEMA_VERSION, tagged
from ..stability.report import json_value
from . import cost
from .sweep import accuracy, fast_path_ok, sweep

FORMAT = "stabkern-card-v1"
# k / cap per layer for the accuracy-vs-k curve; it stops at the dense size (f = 1): k = 2 cap stores twice the
# weights and showed nothing, while its sweep step was the card's slowest (issue 17)
FRACTIONS = (0.05, 0.1, 0.2, 0.5, 1.0)
PROBE_FRACTION = 0.5  # k / cap measured for a layer that choose_k keeps dense


def check_fractions(fractions) -> tuple:
    """The accuracy-vs-k fractions k / cap as a tuple of floats, each in (0, 1], increasing, no repeats;
    () skips the sweep. ValueError / TypeError naming `fractions` otherwise."""
    from .._checks import check_float

    if isinstance(fractions, (str, bytes)) or not hasattr(fractions, "__iter__"):
        raise TypeError(f"fractions must be a sequence of numbers in (0, 1], got {fractions!r}")
    values = tuple(check_float("fractions", f, 0.0, 1.0, low_open=True) for f in fractions)
    if any(b <= a for a, b in zip(values, values[1:])):
        raise ValueError(f"fractions must be increasing with no repeats, got {list(values)}")
    return values


@dataclass
class Card:
    """A computed card: `doc` (the JSON dict), and the report objects the figures are drawn from."""

    doc: dict
    report: object  # StabilityReport
    notes: list = field(default_factory=list)


@contextlib.contextmanager
def recorded_warnings(caught: list):
    """Append the warnings of a block to `caught` (warnings.WarningMessage), DeprecationWarnings left out
    (torch internals' notices to developers, not the user's)."""
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        yield
    caught.extend(w for w in got if not issubclass(w.category, DeprecationWarning))


def summarize_warnings(caught) -> list:
    """One line per kind of warning: a kind is one warn() call site (file and line), so a warning repeated
    per layer or per stage (k >= n, a skipped BatchNorm) is one line with its count, and two different
    warnings of the same category stay two lines."""
    groups: dict = {}
    for w in caught:
        groups.setdefault((w.category.__name__, w.filename, w.lineno), []).append(str(w.message))
    return [f"{category}: {messages[0]}" if len(messages) == 1 else
            f"{category} x{len(messages)}: {messages[0]}" if len(set(messages)) == 1 else
            f"{category} x{len(messages)}, e.g.: {messages[0]}"
            for (category, _, _), messages in groups.items()]


@contextlib.contextmanager
def summarized_warnings(notes: list):
    """Collect the warnings of a block; append one line per kind (summarize_warnings) to `notes`."""
    caught: list = []
    with recorded_warnings(caught):
        yield
    notes.extend(summarize_warnings(caught))


def card_notes(caught, extra) -> list:
    """The card's notes: the summarized warnings, then each of `extra` (a report's own notes) that is not
    already one of the warnings' messages, each once: a warning the meters both warn and note appears once."""
    notes = summarize_warnings(caught)
    seen = {str(w.message) for w in caught}
    for note in extra:
        if note not in seen and note not in notes:
            seen.add(note)
            notes.append(note)
    return notes


def merge_reports(reports):
    """One CompressionReport from per-layer reports of the same seed and mode."""
    from ..compress import CompressionReport

    first = reports[0]
    merged = CompressionReport(seed=first.seed, mode=first.mode, backend=first.backend, eps=first.eps,
                               folded=list(first.folded))
    compressed = set()
    for r in reports:
        merged.layers.extend(r.layers)
        compressed.update(layer.name for layer in r.layers)
    merged.skipped = [s for s in first.skipped if s["name"] not in compressed]
    return merged


def compress_layer_by_layer(model: nn.Module, ks: dict, *, mode: str, seed: int, data=None, eps=None,
                            backend: str = "auto", batch_size: int = 256, progress: Progress = silent):
    """compress_model one layer at a time (one progress step per layer): (compressed copy, report).

    Equals `compress_model(model, ks, mode=mode, seed=seed, data=data, eps=eps)`: layer i keeps
    stream i whichever layers are compressed with it, and each output error is measured on the
    layer's own dense input, so compressing the layers separately gives the same modules and rows.
    """
    from ..compress import compress_model

    result = copy.deepcopy(model)
    reports = []
    for name in steps(progress, "compress", [n for n, k in ks.items() if k is not None]):
        one, report = compress_model(model, {name: ks[name]}, mode=mode, seed=seed, layers=[name], data=data,
                                     eps=eps, backend=backend, batch_size=batch_size)
        result.set_submodule(name, one.get_submodule(name))
        reports.append(report)
    if not reports:
        _, report = compress_model(model, {}, mode=mode, seed=seed, layers=[], backend=backend)
        return result, report
    return result, merge_reports(reports)


def output_count(model: nn.Module, x: torch.Tensor) -> int:
    """Outputs per sample of the model (its logits, bound.logits_of): the class count whose inverse is chance."""
    from ..compress.data import eval_mode
    from ..stability.bound import logits_of

    with eval_mode(model), torch.no_grad():
        return int(logits_of(model(x[:1].to(next(model.parameters()).device))).flatten(1).shape[1])


def _sketched_point(model, x, y, f, caps, *, mode, seed, backend, batch_size) -> dict:
    """One point of the accuracy-vs-k curve by compress_model: every layer at k = max(1, round(f cap))."""
    from ..compress import compress_model

    ks = {name: max(1, round(f * cap)) for name, cap in caps.items()}
    # f = 1 (k = m) is sketched too: the point where Algorithm 1 stops saving space
    small, rep = compress_model(model, ks, mode=mode, seed=seed, backend=backend, allow_no_compression=True)
    t = rep.totals()
    return {"fraction": f, "k": ks, "stored": t["stored"], "ratio": t["ratio"],
            "rel_fro_error": json_value({r.name: r.rel_fro_error for r in rep.layers}),
            "accuracy": accuracy(small, x, y, batch_size)}


def build_card(model: nn.Module, x: torch.Tensor | None, y: torch.Tensor | None = None, *, title: str = "model",
               model_name: str | None = None, data_name: str = "data", seed: int = 0, eps: float = 0.5,
               mode: str = "filter", alpha: float = 0.1, trials: int = 8, probes: int = 8, margin_quantile: float = 0.1,
               fractions=FRACTIONS, batch_size: int = 256, backend: str = "auto", layers=None,
               progress: Progress = silent, on_estimate=None) -> Card:
    """The stability card of `model` on inputs x (N, C, H, W) float, labels y (N,) int64 or None.

    x None: the data-free card, what the weights alone say (stability/weights.py; measure, choose_k,
    compressibility and accuracy_vs_k null). With data the same weights section sits beside the meters.

    The model is read, never changed (measure and compress_model restore or copy it); it runs where
    its parameters are. seed: the noise seed of the meters and the sign seed of the compressions;
    eps: choose_k's relative output error; mode: "filter" or "tensor" (Algorithm 1's two forms);
    fractions: k / cap per layer of the accuracy-vs-k curve (only with labels); probes: measure's Hutchinson
    probes per sample (8, not measure's 4: at 4 the Student-t quantile 3.18 puts some sample's lower end of
    mu_(i,j) at 0 on a few hundred digits, an infinite bound; at 8 it is 2.36 and the standard error ~1/sqrt 2).
    on_estimate: None or a callable given {stage: estimated seconds} (cost.py) before the work starts; the
    estimate is in provenance["estimated_time_s"] beside the measured wall_time_s.
    layers: names of the Conv2d / Linear layers to meter and compress (default all of them).
    """
    from .. import __version__, measure
    from ..compress import k_from_cushions, layer_cushions
    from ..spec import SPEC
    from ..stability.weights import weight_report

    if x is None and y is not None:
        raise ValueError("labels y were given without inputs x: pass x (N, C, H, W) with them, or neither for the "
                         "data-free card")
    param = next(model.parameters())
    times: dict = {}
    caught: list = []  # every stage's warnings, summarized once at the end (card_notes)

    def provenance(data_size: int) -> dict:
        return {"stabkern_version": __version__, "specs": {"sign": SPEC, "noise": "stabkern-noise-v1"},
                "seed": seed, "device": str(param.device), "dtype": str(param.dtype).replace("torch.", ""),
                "torch": torch.__version__, "python": platform.python_version(), "data_size": data_size,
                "wall_time_s": times}

    if x is not None:  # the estimate comes before any work (the weights' spectra included)
        fractions = check_fractions(fractions)
        calibration = cost.calibrate(model, x, batch_size, backend)
        estimated = cost.estimate(model, calibration, mode=mode, trials=trials, probes=probes, fractions=fractions,
                                  labels=y is not None, probe_fraction=PROBE_FRACTION)
        if on_estimate is not None:
            on_estimate(estimated)
    start = time.perf_counter()
    progress("weights", 0, 1)
    weights = weight_report(model).to_dict()
    progress("weights", 1, 1)
    times["weights"] = time.perf_counter() - start
    if x is None:  # no data: what the weights alone say (stability/weights.py), and what needs data
        doc = {
            "format": FORMAT, "schema_version": SCHEMA_VERSION, "title": title,
            "model": {"name": model_name or type(model).__name__, "class": type(model).__name__,
                      "parameters": weights["parameters"], "layers": len(weights["layers"])},
            "data": None, "weights": weights, "measure": None, "choose_k": None, "compressibility": None,
            "accuracy_vs_k": None, "figures": {}, "notes": [], "provenance": provenance(0),
        }
        return Card(doc=doc, report=None, notes=[])


    @contextlib.contextmanager
    def stage(name, units=True):
        start = time.perf_counter()
        if units:
            progress(name, 0, 1)
        with recorded_warnings(caught):
            yield
        times[name] = time.perf_counter() - start
        if units:
            progress(name, 1, 1)

    with stage("measure", units=False):  # measure reports its own units: one per chunk and layer of each meter
        report = measure(model, x, y, alpha=alpha, trials=trials, probes=probes, seed=seed,
                         margin_quantile=margin_quantile, layers=layers, backend=backend, progress=progress)
    with stage("choose_k"):
        cushions = layer_cushions(model, x, mode=mode, layers=layers, batch_size=batch_size)  # one pass for both
        kc = k_from_cushions(cushions, eps, mode=mode, seed=seed)
    probe = {r.name: r.k if r.k is not None else max(1, round(PROBE_FRACTION * r.cap)) for r in kc.layers}
    start = time.perf_counter()
    with recorded_warnings(caught):
        _, probe_report = compress_layer_by_layer(model, probe, mode=mode, seed=seed, data=x, eps=eps,
                                                  backend=backend, batch_size=batch_size, progress=progress)
    times["compress"] = time.perf_counter() - start
    measured = {r.name: r for r in probe_report.layers}
    rows = []
    for r in kc.layers:
        nu = cushions[r.name]["nu"].double()
        k = probe[r.name]
        err = measured[r.name].output_error
        rows.append({"name": r.name, "type": r.type, "n": r.n, "cap": r.cap,
                     "mu_min": None if r.mu is None else r.mu["min"], "nu_min": r.nu_min,
                     "k_rule": r.k_needed, "k_chosen": r.k, "k": k,
                     "predicted_rms_error": math.sqrt(float((1 + nu.pow(-2)).mean()) / k),
                     "measured_mean_error": err.mean, "measured_q90_error": err.q90})

    curve = None
    dense_accuracy = None
    if y is not None:
        start = time.perf_counter()
        dense_accuracy = accuracy(model, x, y, batch_size)
        caps = {r.name: r.cap for r in kc.layers}
        with recorded_warnings(caught):
            if fractions and fast_path_ok(model, caps):  # one projection per layer for every k (sweep.py)
                curve = sweep(model, x, y, caps, fractions, mode=mode, seed=seed, backend=backend,
                              batch_size=batch_size, progress=progress)
            elif fractions:  # layers sweep.py cannot mirror: compress_model per fraction
                curve = [_sketched_point(model, x, y, f, caps, mode=mode, seed=seed, backend=backend,
                                         batch_size=batch_size) for f in steps(progress, "accuracy vs k", fractions)]
        if fractions:  # else (fractions ()): no curve, null in the card
            times["accuracy vs k"] = time.perf_counter() - start

    doc = {
        "format": FORMAT, "schema_version": SCHEMA_VERSION, "title": title,
        "model": {"name": model_name or type(model).__name__, "class": type(model).__name__,
                  "parameters": sum(p.numel() for p in model.parameters()), "layers": len(report.layers),
                  "outputs": output_count(model, x)},
        "data": {"name": data_name, "n_samples": int(x.shape[0]), "shape": list(x.shape[1:]),
                 "labels": y is not None, "accuracy": dense_accuracy},
        "weights": weights,
        "measure": report.to_dict(),
        "choose_k": tagged(kc.to_dict(), "stabkern-choose-k-v1"),
        "compressibility": {"mode": mode, "eps": eps, "fraction": PROBE_FRACTION, "layers": rows,
                            "report": probe_report.to_dict()},
        "accuracy_vs_k": curve,
        "figures": {},
        "notes": card_notes(caught, report.settings.get("notes", [])),
        "provenance": {**provenance(int(x.shape[0])), "estimated_time_s": estimated,
                       "calibration": {"pass_s": calibration["pass_s"],
                                       "sign_mac_per_s": calibration["sign_mac_per_s"],
                                       "float64_flop_per_s": calibration["float64_flop_per_s"]}},
    }
    return Card(doc=doc, report=report, notes=list(doc["notes"]))
