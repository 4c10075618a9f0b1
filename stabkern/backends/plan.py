"""How a call of the GPU sign kernels runs: one planner for the Triton and CUDA launchers.

A `Plan` names the form ("gemv": CUDA cores, exact sums; "gemm": tensor cores) and how many
partial results the reduction is split into (reduced afterwards in a fixed order). The rules are
the same for both backends; what differs, the tile sizes of their kernels, is data: one
`Tiles` per backend (`TRITON_TILES`, `CUDA_TILES`), one `OpTiles` per op in it.

In the GEMM form the non-sign operand is split into bf16 terms (the +-1 side is exact in bf16):
"highest" 3 (exact for float32), "high" 2 (<= 2^-16 relative per entry), "medium" 1 (<= 2^-8),
capped at what the input dtype needs (bfloat16 1, float16 2).

This module launches nothing and knows nothing of Triton or of the compiled CUDA module.
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


@dataclass(frozen=True)
class OpTiles:
    """One op's tiling. The op reduces over `red` (n for projection, k for reconstruction) and
    writes `out` values per row (k for projection, n for reconstruction).

    GEMV form: a block owns `gemv_out` outputs of one row; a step of its loop takes `gemv_step`
    reduction elements, and a split should keep at least `gemv_min_steps` of them.
    GEMM form: a block owns a tile of rows (the next power of two of rows, clamped to `gemm_rows`)
    by `gemm_out` outputs; a step takes `gemm_step` reduction elements (`gemm_step_small`
    instead when the tile has at most 16 rows), and a split keeps at least `gemm_min_steps`.
    """

    gemv_out: int
    gemv_step: int
    gemv_min_steps: int
    gemm_rows: tuple[int, int]
    gemm_out: int
    gemm_step: int
    gemm_min_steps: int
    gemm_step_small: int | None = None

    def block_rows(self, rows: int) -> int:
        """Rows of the GEMM tile for `rows` input rows."""
        low, high = self.gemm_rows
        return min(high, max(low, 1 << max(0, rows - 1).bit_length()))

    def block_step(self, rows: int) -> int:
        """Reduction elements per step of the GEMM loop for `rows` input rows."""
        if self.gemm_step_small is not None and self.block_rows(rows) <= 16:
            return self.gemm_step_small
        return self.gemm_step


@dataclass(frozen=True)
class Tiles:
    """A backend's kernels: up to `gemv_max_rows` rows take the GEMV form (only in "highest"
    when `gemv_any_precision` is False; float64 always), and each op's tiling."""

    gemv_max_rows: int
    gemv_any_precision: bool
    project: OpTiles
    reconstruct: OpTiles


# stabkern.backends.triton.sign: GEMV blocks of 256 rows t (projection) or 128 columns
# (reconstruction); GEMM tiles of 16..128 rows by 128 rows t of S or 128 columns.
TRITON_TILES = Tiles(
    gemv_max_rows=4, gemv_any_precision=True,
    project=OpTiles(gemv_out=256, gemv_step=128, gemv_min_steps=8, gemm_rows=(16, 128), gemm_out=128,
                    gemm_step=128, gemm_min_steps=4),
    reconstruct=OpTiles(gemv_out=128, gemv_step=128, gemv_min_steps=4, gemm_rows=(16, 128), gemm_out=128,
                        gemm_step=32, gemm_min_steps=4, gemm_step_small=64),
)

# csrc/cuda/sign (sign_cuda.h): GEMV blocks of 512 rows t (projection) or 4 groups of 128 columns
# (reconstruction); GEMM blocks of about 64 x 64 (projection, steps of 512 columns) or 32 rows by
# 512 columns (reconstruction, steps of 32 rows t).
CUDA_TILES = Tiles(
    gemv_max_rows=4, gemv_any_precision=False,
    project=OpTiles(gemv_out=512, gemv_step=128, gemv_min_steps=8, gemm_rows=(64, 64), gemm_out=64,
                    gemm_step=512, gemm_min_steps=2),
    reconstruct=OpTiles(gemv_out=512, gemv_step=32, gemv_min_steps=4, gemm_rows=(32, 32), gemm_out=512,
                        gemm_step=32, gemm_min_steps=4),
)


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


def num_sms(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device; 4 for CPU tensors (the Triton interpreter: a few
    programs, so that tests exercise splitting)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4


def form(tiles: Tiles, rows: int, dtype: torch.dtype, precision: str) -> str:
    if dtype == torch.float64:
        return "gemv"
    if rows <= tiles.gemv_max_rows and (tiles.gemv_any_precision or precision == "highest"):
        return "gemv"
    return "gemm"


def plan(tiles: Tiles, op: str, rows: int, n: int, k: int, dtype: torch.dtype, precision: str,
         device: torch.device) -> Plan:
    """The plan of `op` ("project" or "reconstruct") on (rows, n) / (rows, k) input."""
    if op == "project":
        t, out, red = tiles.project, k, n
    elif op == "reconstruct":
        t, out, red = tiles.reconstruct, n, k
    else:
        raise ValueError(f"op must be 'project' or 'reconstruct', got {op!r}")
    chosen, sms = form(tiles, rows, dtype, precision), num_sms(device)
    if chosen == "gemv":
        return Plan(chosen, split_count(cdiv(out, t.gemv_out) * rows, cdiv(red, t.gemv_step), sms, t.gemv_min_steps))
    units = cdiv(rows, t.block_rows(rows)) * cdiv(out, t.gemm_out)
    if 2 * units >= sms:
        return Plan(chosen, 1)
    return Plan(chosen, split_count(units, cdiv(red, t.block_step(rows)), sms // 4, t.gemm_min_steps))
