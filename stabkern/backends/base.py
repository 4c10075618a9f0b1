"""What every backend declares (xformers style) and the helpers backends share.

A backend names the op families it implements, the devices and dtypes it takes, the oldest GPU it
runs on and whether it is deterministic; it answers `missing()` (why it cannot run here at all, and
the fix) and `refuses(device, dtype, layout)` (why it cannot take this input). Choosing among
backends is not done here but in `stabkern.backends.select`. Nothing here knows about ops or models.

Kernels of the sign family take 2-D contiguous tensors and return float32 (float64 for float64
input):

    project(x: (rows, n), k, seed, stream, t0, j0, precision) -> (rows, k)
    reconstruct(y: (rows, k), n, scale, seed, stream, t0, j0, precision) -> (rows, n)

Kernels of the noise family take rows already in the noise spec's element order:

    sphere_noise(rows: (B, m), radius: (B,), trials, seed, stream, sample0, trial0, out_dtype) -> (trials B, m)
    sq_error(y_hat: (T B, m), y: (B, m)) -> (T B,) float64
"""

from __future__ import annotations

import importlib
import os

import torch

FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
FAMILIES = ("sign", "noise")


class BackendUnavailableError(RuntimeError):
    """No backend (or not the requested one) can take this input; the message says why."""


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def import_extension(name: str):
    """(module, None) or (None, reason) for a compiled extension of stabkern."""
    try:
        return importlib.import_module(f"stabkern.{name}"), None
    except ImportError as err:
        return None, str(err)


class Backend:
    """Capabilities, as class attributes, and the two questions every backend answers."""

    name = ""
    families: frozenset[str] = frozenset()
    devices: tuple[str, ...] = ()
    # Input dtypes the sign kernels read directly; others are cast to float32 before the call.
    native_dtypes: tuple[torch.dtype, ...] = (torch.float32, torch.float64)
    # (major, minor) of the oldest CUDA GPU the backend runs on; None: no limit of its own.
    min_compute_capability: tuple[int, int] | None = None
    # Bitwise equal results run to run and whatever the thread count (fixed-order reductions).
    deterministic = True

    def missing(self, family: str | None = None) -> str | None:
        """Why this backend cannot run the ops of `family` (None: any family it serves) in this process at
        all, and how to fix it; or None."""
        return None

    def refuses(self, device: torch.device, dtype: torch.dtype, layout: torch.layout = torch.strided) -> str | None:
        """Why this backend cannot take a tensor of this device, dtype and layout, or None."""
        if layout != torch.strided:
            return f"it cannot take {layout} tensors (only dense ones: call .to_dense() first)"
        if device.type not in self.devices:
            return f"it runs on {' or '.join(self.devices)} tensors, and the input is on {device}"
        if device.type == "cuda" and self.min_compute_capability is not None:
            have = torch.cuda.get_device_capability(device)
            if tuple(have) < self.min_compute_capability:
                need = self.min_compute_capability
                return (f"the GPU has compute capability {have[0]}.{have[1]}, and this backend needs "
                        f"{need[0]}.{need[1]} or newer")
        return None

    def check_environment(self, family: str) -> None:
        """Raise ValueError if an environment variable this backend's `family` kernels read is invalid."""
