"""The backend registry: every backend of both op families, and the one rule that picks one.

`select(family, requested, device, dtype)` is used by every op (sign and noise alike): it returns
the backend that runs the call, or raises `BackendUnavailableError` listing every candidate's
reason and fix; with "auto" it takes the first usable backend of `AUTO_ORDER` that serves the
family, warning once (RuntimeWarning) when that is the slow `reference` on CPU or CUDA tensors.
Environment variables (STABKERN_BACKEND, STABKERN_CPU_ISA) are checked here, in one place, with
a ValueError naming the variable; `environment_problems()` lists them for `python -m stabkern.info`.

The backends themselves (capabilities and adapters) live in reference.py, cpu.py, cuda.py and
triton/; their common base in base.py. Nothing here knows about ops, modules or meters.
"""

from __future__ import annotations

import os
import warnings

import torch

from .base import FAMILIES, FLOAT_DTYPES, Backend, BackendUnavailableError, accumulation_dtype, triton_interpreting
from .cpu import CpuBackend
from .cuda import CudaBackend
from .reference import ReferenceBackend
from .triton import TritonBackend

__all__ = ["BACKENDS", "BACKEND_NAMES", "Backend", "BackendUnavailableError", "FLOAT_DTYPES", "accumulation_dtype",
           "environment_problems", "select", "triton_interpreting"]

BACKENDS: dict[str, Backend] = {
    b.name: b for b in (ReferenceBackend(), CpuBackend(), TritonBackend(), CudaBackend())
}
BACKEND_NAMES = ("auto", *BACKENDS)

# Fastest first, per device type; each family uses the backends of this order that serve it.
AUTO_ORDER = {"cpu": ("cpu", "reference"), "cuda": ("cuda", "triton", "reference")}

_warned_fallback: set[tuple[str, str, str]] = set()


def env_backend() -> str:
    """STABKERN_BACKEND ("auto" when unset or empty); a ValueError if it names no backend."""
    value = os.environ.get("STABKERN_BACKEND", "") or "auto"
    if value not in BACKEND_NAMES:
        raise ValueError(f"STABKERN_BACKEND must be one of {', '.join(BACKEND_NAMES)}; got {value!r}")
    return value


def environment_problems() -> dict[str, str]:
    """{variable: what is wrong with it} for every stabkern environment variable set to a bad value."""
    problems = {}
    try:
        env_backend()
    except ValueError as err:
        problems["STABKERN_BACKEND"] = str(err)
    isa = BACKENDS["cpu"].isa_problem()
    if isa is not None:
        problems["STABKERN_CPU_ISA"] = isa
    return problems


def _candidates(family: str, requested: str, device: torch.device) -> tuple[str, ...]:
    if requested == "auto":
        requested = env_backend()
        if requested != "auto" and family not in BACKENDS[requested].families:
            requested = "auto"  # STABKERN_BACKEND names a backend of the other family: auto for this one
    if requested != "auto":
        return (requested,)
    order = AUTO_ORDER.get(device.type, ("reference",))
    return tuple(name for name in order if family in BACKENDS[name].families)


def select(family: str, requested: str, device: torch.device, dtype: torch.dtype,
           layout: torch.layout = torch.strided) -> Backend:
    """The backend that runs an op of `family` ("sign" or "noise") on this input.

    `requested` is a backend name or "auto"; with "auto", STABKERN_BACKEND (if set) decides. Raises
    ValueError for an unknown name or a bad environment variable, BackendUnavailableError (listing
    every reason) when no candidate can take the input.
    """
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    if not isinstance(requested, str) or requested not in BACKEND_NAMES:
        raise ValueError(f"backend must be one of {', '.join(BACKEND_NAMES)}; got {requested!r}")
    names = _candidates(family, requested, device)
    reasons = []
    for name in names:
        backend = BACKENDS[name]
        if family not in backend.families:
            reason = f"it has no {family} ops (it serves the {', '.join(sorted(backend.families))} ops)"
        else:
            reason = backend.missing(family) or backend.refuses(device, dtype, layout)
        if reason is None:
            backend.check_environment(family)
            if len(names) > 1 and name == "reference" and device.type in ("cpu", "cuda"):
                key = (family, device.type, "; ".join(reasons))
                if key not in _warned_fallback:
                    _warned_fallback.add(key)
                    warnings.warn(f"stabkern: the {family} ops use the slow reference backend because "
                                  + "; ".join(reasons), RuntimeWarning, stacklevel=3)
            return backend
        reasons.append(f"backend '{name}' cannot run: {reason}")
    raise BackendUnavailableError(
        f"no stabkern backend can take a {dtype} {'' if layout == torch.strided else str(layout) + ' '}"
        f"tensor on {device} for the {family} ops:\n  " + "\n  ".join(reasons))
