"""What a meter injects into and observes: the metered layers, in the order the forward calls them.

`resolve_layers` turns the user's `layers=` into (name, module) pairs (every Conv2d and Linear by
default); `match_layers` picks layer names by glob pattern (the command line's --layers); `trace_layers`
runs the model once on a sample to order them and record per-sample shapes.
It is not the propagation of noise (that is `propagate.py`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .._checks import check_names

INJECTABLE = (nn.Conv2d, nn.Linear)


@dataclass
class Layer:
    """One layer a meter injects into or observes: `index` in forward order, module `name`."""

    index: int
    name: str
    module: nn.Module
    in_shape: tuple  # per sample, without the batch dimension
    out_shape: tuple


def resolve_layers(model: nn.Module, layers=None) -> list[tuple[str, nn.Module]]:
    """(name, module) pairs to meter: every Conv2d and Linear by default, else the given list of names/modules."""
    named = {id(m): name for name, m in model.named_modules()}
    layers = check_names("layers", layers)  # a bare string is refused, not read letter by letter
    if layers is None:
        found = [(name, m) for name, m in model.named_modules() if isinstance(m, INJECTABLE)]
        if not found:
            raise ValueError(f"{type(model).__name__} has no Conv2d or Linear layer to meter; pass layers=[...] "
                             "to choose modules")
        return found
    chosen = []
    for item in layers:
        if isinstance(item, str):
            try:
                module = model.get_submodule(item)
            except AttributeError as err:
                raise ValueError(f"layers: the model has no submodule {item!r}") from err
            chosen.append((item, module))
        elif isinstance(item, nn.Module) and id(item) in named:
            chosen.append((named[id(item)], item))
        else:
            raise ValueError(f"layers: {item!r} is neither a submodule name nor a submodule of the model")
    if not chosen:
        raise ValueError("layers: the list is empty")
    if len({id(m) for _, m in chosen}) != len(chosen):
        raise ValueError("layers: a module is listed twice")
    return chosen


def match_layers(model: nn.Module, patterns) -> list[str]:
    """Names of the model's Conv2d and Linear modules that match any of `patterns` (exact names or fnmatch
    globs: "features.*", "layer?.0.conv1"), in the model's order: what `--layers` selects on the command line.

    ValueError for a pattern that matches none of them, listing some of the names the model has."""
    import fnmatch

    patterns = check_names("patterns", patterns)
    patterns = [p.strip() for p in patterns or () if p.strip()]
    if not patterns:
        raise ValueError("layers: no name or pattern given; pass e.g. --layers 'features.*' or --layers fc")
    names = [name for name, m in model.named_modules() if isinstance(m, INJECTABLE)]
    unmatched = [p for p in patterns if not any(fnmatch.fnmatchcase(name, p) for name in names)]
    if unmatched:
        shown = ", ".join(names[:8]) + (f" ... ({len(names)} in all)" if len(names) > 8 else "")
        raise ValueError(f"layers: {', '.join(repr(p) for p in unmatched)} matches no Conv2d or Linear layer; "
                         f"the model's are {shown or 'none'}")
    return [name for name in names if any(fnmatch.fnmatchcase(name, p) for p in patterns)]


def first_tensor(args):
    for a in args:
        if isinstance(a, torch.Tensor):
            return a
    raise ValueError("a metered layer was called without a tensor argument")


def trace_layers(model: nn.Module, sample: torch.Tensor, chosen) -> list[Layer]:
    """The chosen layers in the order model(sample) calls them, with per-sample shapes.

    Raises ValueError when a layer is never called or called more than once, or when the model
    rejects the sample (the data's shape does not fit the model).
    """
    calls: list[tuple[int, tuple, tuple]] = []
    index = {id(m): k for k, (_, m) in enumerate(chosen)}

    def hook(module, args, output):
        out = output if isinstance(output, torch.Tensor) else None
        if out is None:
            raise ValueError(f"layer {chosen[index[id(module)]][0]!r} returned {type(output).__name__}, "
                             "not a tensor")
        calls.append((index[id(module)], tuple(first_tensor(args).shape[1:]), tuple(out.shape[1:])))

    handles = [m.register_forward_hook(hook) for _, m in chosen]
    try:
        with torch.no_grad():
            model(sample)
    except ValueError:
        raise
    except Exception as err:  # noqa: BLE001 - the model's own error, re-raised with the data's shape
        raise ValueError(f"model(data[:1]) failed for data of per-sample shape {tuple(sample.shape[1:])}: "
                         f"{type(err).__name__}: {err}") from err
    finally:
        for h in handles:
            h.remove()
    counts = [0] * len(chosen)
    for k, _, _ in calls:
        counts[k] += 1
    for k, c in enumerate(counts):
        if c != 1:
            what = "never called by forward" if c == 0 else f"called {c} times in one forward"
            raise ValueError(f"layer {chosen[k][0]!r} is {what}; metering needs each layer called exactly once")
    return [Layer(i, chosen[k][0], chosen[k][1], in_shape, out_shape) for i, (k, in_shape, out_shape) in
            enumerate(calls)]


__all__ = ["INJECTABLE", "Layer", "first_tensor", "match_layers", "resolve_layers", "trace_layers"]
