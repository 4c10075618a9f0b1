"""The `cuda` backend: its capabilities, and the launcher of the compiled kernels of `stabkern._cuda`
(csrc/cuda/sign), for the sign ops only.

    project(module, x: (rows, n), k, ...)     -> (rows, k)  equals backends.reference.project
    reconstruct(module, y: (rows, k), n, ...) -> (rows, n)  equals backends.reference.reconstruct

It takes the form and the split of the reduction from `stabkern.backends.plan` (`plan.CUDA_TILES`),
allocates the output and the workspace with torch on x's device, and passes raw pointers, x's device
index and the current stream's handle; the kernels run asynchronously on that stream. Forms
(csrc/cuda/sign/sign_cuda.h):

- "gemv" (CUDA cores): exact float32 sums (float64 for float64 input) whatever the precision mode;
  taken for float64, and for "highest" with up to `CUDA_TILES.gemv_max_rows` rows.
- "gemm" (tensor cores, mma.sync bf16): the operand is split into bf16 terms, 3 / 2 / 1 for
  "highest" / "high" / "medium" (bf16 input needs 1, float16 input 2): per-entry errors of at
  most 2^-24 (exact for float32), 2^-16 and 2^-8 relative, float32 accumulation; measured errors
  are in README.md. With few rows (rows * terms <= 16) the terms ride as extra rows of the
  16-row tile, so one vector costs the same in every mode: the GEMV shape of "high" and "medium"
  runs here too.

The build targets sm_80 and sm_90 only, so the backend refuses older GPUs.
"""

from __future__ import annotations

import torch

from . import plan as launch_plan
from .base import FLOAT_DTYPES, Backend, import_extension
from .plan import CUDA_TILES as TILES
from .plan import Plan, split_terms

DTYPE_CODES = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}
FORMS = {"gemv": 0, "gemm": 1}


class CudaBackend(Backend):
    """CUDA C++ kernels of the sign family on CUDA tensors of compute capability 8.0 or newer."""

    name = "cuda"
    families = frozenset({"sign"})
    devices = ("cuda",)
    native_dtypes = FLOAT_DTYPES
    min_compute_capability = (8, 0)

    def __init__(self):
        self._module, self._error = None, None

    @property
    def module(self):
        if self._module is None and self._error is None:
            self._module, self._error = import_extension("_cuda")
        return self._module

    def missing(self, family: str | None = None) -> str | None:
        if self.module is None:
            return (f"stabkern was built without CUDA ({self._error}): install nvcc and reinstall "
                    "stabkern, or use backend='triton'")
        if not torch.cuda.is_available():
            return "torch sees no CUDA device"
        return None

    def refuses(self, device, dtype, layout=torch.strided):
        reason = super().refuses(device, dtype, layout)
        if reason is not None and "compute capability" in reason:
            return reason + " (stabkern._cuda is built for sm_80 and sm_90): use backend='triton'"
        return reason

    def project(self, x, k, seed, stream, t0, j0, precision):
        return project(self.module, x, k, seed, stream, t0, j0, precision)

    def reconstruct(self, y, n, scale, seed, stream, t0, j0, precision):
        return reconstruct(self.module, y, n, scale, seed, stream, t0, j0, precision)


def plan_project(rows: int, n: int, k: int, dtype: torch.dtype, precision: str, device: torch.device) -> Plan:
    return launch_plan.plan(TILES, "project", rows, n, k, dtype, precision, device)


def plan_reconstruct(rows: int, n: int, k: int, dtype: torch.dtype, precision: str, device: torch.device) -> Plan:
    return launch_plan.plan(TILES, "reconstruct", rows, n, k, dtype, precision, device)


def _check_input(a: torch.Tensor, name: str) -> None:
    if a.device.type != "cuda":
        raise ValueError(f"the cuda backend takes CUDA tensors; {name} is on {a.device}")
    if a.dtype not in DTYPE_CODES:
        raise TypeError(f"{name} must be float32, float64, float16 or bfloat16, got {a.dtype}")
    if a.dim() != 2 or not a.is_contiguous():
        raise ValueError(f"{name} must be a contiguous 2-D tensor (rows, size), got shape {tuple(a.shape)}")


def _launch(module, project_op: bool, a: torch.Tensor, out_cols: int, n: int, k: int, scale: float, seed: int,
            stream: int, t0: int, j0: int, precision: str, plan: Plan) -> torch.Tensor:
    if plan.form not in FORMS:
        raise ValueError(f"plan.form must be 'gemv' or 'gemm', got {plan.form!r}")
    rows = a.shape[0]
    code, form, terms = DTYPE_CODES[a.dtype], FORMS[plan.form], split_terms(precision, a.dtype)
    out = torch.empty((rows, out_cols), dtype=torch.float64 if a.dtype == torch.float64 else torch.float32,
                      device=a.device)
    nbytes = module.workspace_bytes(project_op, form, code, rows, n, k, t0, j0, terms, plan.splits)
    work = torch.empty(nbytes, dtype=torch.uint8, device=a.device) if nbytes else None
    work_ptr = work.data_ptr() if work is not None else 0
    device = a.device.index if a.device.index is not None else torch.cuda.current_device()
    handle = torch.cuda.current_stream(a.device).cuda_stream
    if project_op:
        module.project(form, a.data_ptr(), code, out.data_ptr(), work_ptr, nbytes, rows, n, k, seed, stream, t0, j0,
                       terms, plan.splits, device, handle)
    else:
        module.reconstruct(form, a.data_ptr(), code, out.data_ptr(), work_ptr, nbytes, rows, n, k, scale, seed,
                           stream, t0, j0, terms, plan.splits, device, handle)
    return out


def project(module, x: torch.Tensor, k: int, seed: int, stream: int, t0: int, j0: int, precision: str,
            plan: Plan | None = None) -> torch.Tensor:
    """y = x @ S[t0:t0+k, j0:j0+n].T (`backends.reference.project`); float32 (float64 for float64 x)."""
    _check_input(x, "x")
    rows, n = x.shape
    plan = plan or plan_project(rows, n, k, x.dtype, precision, x.device)
    return _launch(module, True, x, k, n, k, 1.0, seed, stream, t0, j0, precision, plan)


def reconstruct(module, y: torch.Tensor, n: int, scale: float, seed: int, stream: int, t0: int, j0: int,
                precision: str, plan: Plan | None = None) -> torch.Tensor:
    """x_hat = scale * y @ S[t0:t0+k, j0:j0+n] (`backends.reference.reconstruct`); float32 (float64 for float64 y)."""
    _check_input(y, "y")
    rows, k = y.shape
    plan = plan or plan_reconstruct(rows, n, k, y.dtype, precision, y.device)
    return _launch(module, False, y, n, n, k, scale, seed, stream, t0, j0, precision, plan)
