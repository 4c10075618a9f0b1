// The GEMM form of the float32 CPU sign kernels (many rows of x or y, AVX2 and AVX-512 paths): every
// tile of S is expanded ONCE into +-1.0f and an FMA micro-kernel runs over all rows sharing it, so
// the work is bounded by FMA throughput, not by sign generation or table lookups. The per-ISA
// pieces (expansion and micro-kernel) are Avx2Gemm and Avx512Gemm in sign_kernels_avx2.h and
// sign_kernels_avx512.h; this file is the blocking, work split and summation order. Not used for
// float64, for the generic path, or for few rows (sign_kernels.cpp chooses; kernel_contract.h).
//
// Both directions are one product out[r, c] = scale * sum_p a[r, p] B[p, c]:
//   projection      a = x (rows, n), p = column j, c = row t:  B[j, t] = S[t0 + t, j0 + j], scale 1
//   reconstruction  a = y (rows, k), p = row t,    c = column j: B[t, j] = S[t0 + t, j0 + j]
// Summation order (fixed: bitwise identical for any thread count, no atomics): the p axis is cut
// into chunks of 128 (kGemmChunk); within a chunk out[r, c] is ONE fp32 chain starting at 0 that
// adds a[r, p] * B[p, c] in p order (an fma by +-1 rounds exactly like the add it stands for);
// the chunk partials are added in double in chunk order, times scale in double, rounded once.
//
// Blocking: a unit is (panel of 128 rows of a, block of 256 output columns c). For each chunk the
// unit's 128 x 256 tile of B (128 KiB) is generated and expanded once; the micro-kernel then sweeps
// strips of the tile (kStrip columns, 16-32 KiB: L1) over all rows of the panel, kMR rows at a
// time. Each output belongs to one unit, so threads take whole units (OpenMP, dynamic).
#pragma once

#include <algorithm>
#include <cstdint>

#include "kernel_contract.h"
#include "sign_kernels.h"

namespace stabkern::cpu {

constexpr int kGemmChunk = kGroupCols;  // p per fp32 chain: one Philox group of columns, or 128 rows of S
constexpr int kGemmPanelRows = 128;     // rows of a per unit
constexpr int kGemmBlockCols = 256;     // output columns per unit (a multiple of kGroupCols and of kStrip)

// micro<R> for the R = rows left in the panel (1..kMR), chosen at run time.
template <class G, int R = G::kMR>
void gemm_micro(int rows, const float* a, int64_t lda, const float* bp, int np, double* acc, int64_t ldacc) {
  if constexpr (R > 1) {
    if (rows < R) return gemm_micro<G, R - 1>(rows, a, lda, bp, np, acc, ldacc);
  }
  G::template micro<R>(a, lda, bp, np, acc, ldacc);
}

// out (rows, C) = T(scale * a (rows, P) B), B as above; project selects which of the two B's.
template <class G>
void gemm_run(const float* a, float* out, int64_t rows, int64_t P, int64_t C, double scale, bool project,
              const SignKey& key, const SketchArgs& args, int threads) {
  using Words = typename G::Words;
  constexpr int W = G::kW, NB = kGemmBlockCols, PR = kGemmPanelRows;
  static_assert(NB % G::kStrip == 0 && NB % kGroupCols == 0 && kGroupCols % G::kStrip == 0, "whole strips");
  static_assert(kGemmChunk % W == 0, "a chunk of rows of S is whole Philox row groups");
  constexpr int64_t wstride = int64_t(kGemmChunk) * 4;  // words of one column group for 128 rows of S
  const int64_t cblocks = (C + NB - 1) / NB, panels = (rows + PR - 1) / PR;
  const uint32_t group0 = uint32_t(args.j0 / kGroupCols);
#pragma omp parallel num_threads(threads)
  {
    Scratch<uint32_t> words(size_t(4) * NB);
    Scratch<float> bp(size_t(kGemmChunk) * NB);
    Scratch<double> acc(size_t(PR) * NB);
#pragma omp for schedule(dynamic, 1)
    for (int64_t u = 0; u < panels * cblocks; ++u) {
      const int64_t r0 = (u / cblocks) * PR, c0 = (u % cblocks) * NB;
      const int nr = int(std::min<int64_t>(PR, rows - r0)), nc = int(std::min<int64_t>(NB, C - c0));
      const int strips = (nc + G::kStrip - 1) / G::kStrip;
      std::fill(acc.data(), acc.data() + size_t(nr) * NB, 0.0);
      for (int64_t p0 = 0; p0 < P; p0 += kGemmChunk) {
        const int np = int(std::min<int64_t>(kGemmChunk, P - p0));
        if (project) {  // rows t0 + c0 ... of S (whole strips; rows past k are never written), one column group
          Words::words(key, uint32_t(args.t0 + uint64_t(c0)), strips * G::kNV, group0 + uint32_t(p0 / kGroupCols),
                       words.data());
          G::expand_rows(words.data(), strips, bp.data());
        } else {  // rows t0 + p0 ... of S, the column groups of the block
          const int ng = (nc + kGroupCols - 1) / kGroupCols;
          for (int i = 0; i < ng; ++i)
            Words::words(key, uint32_t(args.t0 + uint64_t(p0)), (np + W - 1) / W,
                         group0 + uint32_t(c0 / kGroupCols + i), words.data() + i * wstride);
          G::expand_cols(words.data(), wstride, ng, np, bp.data());
        }
        for (int s = 0; s < strips; ++s)
          for (int r = 0; r < nr; r += G::kMR)
            gemm_micro<G>(std::min(G::kMR, nr - r), a + (r0 + r) * P + p0, P,
                          bp.data() + size_t(s) * kGemmChunk * G::kStrip, np, acc.data() + size_t(r) * NB + s * G::kStrip,
                          NB);
      }
      for (int r = 0; r < nr; ++r)
        for (int c = 0; c < nc; ++c) out[(r0 + r) * C + c0 + c] = float(scale * acc.data()[size_t(r) * NB + c]);
    }
  }
}

}  // namespace stabkern::cpu
