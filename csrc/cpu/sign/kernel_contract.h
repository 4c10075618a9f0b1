// The contract between the drivers in sign_kernels.cpp and each instruction-set kernel
// (sign_kernels_generic.h, sign_kernels_avx2.h, sign_kernels_avx512.h): data layouts, and the
// summation order every kernel must follow so that results do not depend on threads or tiling.
//
// A kernel K is a struct with:
//   using T;               element type (float; double only in the generic kernel)
//   kLanes                 rows of S handled together (the Philox call is vectorized across them)
//   kTable                 table entries per row of x per 128-column group (see tables())
//   words(key, t, ntg, group, out)
//       out[(g * 4 + q) * kLanes + l] = word q of sign_bits(seed, stream, t + g * kLanes + l, group)
//       for g < ntg. Rows past the end of S wrap modulo 2^32 and are computed but never used.
//   tables(x, tab)         x: 128 columns of one row of x (zero padded past n) -> tab: kTable values,
//       signed sums of a few consecutive columns for every sign pattern of them.
//   project(tab, R, words, ntg, part, ldp)
//       part[r * ldp + t] += sum_j S[t, j] x[r, j] over the group's 128 columns, for r < R <= 8 (tab
//       rows kTable apart) and t < ntg * kLanes. Each (r, t) is ONE chain: part + e_0 + e_1 + ...
//       with e_i the table entry of the i-th column pattern, in column order.
//   reconstruct(y, ldy, R, words, ng, kt, part, ldp)
//       part[r * ldp + 128 * i + j] += sum_t S[t, j] y[r * ldy + t] for the ng groups i (their words
//       kMaxChunkRows * 4 apart), j < 128, t < kt <= kMaxChunkRows, r < R <= 8. Each (r, j) is ONE
//       chain in increasing t, adding either +-y[t] (exact) or, in kernels that tabulate y, the
//       signed sum of 4 consecutive rows ((+-y0 +-y1) +-y2) +-y3; each kernel always does the same.
//
// The GEMM-form FMA kernels (Avx2Gemm, Avx512Gemm; driver and blocking in sign_gemm.h) share only
// words() and the row-group layout above. Their order: the reduction axis (columns of x, or rows of
// S) in chunks of 128; per chunk one fp32 chain from 0 adding +-1 * a[p] by fma in p order (<= 128
// roundings, each like an addition); the chunk partials added in double in order. Both FMA kernels
// follow it exactly, so AVX2 and AVX-512 give the same bits.
//
// The GEMM-form LUT kernels (Avx2Lut, Avx2Lut16, Avx512Lut; driver and blocking in sign_lut.h)
// share words() too; all three compute the same entries and chains, so they give the same bits. Their
// order: the reduction axis in chunks of 128; per chunk one fp32 chain from 0 adding, in quad
// order, the entry ((+-a[p] +-a[p+1]) +-a[p+2]) +-a[p+3] of each quad of 4 (<= 32 chain additions
// of entries of 3 additions each, values past the end of the axis 0); the chunk partials added in
// double in order within spans of 64 chunks, the span sums in double in order. Which family a call
// takes: family() in sign_kernels.cpp.
#pragma once

#include <cstddef>
#include <cstdint>
#include <new>

namespace stabkern::cpu {

constexpr int kGroupCols = 128;      // columns of S per Philox call
constexpr int kMaxTileRows = 8;      // rows of x (or y) per project()/reconstruct() call
constexpr int kMaxChunkRows = 256;   // rows of S per reconstruct() call

struct SignKey {
  uint32_t k0, k1;  // Philox key: seed low and high words
  uint32_t stream;
};

// A 64-byte aligned array (full cache lines for the SIMD tables); no value initialization.
template <typename T>
class Scratch {
 public:
  explicit Scratch(size_t count)
      : data_(static_cast<T*>(::operator new[]((count > 0 ? count : 1) * sizeof(T), std::align_val_t(64)))) {}
  ~Scratch() { ::operator delete[](data_, std::align_val_t(64)); }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  T* data() const { return data_; }

 private:
  T* data_;
};

}  // namespace stabkern::cpu
