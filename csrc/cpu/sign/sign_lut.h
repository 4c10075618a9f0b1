// The GEMM form by table loads ("lut" kernel family, float32; the per-ISA pieces are Avx2Lut and
// Avx2Lut16 in sign_kernels_avx2.h, Avx512Lut in sign_kernels_avx512.h): for every quad of the
// reduction axis and every block of 8 or 16 rows of a, the 16 signed sums of the quad's 4 values
// are tabulated once; each output then adds, per quad, the entry its 4 signs select (one load and
// one add for 32 sign-MACs per 8 rows). sign_kernels.cpp chooses it (family(), lut16() there).
//
// Both directions are one product out[r, c] = scale * sum_p a[r, p] B[p, c], as in sign_gemm.h:
//   projection      a = x (rows, n), p = column j, c = row t:  B[j, t] = S[t0 + t, j0 + j], scale 1
//   reconstruction  a = y (rows, k), p = row t,    c = column j: B[t, j] = S[t0 + t, j0 + j]
// Summation order (fixed: bitwise identical for any thread count, no atomics): the p axis is cut
// into chunks of 128 (kLutChunk); within a chunk out[r, c] is ONE fp32 chain starting at 0 that adds,
// in quad order, the table entry ((+-a[p] +-a[p+1]) +-a[p+2]) +-a[p+3] of each quad (values past
// the end of the axis are 0); the chunk partials are added in double in chunk order, times scale in
// double, rounded once. Per chunk that is at most 32 chain additions of entries of 3 additions each.
//
// Blocking: a unit is (panel of 128 rows of a, block of L::kBlockCols output columns c); each output
// belongs to one unit, so threads take whole units (OpenMP, dynamic). Per chunk the unit's sign
// words become byte selectors (32 quads x the block's columns, shared by all rows of the panel);
// then per block of L::kW rows the table is built and swept by every column of the block. Sizes,
// to stay in L1: Avx2Lut 8 rows, 256 columns: tables 16 KiB + selectors 8 KiB (a 32 KiB L1);
// Avx2Lut16 and Avx512Lut 16 rows, 512 columns: 32 + 16 KiB (a 48 KiB L1; 256 columns were 8%
// slower for Avx512Lut, and 512 columns 3% faster for Avx2Lut, on this 48 KiB machine).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "kernel_contract.h"
#include "sign_kernels.h"

namespace stabkern::cpu {

constexpr int kLutChunk = kGroupCols;  // p per fp32 chain: one Philox group of columns, or 128 rows of S
constexpr int kLutPanelRows = 128;     // rows of a per unit

// out (rows, C) = T(scale * a (rows, P) B), B as above; project selects which of the two B's.
template <class L>
void lut_run(const float* a, float* out, int64_t rows, int64_t P, int64_t C, double scale, bool project,
             const SignKey& key, const SketchArgs& args, int threads) {
  using Words = typename L::Words;
  constexpr int W = L::kW, WL = Words::kLanes, NB = L::kBlockCols, PR = kLutPanelRows, NQ = kLutChunk / 4;
  static_assert(NB % kGroupCols == 0 && NB % L::kCT == 0 && NB % WL == 0 && PR % W == 0,
                "whole groups, passes and row blocks");
  static_assert(kLutChunk == kGroupCols && kLutChunk % Words::kLanes == 0, "a chunk is one group of columns or whole row groups of S");
  constexpr int64_t wstride = int64_t(kLutChunk) * 4;  // words of one column group for 128 rows of S
  const int64_t cblocks = (C + NB - 1) / NB, panels = (rows + PR - 1) / PR;
  const uint32_t group0 = uint32_t(args.j0 / kGroupCols);
#pragma omp parallel num_threads(threads)
  {
    Scratch<uint32_t> words(size_t(4) * std::max(NB, kLutChunk));  // NB rows x 4 words, or NB / 128 groups x 128 rows x 4
    Scratch<uint8_t> idx(size_t(NQ) * NB);
    Scratch<float> tab(size_t(NQ) * 16 * W), pad(size_t(W) * kLutChunk);
    Scratch<double> acc(size_t(PR) * NB);
#pragma omp for schedule(dynamic, 1)
    for (int64_t u = 0; u < panels * cblocks; ++u) {
      const int64_t r0 = (u / cblocks) * PR, c0 = (u % cblocks) * NB;
      const int nr = int(std::min<int64_t>(PR, rows - r0)), nc = int(std::min<int64_t>(NB, C - c0));
      const int ncp = (nc + L::kCT - 1) / L::kCT * L::kCT;  // columns swept: whole passes
      const int rblocks = (nr + W - 1) / W;
      std::fill(acc.data(), acc.data() + size_t(rblocks) * W * NB, 0.0);
      for (int64_t p0 = 0; p0 < P; p0 += kLutChunk) {
        const int np = int(std::min<int64_t>(kLutChunk, P - p0)), nq = (np + 3) / 4;
        if (project) {  // rows t0 + c0 ... of S (rows past k are computed, never written), one column group
          const int ntg = (nc + WL - 1) / WL;
          Words::words(key, uint32_t(args.t0 + uint64_t(c0)), ntg, group0 + uint32_t(p0 / kGroupCols), words.data());
          L::index_rows(words.data(), ntg, idx.data(), NB);
          if (ncp > ntg * WL)
            for (int q = 0; q < NQ; ++q) std::memset(idx.data() + q * NB + ntg * WL, 0, size_t(ncp - ntg * WL));
        } else {  // rows t0 + p0 ... of S, the column groups of the block
          const int ng = (nc + kGroupCols - 1) / kGroupCols;
          for (int i = 0; i < ng; ++i)
            Words::words(key, uint32_t(args.t0 + uint64_t(p0)), (np + WL - 1) / WL,
                         group0 + uint32_t(c0 / kGroupCols + i), words.data() + i * wstride);
          L::index_cols(words.data(), wstride, ng, nq, idx.data(), NB);
          if (ncp > ng * kGroupCols)
            for (int q = 0; q < nq; ++q) std::memset(idx.data() + q * NB + ng * kGroupCols, 0, size_t(ncp - ng * kGroupCols));
        }
        for (int b = 0; b < rblocks; ++b) {
          const int64_t rb = r0 + int64_t(b) * W;
          const int mr = int(std::min<int64_t>(W, rows - rb));
          const float* src = a + rb * P + p0;
          int64_t lda = P;
          if (mr < W || np < kLutChunk) {  // zero padded: zeros add nothing
            std::fill(pad.data(), pad.data() + size_t(W) * kLutChunk, 0.0f);
            for (int r = 0; r < mr; ++r) std::copy(src + r * P, src + r * P + np, pad.data() + r * kLutChunk);
            src = pad.data();
            lda = kLutChunk;
          }
          L::tables(src, lda, tab.data());
          L::lookups(tab.data(), idx.data(), NB, nq, ncp, acc.data() + size_t(b) * W * NB);
        }
      }
      for (int b = 0; b < rblocks; ++b) {
        const double* d = acc.data() + size_t(b) * W * NB;
        const int mr = int(std::min<int64_t>(W, nr - b * W));
        for (int r = 0; r < mr; ++r) {
          float* o = out + (r0 + b * W + r) * C + c0;
          for (int c = 0; c < nc; ++c) o[c] = float(scale * d[c * W + r]);
        }
      }
    }
  }
}

}  // namespace stabkern::cpu
