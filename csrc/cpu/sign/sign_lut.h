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
// The chunk partials are added in spans of 64 chunks (8192 p), the span sums in span order, all in
// double (for P <= 8192, one span: plain chunk order). With few units and several spans (a long
// reduction axis, few rows or output columns) threads take (unit, span) tasks instead of whole
// units, buffering span sums a wave at a time: the same additions either way.
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

constexpr int64_t kLutSpanChunks = 64;             // chunk partials per double span sum (8192 p)
constexpr int64_t kLutWaveBytes = int64_t(1) << 22;  // span sums buffered per wave (few units)

// One thread's scratch and the sum of one span of chunks for one unit (sign_lut.h's blocking).
template <class L>
class LutUnit {
 public:
  using Words = typename L::Words;
  static constexpr int W = L::kW, WL = Words::kLanes, NB = L::kBlockCols, PR = kLutPanelRows, NQ = kLutChunk / 4;
  static_assert(NB % kGroupCols == 0 && NB % L::kCT == 0 && NB % WL == 0 && PR % W == 0,
                "whole groups, passes and row blocks");
  static_assert(kLutChunk == kGroupCols && kLutChunk % WL == 0, "a chunk is one group of columns or whole row groups of S");
  static constexpr int64_t kWStride = int64_t(kLutChunk) * 4;  // words of one column group for 128 rows of S

  LutUnit(const float* a, int64_t rows, int64_t P, int64_t C, bool project, const SignKey& key, const SketchArgs& args)
      : a_(a), rows_(rows), P_(P), C_(C), project_(project), key_(key), args_(args),
        cblocks_((C + NB - 1) / NB),
        words_(size_t(4) * std::max(NB, kLutChunk)),  // NB rows x 4 words, or NB / 128 groups x 128 rows x 4
        idx_(size_t(NQ) * NB), tab_(size_t(NQ) * 16 * W), pad_(size_t(W) * kLutChunk) {}

  int64_t units() const { return (rows_ + PR - 1) / PR * cblocks_; }
  int64_t r0(int64_t u) const { return (u / cblocks_) * PR; }
  int64_t c0(int64_t u) const { return (u % cblocks_) * NB; }
  int nr(int64_t u) const { return int(std::min<int64_t>(PR, rows_ - r0(u))); }
  int nc(int64_t u) const { return int(std::min<int64_t>(NB, C_ - c0(u))); }
  static size_t cells() { return size_t(PR) * NB; }

  // d[b * W * NB + c * W + r] (row r0 + b W + r, column c0 + c) = the double sum, in chunk order, of
  // the fp32 chunk partials of span s (chunks 64 s ..) of unit u.
  void span(int64_t u, int64_t s, double* d) {
    const int64_t r0 = this->r0(u), c0 = this->c0(u);
    const int nc = this->nc(u), ncp = (nc + L::kCT - 1) / L::kCT * L::kCT;  // columns swept: whole passes
    const int rblocks = (nr(u) + W - 1) / W;
    const uint32_t group0 = uint32_t(args_.j0 / kGroupCols);
    std::fill(d, d + size_t(rblocks) * W * NB, 0.0);
    const int64_t p_end = std::min(P_, (s + 1) * kLutSpanChunks * kLutChunk);
    for (int64_t p0 = s * kLutSpanChunks * kLutChunk; p0 < p_end; p0 += kLutChunk) {
      const int np = int(std::min<int64_t>(kLutChunk, P_ - p0)), nq = (np + 3) / 4;
      uint8_t* idx = idx_.data();
      if (project_) {  // rows t0 + c0 ... of S (rows past k are computed, never written), one column group
        const int ntg = (nc + WL - 1) / WL;
        Words::words(key_, uint32_t(args_.t0 + uint64_t(c0)), ntg, group0 + uint32_t(p0 / kGroupCols), words_.data());
        L::index_rows(words_.data(), ntg, idx, NB);
        if (ncp > ntg * WL)
          for (int q = 0; q < NQ; ++q) std::memset(idx + q * NB + ntg * WL, 0, size_t(ncp - ntg * WL));
      } else {  // rows t0 + p0 ... of S, the column groups of the block
        const int ng = (nc + kGroupCols - 1) / kGroupCols;
        for (int i = 0; i < ng; ++i)
          Words::words(key_, uint32_t(args_.t0 + uint64_t(p0)), (np + WL - 1) / WL,
                       group0 + uint32_t(c0 / kGroupCols + i), words_.data() + i * kWStride);
        L::index_cols(words_.data(), kWStride, ng, nq, idx, NB);
        if (ncp > ng * kGroupCols)
          for (int q = 0; q < nq; ++q) std::memset(idx + q * NB + ng * kGroupCols, 0, size_t(ncp - ng * kGroupCols));
      }
      for (int b = 0; b < rblocks; ++b) {
        const int64_t rb = r0 + int64_t(b) * W;
        const int mr = int(std::min<int64_t>(W, rows_ - rb));
        const float* src = a_ + rb * P_ + p0;
        int64_t lda = P_;
        if (mr < W || np < kLutChunk) {  // zero padded: zeros add nothing
          std::fill(pad_.data(), pad_.data() + size_t(W) * kLutChunk, 0.0f);
          for (int r = 0; r < mr; ++r) std::copy(src + r * P_, src + r * P_ + np, pad_.data() + r * kLutChunk);
          src = pad_.data();
          lda = kLutChunk;
        }
        L::tables(src, lda, tab_.data());
        L::lookups(tab_.data(), idx, NB, nq, ncp, d + size_t(b) * W * NB);
      }
    }
  }

  // f(row, column, value) for every output of unit u in d (the layout of span()).
  template <class F>
  void each(int64_t u, const double* d, F f) const {
    const int nr = this->nr(u), nc = this->nc(u);
    for (int b = 0; b * W < nr; ++b) {
      const double* db = d + size_t(b) * W * NB;
      for (int r = 0; r < std::min(W, nr - b * W); ++r)
        for (int c = 0; c < nc; ++c) f(r0(u) + b * W + r, c0(u) + c, db[c * W + r]);
    }
  }

 private:
  const float* a_;
  int64_t rows_, P_, C_;
  bool project_;
  SignKey key_;
  const SketchArgs& args_;
  int64_t cblocks_;
  Scratch<uint32_t> words_;
  Scratch<uint8_t> idx_;
  Scratch<float> tab_, pad_;
};

// out (rows, C) = T(scale * a (rows, P) B), B as above; project selects which of the two B's.
// Order: chunk partials added in double in chunk order within spans of 64 chunks; span sums added
// in double in span order (one span, the usual GEMM form: just the chunk order).
template <class L>
void lut_run(const float* a, float* out, int64_t rows, int64_t P, int64_t C, double scale, bool project,
             const SignKey& key, const SketchArgs& args, int threads) {
  const int64_t chunks = (P + kLutChunk - 1) / kLutChunk, spans = (chunks + kLutSpanChunks - 1) / kLutSpanChunks;
  const int64_t units = LutUnit<L>(a, rows, P, C, project, key, args).units();
  if (spans == 1 || units >= 2 * threads) {
    // Enough units (or one span): each thread sweeps all spans of its units.
#pragma omp parallel num_threads(threads)
    {
      LutUnit<L> lu(a, rows, P, C, project, key, args);
      Scratch<double> span(LutUnit<L>::cells()), total(spans > 1 ? LutUnit<L>::cells() : 1);
#pragma omp for schedule(dynamic, 1)
      for (int64_t u = 0; u < units; ++u) {
        double* sum = spans > 1 ? total.data() : span.data();
        for (int64_t s = 0; s < spans; ++s) {
          lu.span(u, s, span.data());
          if (spans > 1) {
            const size_t n = LutUnit<L>::cells();
            for (size_t i = 0; i < n; ++i) sum[i] = s == 0 ? span.data()[i] : sum[i] + span.data()[i];
          }
        }
        lu.each(u, sum, [&](int64_t r, int64_t c, double v) { out[r * C + c] = float(scale * v); });
      }
    }
    return;
  }
  // Few units, several spans (a long reduction axis): threads share out the (unit, span) tasks of a
  // wave of spans, whose sums are then added in span order.
  const int64_t cells = rows * C;
  const int64_t wave = std::clamp<int64_t>(kLutWaveBytes / int64_t(cells * sizeof(double)), 1, spans);
  Scratch<double> total{size_t(cells)}, buffered{size_t(wave * cells)};
  for (int64_t s0 = 0; s0 < spans; s0 += wave) {
    const int64_t ws = std::min(wave, spans - s0);
#pragma omp parallel num_threads(threads)
    {
      LutUnit<L> lu(a, rows, P, C, project, key, args);
      Scratch<double> span(LutUnit<L>::cells());
#pragma omp for schedule(dynamic, 1)
      for (int64_t task = 0; task < units * ws; ++task) {
        const int64_t u = task / ws, s = s0 + task % ws;
        lu.span(u, s, span.data());
        double* buf = buffered.data() + (s - s0) * cells;
        lu.each(u, span.data(), [&](int64_t r, int64_t c, double v) { buf[r * C + c] = v; });
      }
    }
    for (int64_t s = 0; s < ws; ++s) {
      const double* d = buffered.data() + s * cells;
      for (int64_t i = 0; i < cells; ++i) total.data()[i] = s0 + s == 0 ? d[i] : total.data()[i] + d[i];
    }
  }
  for (int64_t i = 0; i < cells; ++i) out[i] = float(scale * total.data()[i]);
}

}  // namespace stabkern::cpu
