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

from helpers.backends import BACKEND_CASES  # noqa: E402


@pytest.fixture(params=BACKEND_CASES, ids=[f"{d}-{b}" for d, b in BACKEND_CASES])
def device_backend(request):
    return request.param
