// Where every value of the tensor-core sign kernels lives: mma.m16n8k16 fragment ownership, the
// permutation of the reduction axis that lets a thread build its +-1 operand from its own Philox
// words, the bf16 split of the other operand, and the output position of each accumulator.
//
// These are __host__ __device__ so that the kernels (gemm.cu) and the host emulation of a warp
// (bindings.cpp, `emulate_mma`, run by the tests on machines without a GPU) share one definition.
//
// mma.sync.m16n8k16 .bf16, fp32 accumulate (PTX ISA, "Matrix Fragments for mma.m16n8k16"), with
// lane = 4 g + q (g = groupID 0..7, q = threadID_in_group 0..3):
//   A (16 x 16):  a0 = A[g][2q, 2q+1]  a1 = A[g+8][2q, 2q+1]  a2 = A[g][2q+8, 2q+9]  a3 = A[g+8][2q+8, 2q+9]
//   B (16 x 8):   b0 = B[2q, 2q+1][g]  b1 = B[2q+8, 2q+9][g]
//   C (16 x 8):   c0 = C[g][2q]  c1 = C[g][2q+1]  c2 = C[g+8][2q]  c3 = C[g+8][2q+1]
// The lower k of a register pair is its low 16 bits. A thread owns the same four k "slots" in A and
// B: slot e = 0..3 is k = 2q, 2q+1, 2q+8, 2q+9. Any bijection from (step, q, e) to the reduction
// index is allowed as long as A and B use the same one; the kernels choose it so that a +-1 pair
// comes out of one Philox word with one shift and one LOP3.
#pragma once

#include <cstdint>

#include "common/philox.h"

namespace stabkern::frag {

struct U32x4 {
  uint32_t r[4];
};

// k (0..15) of a thread's slot e within one m16n8k16 step.
STABKERN_HD int k_of_slot(int q, int e) { return 2 * q + (e & 1) + 8 * (e >> 1); }

// A bf16 pair of +-1: bit i of `word` in the low half, bit i + 16 in the high half (i in 0..15);
// a set bit is +1 (0x3F80), a clear one -1 (0xBF80). On the GPU the and-not/or is one LOP3 (lut
// 0xAE = (~a & b) | c); written in C++, the compiler emits two because both constants are immediates.
STABKERN_HD uint32_t sign_pair(uint32_t word, int i) {
#if defined(__CUDA_ARCH__)
  uint32_t r;
  asm("lop3.b32 %0, %1, %2, %3, 0xAE;" : "=r"(r) : "r"(word << (15 - i)), "r"(0x80008000u), "r"(0x3F803F80u));
  return r;
#else
  return ((~word << (15 - i)) & 0x80008000u) | 0x3F803F80u;
#endif
}

// ---------------------------------------------------------------- projection: y = x S^T
// M = rows of x, N = t (rows of S), K = j (columns of S). B = S^T is generated in registers.
// K is walked in superblocks of 512 columns = 4 groups of 128 (32 steps of 16). In superblock sb,
// the thread with index q reads only group 4 sb + q, whose Philox call for its row t it makes once:
// at step s (0..31) its slots are bits i, i + 16, i + 1, i + 17 (i = 2 (s & 7)) of word s >> 3, so
// b0 = sign_pair(word, i) and b1 = sign_pair(word, i + 1). All 128 bits are used over the 32 steps.

// Column (0-based within the call) of slot e of thread q at global step S.
STABKERN_HD int64_t project_col(int64_t S, int q, int e) {
  const int64_t group = 4 * (S >> 5) + q;
  const int s = int(S & 31);
  const int bit = 2 * (s & 7) + (e >> 1) + 16 * (e & 1);
  return 128 * group + 32 * (s >> 3) + bit;
}

// The two B registers of step s (0..31) from the 4 words of the thread's row t and group.
STABKERN_HD void project_b(const uint32_t (&words)[4], int s, uint32_t& b0, uint32_t& b1) {
  const uint32_t w = words[s >> 3];
  const int i = 2 * (s & 7);
  b0 = sign_pair(w, i);
  b1 = sign_pair(w, i + 1);
}

// ---------------------------------------------------------------- reconstruction: out = y S
// M = rows of y, N = j (columns of S), K = t (rows of S, in natural order: step S covers
// t = 16 S .. 16 S + 15). A warp owns 128 columns (one group G) as 16 n-tiles and walks t in chunks
// of 32 (two steps). The chunk's 32 rows t are 8 "slots" p per q: slot p = e + 4 s. Lane (g, q)
// makes the one Philox call of slot p = g; the warp exchanges words through shared memory so that
// lane (g, q) gets, for every slot, the 16 bits of columns 16 g .. 16 g + 15 (half g & 1 of word
// g >> 1). Pairs of slots are merged into one register (slot 2m in the low half, 2m + 1 in the high
// half), and n-tile nt's B registers are sign_pair(merged, nt): B's n index g is column 16 g + nt.

// Row t (within the chunk of 32) of slot p (0..7) of thread q.
STABKERN_HD int recon_slot_t(int q, int p) { return 16 * (p >> 2) + k_of_slot(q, p & 3); }

// Byte permute (PRMT / __byte_perm): bytes 0-3 of x, 4-7 of y, selector nibbles pick result bytes.
STABKERN_HD uint32_t byte_perm(uint32_t x, uint32_t y, uint32_t selector) {
#if defined(__CUDA_ARCH__)
  return __byte_perm(x, y, selector);
#else
  const uint64_t bytes = (uint64_t(y) << 32) | x;
  uint32_t r = 0;
  for (int i = 0; i < 4; ++i) r |= uint32_t((bytes >> (8 * ((selector >> (4 * i)) & 7))) & 0xFF) << (8 * i);
  return r;
#endif
}

// Half `half` (0: low, 1: high) of word `lo_slot` in the low 16 bits, of `hi_slot` in the high 16.
STABKERN_HD uint32_t recon_merge(uint32_t lo_slot, uint32_t hi_slot, int half) {
  return byte_perm(lo_slot, hi_slot, half ? 0x7632u : 0x5410u);
}

// Column (within the warp's group of 128) of accumulator c (0..3) of thread q in n-tile nt:
// C's n index 2q + (c & 1) is column 16 n + nt.
STABKERN_HD int recon_out_col(int q, int nt, int c) { return 16 * (2 * q + (c & 1)) + nt; }

// ---------------------------------------------------------------- the bf16 split of the A operand

// Round to the nearest bf16 (ties to even) on the bit pattern, as float32 bits. Magnitudes that would
// round up to infinity, and Inf/NaN, are truncated instead (Inf stays Inf, NaN stays NaN or becomes
// Inf, and then the remainder carries the NaN). Same rule as stabkern/triton_sign.py.
STABKERN_HD uint32_t bf16_round_bits(uint32_t f) {
  if ((f & 0x7FFFFFFFu) >= 0x7F7F8000u) return f & 0xFFFF0000u;
  return (f + 0x7FFFu + ((f >> 16) & 1u)) & 0xFFFF0000u;
}

STABKERN_HD uint32_t float_bits(float v) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(v);
#else
  uint32_t b;
  __builtin_memcpy(&b, &v, 4);
  return b;
#endif
}

STABKERN_HD float bits_float(uint32_t b) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(b);
#else
  float v;
  __builtin_memcpy(&v, &b, 4);
  return v;
#endif
}

// The bf16 bit patterns (low 16 bits) of the three terms of v: v = hi + mid + lo exactly for float32
// v; with fewer terms the rest is dropped.
STABKERN_HD void bf16_terms(float v, uint32_t (&t)[3]) {
  const uint32_t hi = bf16_round_bits(float_bits(v));
  const float hv = bits_float(hi);
  const float rest = (hv == v) ? 0.0f : v - hv;  // exact; Inf - Inf would make a NaN
  const uint32_t mid = bf16_round_bits(float_bits(rest));
  t[0] = hi >> 16;
  t[1] = mid >> 16;
  t[2] = bf16_round_bits(float_bits(rest - bits_float(mid))) >> 16;
}

// Term `term` of v as a float32 value (exactly a bf16): the operand entry of a "stacked" row. With
// few rows, the kernels stack the terms as rows of the 16-row tile (row r * terms + term) instead
// of running one mma per term, and the sum over the stacked rows happens after the kernel.
STABKERN_HD float term_value(float v, int term) {
  uint32_t t[3];
  bf16_terms(v, t);
  return bits_float((term == 0 ? t[0] : term == 1 ? t[1] : t[2]) << 16);  // no run-time array index
}

// Input pieces stacked as rows of the packed operand: `terms` when rows * terms fits one m-tile.
STABKERN_HD int stack_of(int64_t rows, int terms) { return (terms > 1 && rows * terms <= 16) ? terms : 1; }

// The A fragments (a0..a3) of terms 0 .. terms-1 for m-tile mt, global step S and lane, read from
// a (rows x cols) row-major matrix through `load(row, col)` (which returns 0 outside it);
// `col_of(S, q, e)` is the slot-to-column map of the operation (project_col, or 16 S + k_of_slot
// for reconstruction).
template <typename Load, typename ColOf>
STABKERN_HD void pack_a(const Load& load, const ColOf& col_of, int64_t mt, int64_t S, int lane, int terms,
                        U32x4 (&a)[3]) {
  const int g = lane >> 2, q = lane & 3;
  for (int half = 0; half < 2; ++half) {    // a0/a1: slots 0, 1; a2/a3: slots 2, 3
    for (int up = 0; up < 2; ++up) {        // a0/a2: row g; a1/a3: row g + 8
      const int64_t row = 16 * mt + g + 8 * up;
      uint32_t lo[3], hi[3];
      bf16_terms(load(row, col_of(S, q, 2 * half)), lo);
      bf16_terms(load(row, col_of(S, q, 2 * half + 1)), hi);
      for (int term = 0; term < 3; ++term) {  // constant trip count: registers, not local memory
        if (term < terms) a[term].r[2 * half + up] = lo[term] | (hi[term] << 16);
      }
    }
  }
}

// Index (in U32x4 units) of the packed A fragment: [mt][S][term][lane].
STABKERN_HD int64_t packed_index(int64_t mt, int64_t S, int term, int lane, int64_t steps, int terms) {
  return ((mt * steps + S) * terms + term) * 32 + lane;
}

}  // namespace stabkern::frag
