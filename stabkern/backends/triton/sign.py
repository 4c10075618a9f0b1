"""Triton kernels of the sign ops (backend "triton"): projection and reconstruction, GEMV and GEMM forms.

    project(x: (rows, n), k, ...)     -> (rows, k)  equals backends.reference.project:     x @ S[t0:t0+k, j0:j0+n].T
    reconstruct(y: (rows, k), n, ...) -> (rows, n)  equals backends.reference.reconstruct: scale * y @ S[t0:t0+k, j0:j0+n]

The launch plan (form, split) comes from `stabkern.backends.plan` with this file's tile sizes
(`plan.TRITON_TILES`); the backend class and its dispatch are in `stabkern.backends.triton`.

S is spec stabkern-sign-v1: Philox4x32-10(key = seed, counter = (j >> 7, t, stream, 0)) gives the
signs of 128 columns of row t; bit j & 31 of word (j >> 5) & 3, set meaning +1.

Design note (why the kernels look the way they do).

- Philox is our own 10 rounds on uint32 tensors (`tl.umulhi` and a wrapping multiply), one call per
  128 columns of one row, all four words used. Every bit is extracted by plain uint32 shifts by
  uint32 amounts below 32 and a mask: no signed/unsigned conversions, no `tl.randint`.
- GEMV form (a few rows, any precision, and every float64 input): CUDA cores. A program owns a
  block of rows t of S and a slice of the columns (or, for reconstruction, 128 columns and a slice
  of the rows t). Its tiles are (32 bits, BLOCK_T): the t axis runs across threads and the 32 bits
  of one Philox word sit in each thread's registers, so the 1-D Philox words need no layout
  conversion and are never recomputed by two threads (checked in the TTGIR: the words stay in the
  1-D blocked layout). A sign is applied by flipping the float's sign bit: three instructions per
  sign (shift, LOP3 and+xor, FADD), the shape of the ~10 T sign-MAC/s ALU estimate on an H100.
- GEMM form (many rows): the +-1 tile (64 columns x BLOCK_N rows t of S for projection, BLOCK_T
  rows t x 64 columns for reconstruction; two halves per Philox call) is built in registers, its
  sign bit from the Philox word on 1.0f, converted to bf16 (exact) and fed to `tl.dot` with float32
  accumulation. The other operand is split into bf16 terms, so the precision modes are exact
  splits rather than tf32:
    "highest": x = hi + mid + lo, three bf16 dots. The split is exact for float32 (8 + 8 + 8
               significand bits), so the only error is float32 accumulation.
    "high":    x ~ hi + mid, two dots: each x loses at most 2^-16 of itself (round to nearest).
    "medium":  x ~ hi (x rounded to bf16), one dot: each x loses at most 2^-8 of itself.
  bf16 inputs need one term and float16 inputs two for exactness, so they never take more.
  The GEMV form sums in exact float32 (float64 for float64 input) in every mode. Measured errors
  are in README.md; the tests bound them by the derived per-entry bounds above.
- The bf16 rounding of the split is done with integer operations (round to nearest even on the
  bit pattern) rather than `.to(tl.bfloat16)`: Triton 3.9's interpreter truncates in that cast and
  multiplies raw bf16 bit patterns in `tl.dot`, so the interpreter runs the same split with an
  exact float32 dot (`INTERPRET`), while compiled code feeds bf16 to the tensor cores. Both compute
  the same function: bf16-representable operands, exact products, float32 sums.
- Work too small to fill the GPU is split along the reduction (columns for projection, rows t for
  reconstruction) into partial results that a second tiny kernel sums in a fixed order: results
  are bitwise reproducible, no atomics.
- Scalars that are uint32 (key words, stream, t0, j0 >> 7) travel as int64 with bit 32 set, so
  Triton compiles one variant for every value; kernels keep the low 32 bits.
- The reduction axis (x's columns, y's columns) is padded with zeros to a multiple of 16 when it is
  not one (or the data is not 16-element aligned): Triton then vectorizes the tile loads, where the
  unaligned tiles needed a 64-bit pointer per element and spilled (sm_90 compile, Triton 3.9).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from .. import plan as launch_plan
from ..plan import TRITON_TILES as TILES
from ..plan import Plan, split_terms

# Read once, like Triton itself, which decides at @triton.jit time whether a kernel is interpreted.
_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

_M0 = tl.constexpr(0xD2511F53)
_M1 = tl.constexpr(0xCD9E8D57)
_W0 = tl.constexpr(0x9E3779B9)
_W1 = tl.constexpr(0xBB67AE85)
_SIGN_BIT = tl.constexpr(0x80000000)

_REDUCE_BLOCK = 1024
# Reduction lengths are padded with zeros to this multiple (and operands to this alignment in
# bytes) so that Triton sees divisible strides and vectorizes the loads: unaligned 2-D tiles need a
# 64-bit pointer per element and spill (seen in the sm_90 compile of Triton 3.9).
_PAD = 16


# --------------------------------------------------------------------------- device functions


@triton.jit
def _philox4x32_10(c0, c1, c2, c3, k0, k1):
    """Random123 Philox4x32-10 on uint32 values (tensors or scalars that broadcast)."""
    for _ in tl.static_range(10):
        hi0 = tl.umulhi(c0, _M0)
        lo0 = c0 * _M0
        hi1 = tl.umulhi(c2, _M1)
        lo1 = c2 * _M1
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 = k0 + _W0
        k1 = k1 + _W1
    return c0, c1, c2, c3


@triton.jit
def _sign_words(group, t, stream, k0, k1):
    """The 4 words of S's row t at column group `group` (uint32; t a tensor): spec stabkern-sign-v1."""
    return _philox4x32_10(group, t, stream, stream ^ stream, k0, k1)


@triton.jit
def _project_word(acc, x_row, col, word, n, MASKED: tl.constexpr, F64: tl.constexpr):
    """acc[t] += sum over the 32 bits b of `word` of S[t, col + b] * x[col + b].

    acc, word: (BLOCK_T,), word uint32; col: first column (int64). The (32, BLOCK_T) tile keeps
    the 32 bits in each thread's registers, so the sum over them needs no shuffles.
    """
    bit = tl.arange(0, 32)
    j = col + bit
    if MASKED:
        xv = tl.load(x_row + j, mask=j < n, other=0.0)
    else:
        xv = tl.load(x_row + j)
    if F64:
        on = ((word[None, :] >> bit.to(tl.uint32)[:, None]) & 1) != 0
        xd = xv.to(tl.float64)[:, None]
        acc += tl.sum(tl.where(on, xd, -xd), axis=0)
    else:
        # Bit b clear means -1: move the inverted bit to bit 31 and flip the float's sign with it.
        flip = ((~word)[None, :] << (31 - bit).to(tl.uint32)[:, None]) & _SIGN_BIT
        xb = xv.to(tl.float32).to(tl.uint32, bitcast=True)[:, None]
        acc += tl.sum((xb ^ flip).to(tl.float32, bitcast=True), axis=0)
    return acc


@triton.jit
def _project_group(acc, x_row, g, group0, ctr_t, stream, k0, k1, n, MASKED: tl.constexpr, F64: tl.constexpr):
    """acc += contributions of the 128 columns of local group g (one Philox call per t)."""
    w0, w1, w2, w3 = _sign_words(group0 + tl.cast(g, tl.uint32), ctr_t, stream, k0, k1)
    col = tl.cast(g, tl.int64) * 128
    acc = _project_word(acc, x_row, col, w0, n, MASKED, F64)
    acc = _project_word(acc, x_row, col + 32, w1, n, MASKED, F64)
    acc = _project_word(acc, x_row, col + 64, w2, n, MASKED, F64)
    acc = _project_word(acc, x_row, col + 96, w3, n, MASKED, F64)
    return acc


@triton.jit
def _reconstruct_word(acc, yv, word, F64: tl.constexpr):
    """acc[b, t] += S[t, b] * y[t] for the 32 bits b of `word`; yv, word: (BLOCK_T,)."""
    bit = tl.arange(0, 32)
    if F64:
        on = ((word[None, :] >> bit.to(tl.uint32)[:, None]) & 1) != 0
        acc += tl.where(on, yv[None, :], -yv[None, :])
    else:
        flip = ((~word)[None, :] << (31 - bit).to(tl.uint32)[:, None]) & _SIGN_BIT
        acc += (yv.to(tl.uint32, bitcast=True)[None, :] ^ flip).to(tl.float32, bitcast=True)
    return acc


@triton.jit
def _bf16_round(a):
    """a rounded to the nearest bf16 value (ties to even), returned as float32.

    Integer arithmetic on the bit pattern, so interpreter and GPU agree. Magnitudes that would
    round up to infinity (and Inf/NaN) are truncated instead, keeping Inf as Inf and NaN as NaN or
    Inf (the remainder then carries the NaN).
    """
    ab = a.to(tl.uint32, bitcast=True)
    nearest = (ab + (0x7FFF + ((ab >> 16) & 1))) & 0xFFFF0000
    huge = (ab & 0x7FFFFFFF) >= 0x7F7F8000
    return tl.where(huge, ab & 0xFFFF0000, nearest).to(tl.float32, bitcast=True)


@triton.jit
def _dot_bf16(a, b, acc, INTERPRET: tl.constexpr):
    """acc + a @ b for bf16-representable float32 a and b (b is +-1): exact products, fp32 sums."""
    if INTERPRET:
        return tl.dot(a, b, acc, input_precision="ieee")
    else:
        return tl.dot(a.to(tl.bfloat16), b.to(tl.bfloat16), acc)


@triton.jit
def _dot_terms(a, s, acc, TERMS: tl.constexpr, INTERPRET: tl.constexpr):
    """acc + a @ s with a split into TERMS bf16 pieces (hi, mid, lo); s is +-1 (exact in bf16)."""
    hi = _bf16_round(a)
    acc = _dot_bf16(hi, s, acc, INTERPRET)
    if TERMS >= 2:
        # Where hi == a (exact values, Inf) nothing is left; Inf - Inf would make a NaN.
        rest = tl.where(hi == a, 0.0, a - hi)
        mid = _bf16_round(rest)
        acc = _dot_bf16(mid, s, acc, INTERPRET)
        if TERMS >= 3:
            lo = _bf16_round(rest - mid)
            acc = _dot_bf16(lo, s, acc, INTERPRET)
    return acc


@triton.jit
def _sign_tile(w0, w1, word_index, bit):
    """+-1.0 (float32) tile: bit `bit` of word w0 (word_index 0) or w1 (word_index 1), broadcast together.

    The inverted bit lands on the sign of 1.0f (0x3F800000): one shift and one LOP3 per element.
    """
    word = tl.where(word_index == 0, w0, w1)
    return ((((~word) << (31 - bit)) & _SIGN_BIT) | 0x3F800000).to(tl.float32, bitcast=True)


@triton.jit
def _opening(pid, n_a, n_b, key0, key1, stream, t0, group0):
    """What every sign kernel starts with: the program id split into (a, b, c) for a grid of
    n_a * n_b * (...) programs, and the uint32 scalars (key words, stream, t0, first group)."""
    a = pid % n_a
    b = (pid // n_a) % n_b
    c = pid // (n_a * n_b)
    return a, b, c, key0.to(tl.uint32), key1.to(tl.uint32), stream.to(tl.uint32), t0.to(tl.uint32), \
        group0.to(tl.uint32)


# --------------------------------------------------------------------------- kernels


@triton.jit(do_not_specialize=["key0", "key1", "stream", "t0", "group0", "groups_per_split", "n_tblocks",
                               "n_splits"])
def _project_gemv_kernel(x_ptr, out_ptr, rows, n, k, key0, key1, stream, t0, group0, groups_per_split,
                         n_tblocks, n_splits, BLOCK_T: tl.constexpr, F64: tl.constexpr):
    """out[split, row, t] = sum over the split's columns j of x[row, j] * S[t, j].

    Grid: n_tblocks * n_splits * rows programs; a split owns `groups_per_split` groups of 128 columns.
    """
    tb, split, row, k0, k1, st, t0u, g0 = _opening(tl.program_id(0), n_tblocks, n_splits, key0, key1, stream, t0,
                                                   group0)
    t = tb * BLOCK_T + tl.arange(0, BLOCK_T)
    ctr_t = t0u + t.to(tl.uint32)

    n_groups = tl.cdiv(n, 128)
    g_begin = split * groups_per_split
    g_end = tl.minimum(g_begin + groups_per_split, n_groups)
    g_full = tl.maximum(tl.minimum(g_end, n // 128), g_begin)  # groups before g_full need no mask
    x_row = x_ptr + row.to(tl.int64) * n
    acc = tl.zeros((BLOCK_T,), dtype=tl.float64 if F64 else tl.float32)
    for g in range(g_begin, g_full):
        acc = _project_group(acc, x_row, g, g0, ctr_t, st, k0, k1, n, False, F64)
    for g in range(g_full, g_end):  # the last, partial group
        acc = _project_group(acc, x_row, g, g0, ctr_t, st, k0, k1, n, True, F64)
    out = out_ptr + (split * rows + row).to(tl.int64) * k
    tl.store(out + t, acc, mask=t < k)


@triton.jit(do_not_specialize=["key0", "key1", "stream", "t0", "group0", "rows_per_split", "n_groups", "n_splits"])
def _reconstruct_gemv_kernel(y_ptr, out_ptr, rows, n, k, scale, key0, key1, stream, t0, group0, rows_per_split,
                             n_groups, n_splits, BLOCK_T: tl.constexpr, F64: tl.constexpr):
    """out[split, row, j] = scale * sum over the split's rows t of y[row, t] * S[t, j], for 128 columns j.

    Grid: n_groups * n_splits * rows programs; a split owns `rows_per_split` rows t (a BLOCK_T multiple).
    """
    g, split, row, k0, k1, st, t0u, g0 = _opening(tl.program_id(0), n_groups, n_splits, key0, key1, stream, t0,
                                                  group0)
    group = g0 + tl.cast(g, tl.uint32)
    t_begin = split * rows_per_split
    t_end = tl.minimum(t_begin + rows_per_split, k)
    y_row = y_ptr + row.to(tl.int64) * k
    dtype = tl.float64 if F64 else tl.float32
    acc0 = tl.zeros((32, BLOCK_T), dtype=dtype)
    acc1 = tl.zeros((32, BLOCK_T), dtype=dtype)
    acc2 = tl.zeros((32, BLOCK_T), dtype=dtype)
    acc3 = tl.zeros((32, BLOCK_T), dtype=dtype)
    for tb in range(t_begin, t_end, BLOCK_T):
        t = tb + tl.arange(0, BLOCK_T)
        yv = tl.load(y_row + t, mask=t < t_end, other=0.0).to(dtype)
        w0, w1, w2, w3 = _sign_words(group, t0u + t.to(tl.uint32), st, k0, k1)
        acc0 = _reconstruct_word(acc0, yv, w0, F64)
        acc1 = _reconstruct_word(acc1, yv, w1, F64)
        acc2 = _reconstruct_word(acc2, yv, w2, F64)
        acc3 = _reconstruct_word(acc3, yv, w3, F64)
    col = tl.cast(g, tl.int64) * 128 + tl.arange(0, 32)
    out = out_ptr + (split * rows + row).to(tl.int64) * n
    tl.store(out + col, tl.sum(acc0, axis=1) * scale, mask=col < n)
    tl.store(out + col + 32, tl.sum(acc1, axis=1) * scale, mask=col + 32 < n)
    tl.store(out + col + 64, tl.sum(acc2, axis=1) * scale, mask=col + 64 < n)
    tl.store(out + col + 96, tl.sum(acc3, axis=1) * scale, mask=col + 96 < n)


@triton.jit(do_not_specialize=["key0", "key1", "stream", "t0", "group0", "groups_per_split", "n_mblocks",
                               "n_tblocks", "n_splits"])
def _project_gemm_kernel(x_ptr, out_ptr, rows, n, k, key0, key1, stream, t0, group0, groups_per_split, n_mblocks,
                         n_tblocks, n_splits, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, TERMS: tl.constexpr,
                         INTERPRET: tl.constexpr):
    """out[split, m, t] = sum over the split's columns j of x[m, j] * S[t, j], on tensor cores.

    Grid: n_mblocks * n_tblocks * n_splits programs; two (BLOCK_M, 64) x (64, BLOCK_N) dots per term
    and group of 128 columns.
    """
    mb, tb, split, k0, k1, st, t0u, g0 = _opening(tl.program_id(0), n_mblocks, n_tblocks, key0, key1, stream, t0,
                                                  group0)
    m = mb * BLOCK_M + tl.arange(0, BLOCK_M)
    t = tb * BLOCK_N + tl.arange(0, BLOCK_N)
    ctr_t = t0u + t.to(tl.uint32)
    jj = tl.arange(0, 64)
    word_index = (jj // 32)[:, None]
    bit = (jj % 32).to(tl.uint32)[:, None]

    n_groups = tl.cdiv(n, 128)
    g_begin = split * groups_per_split
    g_end = tl.minimum(g_begin + groups_per_split, n_groups)
    x_rows = x_ptr + m.to(tl.int64)[:, None] * n
    row_ok = (m < rows)[:, None]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for g in range(g_begin, g_end):
        w0, w1, w2, w3 = _sign_words(g0 + tl.cast(g, tl.uint32), ctr_t, st, k0, k1)
        # Two halves of 64 columns (words 0-1, then 2-3) keep the tiles within the registers.
        s = _sign_tile(w0[None, :], w1[None, :], word_index, bit)  # (64, BLOCK_N)
        j = tl.cast(g, tl.int64) * 128 + jj
        xt = tl.load(x_rows + j[None, :], mask=row_ok & (j < n)[None, :], other=0.0).to(tl.float32)
        acc = _dot_terms(xt, s, acc, TERMS, INTERPRET)
        s = _sign_tile(w2[None, :], w3[None, :], word_index, bit)
        xt = tl.load(x_rows + (j + 64)[None, :], mask=row_ok & (j + 64 < n)[None, :], other=0.0).to(tl.float32)
        acc = _dot_terms(xt, s, acc, TERMS, INTERPRET)
    out = out_ptr + (split * rows + m).to(tl.int64)[:, None] * k + t[None, :]
    tl.store(out, acc, mask=row_ok & (t < k)[None, :])


@triton.jit(do_not_specialize=["key0", "key1", "stream", "t0", "group0", "rows_per_split", "n_mblocks",
                               "n_groups", "n_splits"])
def _reconstruct_gemm_kernel(y_ptr, out_ptr, rows, n, k, scale, key0, key1, stream, t0, group0, rows_per_split,
                             n_mblocks, n_groups, n_splits, BLOCK_M: tl.constexpr, BLOCK_T: tl.constexpr,
                             TERMS: tl.constexpr, INTERPRET: tl.constexpr):
    """out[split, m, j] = scale * sum over the split's rows t of y[m, t] * S[t, j], on tensor cores.

    Grid: n_mblocks * n_groups * n_splits programs; a program owns 128 columns (one group) and
    runs two (BLOCK_M, BLOCK_T) x (BLOCK_T, 64) dots per term over each block of its rows t.
    """
    mb, g, split, k0, k1, st, t0u, g0 = _opening(tl.program_id(0), n_mblocks, n_groups, key0, key1, stream, t0,
                                                 group0)
    group = g0 + tl.cast(g, tl.uint32)
    m = mb * BLOCK_M + tl.arange(0, BLOCK_M)
    jj = tl.arange(0, 64)
    word_index = (jj // 32)[None, :]
    bit = (jj % 32).to(tl.uint32)[None, :]

    t_begin = split * rows_per_split
    t_end = tl.minimum(t_begin + rows_per_split, k)
    y_rows = y_ptr + m.to(tl.int64)[:, None] * k
    row_ok = (m < rows)[:, None]
    # Two accumulators of 64 columns each (words 0-1 and 2-3 of every Philox call).
    acc_a = tl.zeros((BLOCK_M, 64), dtype=tl.float32)
    acc_b = tl.zeros((BLOCK_M, 64), dtype=tl.float32)
    for tb in range(t_begin, t_end, BLOCK_T):
        t = tb + tl.arange(0, BLOCK_T)
        w0, w1, w2, w3 = _sign_words(group, t0u + t.to(tl.uint32), st, k0, k1)
        yt = tl.load(y_rows + t[None, :], mask=row_ok & (t < t_end)[None, :], other=0.0).to(tl.float32)
        s = _sign_tile(w0[:, None], w1[:, None], word_index, bit)  # (BLOCK_T, 64)
        acc_a = _dot_terms(yt, s, acc_a, TERMS, INTERPRET)
        s = _sign_tile(w2[:, None], w3[:, None], word_index, bit)
        acc_b = _dot_terms(yt, s, acc_b, TERMS, INTERPRET)
    col = tl.cast(g, tl.int64) * 128 + jj
    out = out_ptr + (split * rows + m).to(tl.int64)[:, None] * n + col[None, :]
    tl.store(out, acc_a * scale, mask=row_ok & (col < n)[None, :])
    tl.store(out + 64, acc_b * scale, mask=row_ok & (col + 64 < n)[None, :])


@triton.jit
def _sum_splits_kernel(part_ptr, out_ptr, size, n_splits, BLOCK: tl.constexpr):
    """out[i] = part[0, i] + part[1, i] + ... in that order (deterministic), for i < size."""
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = i < size
    acc = tl.load(part_ptr + i, mask=ok, other=0.0)
    for s in range(1, n_splits):
        acc += tl.load(part_ptr + tl.cast(s, tl.int64) * size + i, mask=ok, other=0.0)
    tl.store(out_ptr + i, acc, mask=ok)


# --------------------------------------------------------------------------- launch wrappers


def plan_project(rows: int, n: int, k: int, dtype: torch.dtype, device: torch.device,
                 precision: str = "highest") -> Plan:
    return launch_plan.plan(TILES, "project", rows, n, k, dtype, precision, device)


def plan_reconstruct(rows: int, n: int, k: int, dtype: torch.dtype, device: torch.device,
                     precision: str = "highest") -> Plan:
    return launch_plan.plan(TILES, "reconstruct", rows, n, k, dtype, precision, device)


def _padded(a: torch.Tensor) -> torch.Tensor:
    """a itself if its rows are aligned and a multiple of _PAD long, else a copy padded with zeros.

    Zero columns add +-0 to every sum, whatever signs their (otherwise unused) counters give.
    """
    if a.shape[1] % _PAD == 0 and a.data_ptr() % (_PAD * a.element_size()) == 0:
        return a
    return torch.nn.functional.pad(a, (0, -a.shape[1] % _PAD))


def _u32_arg(value: int) -> int:
    """A uint32 kernel scalar with bit 32 set: always an int64 argument, one compiled variant."""
    return (value & 0xFFFFFFFF) | (1 << 32)


def _check_input(a: torch.Tensor, name: str) -> None:
    if a.dim() != 2 or not a.is_contiguous():
        raise ValueError(f"{name} must be a contiguous 2-D tensor (rows, size), got shape {tuple(a.shape)}")
    if a.dtype not in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        raise TypeError(f"{name} must be float32, float64, float16 or bfloat16, got {a.dtype}")
    if a.device.type != "cuda" and not (_INTERPRET and a.device.type == "cpu"):
        raise ValueError(f"the triton backend takes CUDA tensors (CPU tensors only under TRITON_INTERPRET=1 "
                         f"set before stabkern.backends.triton.sign is imported); {name} is on {a.device}")


def _finish(part: torch.Tensor, out: torch.Tensor, splits: int) -> torch.Tensor:
    """Sum the `splits` partial results in `part` into `out` (fixed order)."""
    if splits > 1:
        size = out.numel()
        _sum_splits_kernel[(triton.cdiv(size, _REDUCE_BLOCK),)](part, out, size, splits, BLOCK=_REDUCE_BLOCK)
    return out


def _buffers(rows: int, cols: int, splits: int, dtype: torch.dtype, device: torch.device):
    out = torch.empty((rows, cols), dtype=dtype, device=device)
    part = out if splits == 1 else torch.empty((splits, rows, cols), dtype=dtype, device=device)
    return out, part


def project(x: torch.Tensor, k: int, seed: int, stream: int, t0: int, j0: int, precision: str,
            plan: Plan | None = None) -> torch.Tensor:
    """y = x @ S[t0:t0+k, j0:j0+n].T, equal to `backends.reference.project`. x: (rows, n) -> (rows, k).

    float32 out (float64 for float64 x). `plan` overrides the form and split (tests use it).
    """
    _check_input(x, "x")
    rows, n = x.shape
    terms = split_terms(precision, x.dtype)
    plan = plan or plan_project(rows, n, k, x.dtype, x.device, precision)
    f64 = x.dtype == torch.float64
    out, part = _buffers(rows, k, plan.splits, torch.float64 if f64 else torch.float32, x.device)
    x = _padded(x)
    n = x.shape[1]
    groups = triton.cdiv(n, 128)
    per_split = triton.cdiv(groups, plan.splits)
    keys = (_u32_arg(seed), _u32_arg(seed >> 32), _u32_arg(stream), _u32_arg(t0), _u32_arg(j0 >> 7))
    if plan.form == "gemv":
        block_t = TILES.project.gemv_out
        n_tblocks = triton.cdiv(k, block_t)
        grid = (n_tblocks * plan.splits * rows,)
        _project_gemv_kernel[grid](x, part, rows, n, k, *keys, per_split, n_tblocks, plan.splits,
                                   BLOCK_T=block_t, F64=f64, num_warps=4)
    elif plan.form == "gemm":
        if f64:
            raise ValueError("the GEMM form takes float32/float16/bfloat16 input; float64 runs in the GEMV form")
        block_m, block_n = TILES.project.block_rows(rows), TILES.project.gemm_out
        n_mblocks, n_tblocks = triton.cdiv(rows, block_m), triton.cdiv(k, block_n)
        grid = (n_mblocks * n_tblocks * plan.splits,)
        _project_gemm_kernel[grid](x, part, rows, n, k, *keys, per_split, n_mblocks, n_tblocks, plan.splits,
                                   BLOCK_M=block_m, BLOCK_N=block_n, TERMS=terms, INTERPRET=_INTERPRET,
                                   num_warps=8 if block_m >= 128 else 4, num_stages=3 if block_m > 16 else 2)
    else:
        raise ValueError(f"plan.form must be 'gemv' or 'gemm', got {plan.form!r}")
    return _finish(part, out, plan.splits)


def reconstruct(y: torch.Tensor, n: int, scale: float, seed: int, stream: int, t0: int, j0: int, precision: str,
                plan: Plan | None = None) -> torch.Tensor:
    """x_hat = scale * y @ S[t0:t0+k, j0:j0+n], equal to `backends.reference.reconstruct`. y: (rows, k) -> (rows, n).

    float32 out (float64 for float64 y; its scale is then applied in float64 after the kernel).
    """
    _check_input(y, "y")
    rows, k = y.shape
    terms = split_terms(precision, y.dtype)
    plan = plan or plan_reconstruct(rows, n, k, y.dtype, y.device, precision)
    f64 = y.dtype == torch.float64
    out, part = _buffers(rows, n, plan.splits, torch.float64 if f64 else torch.float32, y.device)
    y = _padded(y)
    k = y.shape[1]
    groups = triton.cdiv(n, 128)
    keys = (_u32_arg(seed), _u32_arg(seed >> 32), _u32_arg(stream), _u32_arg(t0), _u32_arg(j0 >> 7))
    kernel_scale = 1.0 if f64 else float(scale)  # Triton passes floats as float32
    if plan.form == "gemv":
        block_t = TILES.reconstruct.gemv_step
        per_split = triton.cdiv(triton.cdiv(k, block_t), plan.splits) * block_t
        grid = (groups * plan.splits * rows,)
        _reconstruct_gemv_kernel[grid](y, part, rows, n, k, kernel_scale, *keys, per_split, groups, plan.splits,
                                       BLOCK_T=block_t, F64=f64, num_warps=4)
    elif plan.form == "gemm":
        if f64:
            raise ValueError("the GEMM form takes float32/float16/bfloat16 input; float64 runs in the GEMV form")
        block_m, block_t = TILES.reconstruct.block_rows(rows), TILES.reconstruct.block_step(rows)
        n_mblocks = triton.cdiv(rows, block_m)
        per_split = triton.cdiv(triton.cdiv(k, block_t), plan.splits) * block_t
        grid = (n_mblocks * groups * plan.splits,)
        _reconstruct_gemm_kernel[grid](y, part, rows, n, k, kernel_scale, *keys, per_split, n_mblocks, groups,
                                       plan.splits, BLOCK_M=block_m, BLOCK_T=block_t, TERMS=terms,
                                       INTERPRET=_INTERPRET, num_warps=8 if block_m >= 128 else 4, num_stages=2)
    else:
        raise ValueError(f"plan.form must be 'gemv' or 'gemm', got {plan.form!r}")
    out = _finish(part, out, plan.splits)
    if f64 and scale != 1.0:
        out.mul_(scale)
    return out
