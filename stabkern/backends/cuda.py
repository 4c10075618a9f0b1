"""Adapter from `backends.CudaBackend` to the compiled CUDA kernels of `stabkern._cuda` (csrc/cuda).

    project(module, x: (rows, n), k, ...)     -> (rows, k)  equals reference.project
    reconstruct(module, y: (rows, k), n, ...) -> (rows, n)  equals reference.reconstruct

It picks the form and the split of the reduction (`Plan`), allocates the output and the workspace
with torch on x's device, and passes raw pointers, x's device index and the current stream's
handle; the kernels run asynchronously on that stream. Forms (csrc/cuda/sign_cuda.h):

- "gemv" (CUDA cores): exact float32 sums (float64 for float64 input) whatever the precision mode;
  taken for float64, and for "highest" with up to GEMV_MAX_ROWS rows.
- "gemm" (tensor cores, mma.sync bf16): the operand is split into bf16 terms, 3 / 2 / 1 for
  "highest" / "high" / "medium" (bf16 input needs 1, float16 input 2): per-entry errors of at
  most 2^-24 (exact for float32), 2^-16 and 2^-8 relative, float32 accumulation. Relative
  Frobenius error against float64 on Gaussian data (21 x 1000, k = 300, the kernels' data flow
  emulated on the host): 2.2e-7, 2.4e-6 and 1.7e-3; the GPU tests bound them by 1e-5, 3e-5, 4e-3. With few rows
  (rows * terms <= 16) the terms ride as extra rows of the 16-row tile, so one vector costs the
  same in every mode: the GEMV shape of "high" and "medium" runs here too.
"""

from __future__ import annotations

import torch

from .plan import Plan, cdiv, split_count, split_terms

DTYPE_CODES = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}
FORMS = {"gemv": 0, "gemm": 1}
GEMV_MAX_ROWS = 4


def _num_sms(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def _form(rows: int, dtype: torch.dtype, precision: str) -> str:
    if dtype == torch.float64 or (precision == "highest" and rows <= GEMV_MAX_ROWS):
        return "gemv"
    return "gemm"


def plan_project(rows: int, n: int, k: int, dtype: torch.dtype, precision: str, device: torch.device) -> Plan:
    form, sms = _form(rows, dtype, precision), _num_sms(device)
    if form == "gemv":  # blocks of 512 rows t; steps are groups of 128 columns
        return Plan(form, split_count(cdiv(k, 512) * rows, cdiv(n, 128), sms, 8))
    units = cdiv(k, 64) * cdiv(rows, 64)  # blocks of about 64 x 64; steps are 512 columns
    return Plan(form, 1 if 2 * units >= sms else split_count(units, cdiv(n, 512), sms // 4, 2))


def plan_reconstruct(rows: int, n: int, k: int, dtype: torch.dtype, precision: str, device: torch.device) -> Plan:
    form, sms = _form(rows, dtype, precision), _num_sms(device)
    units = cdiv(n, 512) * (rows if form == "gemv" else cdiv(rows, 32))  # blocks own 4 groups of 128
    if form == "gemv":
        return Plan(form, split_count(units, cdiv(k, 32), sms, 4))
    return Plan(form, 1 if 2 * units >= sms else split_count(units, cdiv(k, 32), sms // 4, 4))


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
    """y = x @ S[t0:t0+k, j0:j0+n].T (`reference.project`); float32 (float64 for float64 x)."""
    _check_input(x, "x")
    rows, n = x.shape
    plan = plan or plan_project(rows, n, k, x.dtype, precision, x.device)
    return _launch(module, True, x, k, n, k, 1.0, seed, stream, t0, j0, precision, plan)


def reconstruct(module, y: torch.Tensor, n: int, scale: float, seed: int, stream: int, t0: int, j0: int,
                precision: str, plan: Plan | None = None) -> torch.Tensor:
    """x_hat = scale * y @ S[t0:t0+k, j0:j0+n] (`reference.reconstruct`); float32 (float64 for float64 y)."""
    _check_input(y, "y")
    rows, k = y.shape
    plan = plan or plan_reconstruct(rows, n, k, y.dtype, precision, y.device)
    return _launch(module, False, y, n, n, k, scale, seed, stream, t0, j0, precision, plan)
