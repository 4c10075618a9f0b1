"""`run_study`: every measure on every net of a study, the gaps, and how well each measure ranks them.

A study is a list of `Net`s (a model, its training and held-out data, the hyperparameters it was trained
with). Each finished net's numbers are written to `OUT/nets/NAME.json` as soon as they exist, keyed by
what produced them (the settings and a digest of the weights and data), so an interrupted study rerun
into the same folder goes on where it stopped and gives the same results; a net that raises is recorded
with its error and the study goes on. Nets are shared over the ranks of `group` (each rank measures its
share, rank 0 writes the report).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import pathlib
import traceback
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..progress import Progress, silent
from ..stability.report import json_value
from .measures import MEASURES, net_measures
from .ranking import granulated_tau, tau_interval
from .write import write_study, write_text

FORMAT = "stabkern-study-report-v1"


@dataclasses.dataclass
class Net:
    """One trained net of a study. model: the module, or a callable returning it (loaded when its turn
    comes, so a study of 50 checkpoints does not hold 50 models); train, test: (x (N, ...), y (N,) int64);
    hyperparameters: axis name -> value (numbers or strings), the axes of the granulated τ."""

    name: str
    model: nn.Module | Callable[[], nn.Module]
    train: tuple[torch.Tensor, torch.Tensor]
    test: tuple[torch.Tensor, torch.Tensor]
    hyperparameters: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Settings:
    """What every net is measured with: `samples` training samples for the meters, and measure's seed,
    probes and trials."""

    samples: int = 256
    seed: int = 0
    probes: int = 4
    trials: int = 8


def _digest(model: nn.Module, net: Net, settings: Settings) -> str:
    """sha256 of the settings, the hyperparameters, the weights and the data: a cached result is reused
    only when all of them are unchanged."""
    h = hashlib.sha256(json.dumps([dataclasses.asdict(settings), dict(net.hyperparameters)], sort_keys=True,
                                  default=str).encode())
    tensors = [t for _, t in sorted(model.state_dict().items())] + [*net.train, *net.test]
    for t in tensors:
        h.update(str((t.dtype, tuple(t.shape))).encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _safe_name(name: str) -> str:
    keep = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return f"{keep[:80]}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def _check_nets(nets: Sequence[Net]) -> list[Net]:
    nets = list(nets)
    if not nets:
        raise ValueError("a study needs at least one net")
    for net in nets:
        if not isinstance(net, Net):
            raise TypeError(f"nets must be stabkern.study.Net records, got {type(net).__name__}")
    names = [n.name for n in nets]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"net names must be unique; repeated: {', '.join(repeated)}")
    return nets


def measure_net(net: Net, settings: Settings, cache: pathlib.Path | None, progress: Progress = silent) -> dict:
    """The result of one net: {"name", "hyperparameters", "digest", "error"} and, when it did not raise,
    net_measures' fields. Read from `cache` when a result with the same digest is there. `progress` sees
    measure's stages of this net (per layer and chunk)."""
    record = {"name": net.name, "hyperparameters": dict(net.hyperparameters)}
    try:
        model = net.model() if callable(net.model) and not isinstance(net.model, nn.Module) else net.model
        digest = _digest(model, net, settings)
        path = cache / f"{_safe_name(net.name)}.json" if cache is not None else None
        if path is not None and path.exists():
            cached = json.loads(path.read_text())
            if cached.get("digest") == digest:
                return cached
        result = net_measures(model, net.train, net.test, samples=settings.samples, seed=settings.seed,
                              probes=settings.probes, trials=settings.trials, progress=progress)
        record.update(digest=digest, error=None, **result)
    except Exception as err:  # noqa: BLE001 - one net's failure is reported, the study goes on
        record.update(digest=None, error=f"{type(err).__name__}: {err}",
                      traceback=traceback.format_exc(limit=4))
        return record  # failures are not cached: a rerun tries again
    if path is not None:
        write_text(path, json.dumps(record, indent=1))
    return record


def rank_measures(results: Sequence[dict], *, resamples: int = 2000, seed: int = 0) -> dict:
    """Per measure: τ with the gap over all measured nets with its interval, and the granulated τ per
    hyperparameter axis and their mean Ψ. results: measure_net's records (failed ones are skipped)."""
    done = [r for r in results if r.get("error") is None]
    gap = [r["gap"] for r in done]
    axes = sorted({k for r in done for k in r["hyperparameters"]})
    ranking = {}
    for m in MEASURES:
        values = [r["measures"][m.name] for r in done]
        values = [math.nan if v is None else v for v in values]
        overall = tau_interval(values, gap, resamples=resamples, seed=seed)
        per_axis = {}
        for axis in axes:
            if all(axis in r["hyperparameters"] for r in done):
                per_axis[axis] = granulated_tau(values, gap, [r["hyperparameters"] for r in done], axis).to_dict()
        psis = [a["value"] for a in per_axis.values() if math.isfinite(a["value"])]
        ranking[m.name] = {"expected_sign": m.sign, "text": m.text, "tau": overall.to_dict(),
                           "granulated": per_axis, "psi": sum(psis) / len(psis) if psis else math.nan,
                           "defined_nets": overall.units}
    return ranking


def run_study(nets: Sequence[Net], out=None, *, settings: Settings = Settings(), resamples: int = 2000,
              group=None, progress: Progress = silent) -> dict:
    """Measure every net (cached under `out`/nets when `out` is given) and rank the measures.

    progress: stage "study" counts nets; measure's own stages show each net's progress.
    Returns the study report (format stabkern-study-report-v1; NaN written as null): "settings", "nets"
    (one record per net, failures with their "error"), "ranking" (rank_measures). With `out`, also
    writes study.json, study.md and the figures there (rank 0 of `group` only).
    """
    from .. import distributed

    nets = _check_nets(nets)
    cache = None
    if out is not None:
        cache = pathlib.Path(out) / "nets"
        cache.mkdir(parents=True, exist_ok=True)
    rank, size = distributed.group_rank_size(group)
    results: list[dict | None] = [None] * len(nets)
    for i, net in enumerate(nets):
        if distributed.owner(i, size) == rank:
            results[i] = measure_net(net, settings, cache, progress)  # never raises: a failure is in the record
        progress("study", i + 1, len(nets))
    if size > 1:
        import torch.distributed as dist

        shares = [None] * size
        dist.all_gather_object(shares, results, group=distributed.resolve_group(group))
        results = [shares[distributed.owner(i, size)][i] for i in range(len(nets))]
    report = json_value({"format": FORMAT, "schema_version": 1, "settings": dataclasses.asdict(settings),
                           "nets": results, "ranking": rank_measures(results, resamples=resamples,
                                                                     seed=settings.seed)})
    if out is not None and distributed.is_main_process(group):
        write_study(report, pathlib.Path(out))
    return report
