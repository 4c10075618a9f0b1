"""The four backends of the sign ops, each declaring what it can take.

A backend answers `missing()` (why it cannot run here at all, and how to fix that) and
`refuses(device, dtype)` (why it cannot take this input); the dispatcher in `ops.py` takes the
first backend that answers None to both, or raises listing every reason. Backends know nothing
above them: they get 2-D contiguous tensors and return float32 (float64 for float64 input).

    project(x: (rows, n), k, seed, stream, t0, j0, precision) -> (rows, k)
    reconstruct(y: (rows, k), n, scale, seed, stream, t0, j0, precision) -> (rows, n)
"""

from __future__ import annotations

import importlib
import importlib.util
import os

import torch

from .. import spec as reference

FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


class Backend:
    name = ""
    devices: tuple[str, ...] = ()
    # Input dtypes the kernels read directly; others are cast to float32 by the dispatcher.
    native_dtypes: tuple[torch.dtype, ...] = (torch.float32, torch.float64)

    def missing(self) -> str | None:
        return None

    def refuses(self, device: torch.device, dtype: torch.dtype) -> str | None:
        if device.type not in self.devices:
            return f"it runs on {' or '.join(self.devices)} tensors, and the input is on {device}"
        return None


class ReferenceBackend(Backend):
    """Plain torch on any device, float64 throughout (`stabkern.reference`)."""

    name = "reference"
    devices = ("cpu", "cuda", "mps", "xpu", "meta")
    native_dtypes = FLOAT_DTYPES

    def refuses(self, device, dtype):
        return None

    def project(self, x, k, seed, stream, t0, j0, precision):
        return reference.project(x, k, seed, stream, t0, j0).to(accumulation_dtype(x.dtype))

    def reconstruct(self, y, n, scale, seed, stream, t0, j0, precision):
        return reference.reconstruct(y, n, seed, stream, scale, t0, j0).to(accumulation_dtype(y.dtype))


def _import_extension(name: str):
    """(module, None) or (None, reason) for a compiled extension of stabkern."""
    try:
        return importlib.import_module(f"stabkern.{name}"), None
    except ImportError as err:
        return None, str(err)


class CpuBackend(Backend):
    """C++17/OpenMP kernels of `stabkern._cpu` (csrc/cpu)."""

    name = "cpu"
    devices = ("cpu",)

    def __init__(self):
        self._module, self._error = None, None

    @property
    def module(self):
        if self._module is None and self._error is None:
            self._module, self._error = _import_extension("_cpu")
        return self._module

    def missing(self):
        if self.module is None:
            return (f"stabkern._cpu is not built or does not load ({self._error}); reinstall stabkern "
                    "with a C++17 compiler (`pip install -e .`)")
        return None

    def project(self, x, k, seed, stream, t0, j0, precision):
        rows, n = x.shape
        y = torch.empty(rows, k, dtype=x.dtype)
        fn = self.module.project_f64 if x.dtype == torch.float64 else self.module.project_f32
        fn(x.data_ptr(), y.data_ptr(), rows, n, k, seed, stream, t0, j0, torch.get_num_threads())
        return y

    def reconstruct(self, y, n, scale, seed, stream, t0, j0, precision):
        rows, k = y.shape
        out = torch.empty(rows, n, dtype=y.dtype)
        fn = self.module.reconstruct_f64 if y.dtype == torch.float64 else self.module.reconstruct_f32
        fn(y.data_ptr(), out.data_ptr(), rows, n, k, scale, seed, stream, t0, j0, torch.get_num_threads())
        return out


def triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


class TritonBackend(Backend):
    """Triton kernels (`stabkern.backends.triton.sign`): CUDA tensors, or CPU tensors under TRITON_INTERPRET=1."""

    name = "triton"
    native_dtypes = FLOAT_DTYPES

    def __init__(self):
        self._module, self._error = None, None

    @property
    def devices(self):
        return ("cuda", "cpu") if triton_interpreting() else ("cuda",)

    @property
    def module(self):
        if self._module is None and self._error is None:
            try:
                self._module = importlib.import_module("stabkern.backends.triton.sign")
            except ImportError as err:
                self._error = str(err)
        return self._module

    def missing(self):
        if importlib.util.find_spec("triton") is None:
            return "Triton is not installed: `pip install triton`"
        if self.module is None:
            return f"stabkern's Triton kernels do not import ({self._error})"
        return None

    def refuses(self, device, dtype):
        if device.type == "cpu" and not triton_interpreting():
            return "it takes CPU tensors only under the Triton interpreter (TRITON_INTERPRET=1)"
        return super().refuses(device, dtype)

    def project(self, x, k, seed, stream, t0, j0, precision):
        return self.module.project(x, k, seed, stream, t0, j0, precision)

    def reconstruct(self, y, n, scale, seed, stream, t0, j0, precision):
        return self.module.reconstruct(y, n, scale, seed, stream, t0, j0, precision)


class CudaBackend(Backend):
    """CUDA C++ kernels of `stabkern._cuda` (csrc/cuda)."""

    name = "cuda"
    devices = ("cuda",)
    native_dtypes = FLOAT_DTYPES

    def __init__(self):
        self._module, self._error = None, None

    @property
    def module(self):
        if self._module is None and self._error is None:
            self._module, self._error = _import_extension("_cuda")
        return self._module

    def missing(self):
        if self.module is None:
            return (f"stabkern was built without CUDA ({self._error}): install nvcc and reinstall "
                    "stabkern, or use backend='triton'")
        if not torch.cuda.is_available():
            return "torch sees no CUDA device"
        return None

    def project(self, x, k, seed, stream, t0, j0, precision):
        from . import cuda as cuda_sign

        return cuda_sign.project(self.module, x, k, seed, stream, t0, j0, precision)

    def reconstruct(self, y, n, scale, seed, stream, t0, j0, precision):
        from . import cuda as cuda_sign

        return cuda_sign.reconstruct(self.module, y, n, scale, seed, stream, t0, j0, precision)


BACKENDS: dict[str, Backend] = {
    b.name: b for b in (ReferenceBackend(), CpuBackend(), TritonBackend(), CudaBackend())
}
