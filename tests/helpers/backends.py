"""Which backends and devices the kernel tests run over here."""

import torch

from stabkern.backends import BACKENDS


def usable_backends(device: str) -> list[str]:
    """Names of backends that can run on `device` here (reference always)."""
    names = []
    for name, backend in BACKENDS.items():
        if backend.missing() is None and backend.refuses(torch.device(device), torch.float32) is None:
            names.append(name)
    return names


def available_devices() -> list[str]:
    return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]


# (device, backend) pairs every kernel test runs over.
BACKEND_CASES = [(d, b) for d in available_devices() for b in usable_backends(d)]


def interpreted(backend: str, device: str) -> bool:
    """True when this backend runs through the Triton interpreter (keep sizes small)."""
    return backend == "triton" and device == "cpu"
