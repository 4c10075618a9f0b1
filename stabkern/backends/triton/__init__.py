"""The `triton` backend: its capabilities and dispatch to the kernels of `sign` (projection and
reconstruction) and `noise` (the meters' noise and error).

The kernel modules import Triton, so they are imported only when this backend runs: stabkern
imports without Triton installed. CUDA tensors, or CPU tensors under TRITON_INTERPRET=1 (tests).
"""

from __future__ import annotations

import importlib.util

import torch

from ..base import FLOAT_DTYPES, Backend, import_extension, triton_interpreting


class TritonBackend(Backend):
    """Triton kernels of both families."""

    name = "triton"
    families = frozenset({"sign", "noise"})
    native_dtypes = FLOAT_DTYPES

    def __init__(self):
        self._modules: dict[str, tuple] = {}

    @property
    def devices(self):
        return ("cuda", "cpu") if triton_interpreting() else ("cuda",)

    def _kernels(self, family: str):
        """stabkern.backends.triton.sign or .noise, or None (the reason kept for `missing`)."""
        if family not in self._modules:
            self._modules[family] = import_extension(f"backends.triton.{family}")
        return self._modules[family][0]

    @property
    def module(self):
        return self._kernels("sign")

    def missing(self, family: str | None = None) -> str | None:
        if importlib.util.find_spec("triton") is None:
            return "Triton is not installed: `pip install triton`"
        for fam in ("sign", "noise"):
            if family in (None, fam) and self._kernels(fam) is None:
                return f"stabkern's Triton kernels do not import ({self._modules[fam][1]})"
        return None

    def refuses(self, device, dtype, layout=torch.strided):
        if device.type == "cpu" and not triton_interpreting():
            return "it takes CPU tensors only under the Triton interpreter (TRITON_INTERPRET=1)"
        return super().refuses(device, dtype, layout)

    def project(self, x, k, seed, stream, t0, j0, precision):
        return self._kernels("sign").project(x, k, seed, stream, t0, j0, precision)

    def reconstruct(self, y, n, scale, seed, stream, t0, j0, precision):
        return self._kernels("sign").reconstruct(y, n, scale, seed, stream, t0, j0, precision)

    def sphere_noise(self, rows, radius, trials, seed, stream, sample0, trial0, out_dtype):
        return self._kernels("noise").sphere_noise(rows.contiguous(), radius, trials, seed, stream, sample0, trial0,
                                                   out_dtype)

    def sq_error(self, y_hat, y):
        return self._kernels("noise").sq_error(y_hat.contiguous(), y.contiguous())
