"""How a call of the GPU sign kernels runs, shared by the Triton and CUDA launchers.

A `Plan` names the form ("gemv": CUDA cores, exact sums; "gemm": tensor cores) and how many
partial results the reduction is split into (reduced afterwards in a fixed order). In the GEMM
form the non-sign operand is split into bf16 terms (the +-1 side is exact in bf16):
"highest" 3 (exact for float32), "high" 2 (<= 2^-16 relative per entry), "medium" 1 (<= 2^-8),
capped at what the input dtype needs (bfloat16 1, float16 2).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

PRECISION_TERMS = {"highest": 3, "high": 2, "medium": 1}


@dataclass(frozen=True)
class Plan:
    """form "gemv" or "gemm", and the number of partial results the reduction is split into
    (1: the kernel writes the output directly)."""

    form: str
    splits: int


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def split_terms(precision: str, dtype: torch.dtype) -> int:
    """bf16 terms of the GEMM operand split: what the mode asks, capped at what the dtype needs."""
    if precision not in PRECISION_TERMS:
        raise ValueError(f"precision must be one of {tuple(PRECISION_TERMS)}, got {precision!r}")
    need = {torch.bfloat16: 1, torch.float16: 2}.get(dtype, 3)
    return min(PRECISION_TERMS[precision], need)


def split_count(units: int, steps: int, sms: int, min_steps: int) -> int:
    """Partial results so that units * splits fills ~4 blocks per SM, each doing >= min_steps steps."""
    return max(1, min(cdiv(4 * sms, max(1, units)), steps // min_steps))
