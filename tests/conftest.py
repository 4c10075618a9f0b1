"""Shared test setup: which backends run here, and Triton's interpreter on machines without a GPU.

TRITON_INTERPRET must be set before any Triton kernel is decorated, so it is set here, before
stabkern's Triton module can be imported: on a machine without CUDA the Triton backend then
runs (slowly) on CPU tensors; with a GPU the compiled kernels are tested.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from stabkern.backends import BACKENDS  # noqa: E402


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


@pytest.fixture(params=BACKEND_CASES, ids=[f"{d}-{b}" for d, b in BACKEND_CASES])
def device_backend(request):
    return request.param


def interpreted(backend: str, device: str) -> bool:
    """True when this backend runs through the Triton interpreter (keep sizes small)."""
    return backend == "triton" and device == "cpu"
