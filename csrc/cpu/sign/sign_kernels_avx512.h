// AVX-512F sign kernels (float32), compiled with a target attribute and taken only when the CPU
// reports AVX-512F at run time.
//
// Philox runs on 16 rows of S at once: two registers of 8 64-bit lanes, each lane keeping a 32-bit
// counter word in its low half, so one vpmuludq gives hi and lo of 8 products with no shuffles
// (the high halves of the lo words are garbage that only ever meets xor and vpmuludq, which ignore
// it). The first round is identical across lanes except for the row counter, so it runs in scalar.
//
// Projection: vpermps picks, in each of 16 lanes (rows t), one of 16 table entries by the low 4
// bits of the lane's sign word, so one shift + one vpermps + one add apply 4 columns x 16 rows
// (64 sign-MACs); the 16 entries (signed sums of 4 columns of x) are built once per row of x and
// reused by every row of S. Several rows of x share each shifted index (the GEMM form), or, for
// one row, several groups of 16 rows of S are interleaved so the adds form independent chains.
//
// Reconstruction turns the lookup around: lanes are 16 columns, the table holds the 16 signed sums
// of 4 consecutive y[t], and each lane's index is its column's sign bit in those 4 rows of S.
// Building the index costs 7 ops per 16 columns x 4 rows, shared by every row of y (GEMM form);
// each row of y then needs one vpermps and one add per 64 sign-MACs.
#pragma once

#if defined(__x86_64__)

// GCC 12 reports the deliberately undefined vectors inside the intrinsics (_mm512_undefined_ps)
// as maybe-uninitialized; that is a known false positive of the compiler's own header.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop

#include <cstdint>

#include "common/philox.h"
#include "kernel_contract.h"
#include "sign_kernels_avx2.h"

#define STABKERN_AVX512 __attribute__((target("avx512f,avx2,fma")))

namespace stabkern::cpu {

struct Avx512Kernel {
  using T = float;
  static constexpr int kLanes = 16;
  static constexpr int kTable = 32 * 16;  // 32 groups of 4 columns x 16 sign patterns

  STABKERN_AVX512 static void words(const SignKey& key, uint32_t t, int ntg, uint32_t group, uint32_t* out) {
    uint32_t hi0, lo0, hi1, lo1;
    mulhilo32(kPhiloxM0, group, hi0, lo0);
    mulhilo32(kPhiloxM1, key.stream, hi1, lo1);
    // After round 1: c0 = hi1 ^ row ^ k0, c1 = lo1, c2 = hi0 ^ k1, c3 = lo0.
    const __m512i c0_base = _mm512_set1_epi64(hi1 ^ key.k0);
    const __m512i m0 = _mm512_set1_epi64(kPhiloxM0), m1 = _mm512_set1_epi64(kPhiloxM1);
    __m512i rk0[9], rk1[9];
    for (int i = 0; i < 9; ++i) {
      rk0[i] = _mm512_set1_epi64(uint32_t(key.k0 + uint32_t(i + 1) * kPhiloxW0));
      rk1[i] = _mm512_set1_epi64(uint32_t(key.k1 + uint32_t(i + 1) * kPhiloxW1));
    }
    // Lane orders chosen so that shuffle_ps(a, b, 0x88) at the end yields rows 0..15 in order.
    const __m512i off_a = _mm512_set_epi64(13, 12, 9, 8, 5, 4, 1, 0);
    const __m512i off_b = _mm512_set_epi64(15, 14, 11, 10, 7, 6, 3, 2);
    for (int g = 0; g < ntg; ++g) {
      const __m512i row = _mm512_set1_epi64(uint32_t(t + uint32_t(g * kLanes)));
      __m512i a0 = _mm512_xor_si512(c0_base, _mm512_add_epi64(row, off_a));
      __m512i b0 = _mm512_xor_si512(c0_base, _mm512_add_epi64(row, off_b));
      __m512i a1 = _mm512_set1_epi64(lo1), b1 = a1;
      __m512i a2 = _mm512_set1_epi64(hi0 ^ key.k1), b2 = a2;
      __m512i a3 = _mm512_set1_epi64(lo0), b3 = a3;
      for (int i = 0; i < 9; ++i) {
        const __m512i pa0 = _mm512_mul_epu32(a0, m0), pa1 = _mm512_mul_epu32(a2, m1);
        const __m512i pb0 = _mm512_mul_epu32(b0, m0), pb1 = _mm512_mul_epu32(b2, m1);
        a0 = _mm512_ternarylogic_epi64(_mm512_srli_epi64(pa1, 32), a1, rk0[i], 0x96);
        a2 = _mm512_ternarylogic_epi64(_mm512_srli_epi64(pa0, 32), a3, rk1[i], 0x96);
        b0 = _mm512_ternarylogic_epi64(_mm512_srli_epi64(pb1, 32), b1, rk0[i], 0x96);
        b2 = _mm512_ternarylogic_epi64(_mm512_srli_epi64(pb0, 32), b3, rk1[i], 0x96);
        a1 = pa1;
        a3 = pa0;
        b1 = pb1;
        b3 = pb0;
      }
      uint32_t* o = out + g * 4 * kLanes;
      store_low_words(o + 0 * kLanes, a0, b0);
      store_low_words(o + 1 * kLanes, a1, b1);
      store_low_words(o + 2 * kLanes, a2, b2);
      store_low_words(o + 3 * kLanes, a3, b3);
    }
  }

  // tab[4-column group c][pattern s] = ((x0 s0 + x1 s1) + x2 s2) + x3 s3, s_i = +1 if bit i of s;
  // the products by +-1 are exact, so each fma rounds exactly like the add it stands for.
  STABKERN_AVX512 static void tables(const float* x, float* tab) {
    __m512 sgn[4];
    for (int b = 0; b < 4; ++b) sgn[b] = sign_pattern(b);
    for (int c = 0; c < 32; ++c) {
      const float* xc = x + 4 * c;
      __m512 v = _mm512_mul_ps(_mm512_set1_ps(xc[0]), sgn[0]);
      v = _mm512_fmadd_ps(_mm512_set1_ps(xc[1]), sgn[1], v);
      v = _mm512_fmadd_ps(_mm512_set1_ps(xc[2]), sgn[2], v);
      v = _mm512_fmadd_ps(_mm512_set1_ps(xc[3]), sgn[3], v);
      _mm512_store_ps(tab + 16 * c, v);
    }
  }

  STABKERN_AVX512 static void project(const float* tab, int R, const uint32_t* words, int ntg, float* part,
                                      int64_t ldp) {
    // Rows of x in tiles of 8, 4, 2, 1 (the bits of R <= 8).
    int r = 0;
    if (R & 8) project_rows<8, 1>(tab, words, ntg, part, ldp), r += 8;
    if (R & 4) project_rows<4, 1>(tab + r * kTable, words, ntg, part + r * ldp, ldp), r += 4;
    if (R & 2) project_rows<2, 2>(tab + r * kTable, words, ntg, part + r * ldp, ldp), r += 2;
    if (R & 1) project_rows<1, 4>(tab + r * kTable, words, ntg, part + r * ldp, ldp);
  }

  STABKERN_AVX512 static void reconstruct(const float* y, int64_t ldy, int R, const uint32_t* words, int ng,
                                          int kt, float* part, int64_t ldp) {
    int r = 0;
    if (R & 8) reconstruct_rows<8, 1>(y, ldy, words, ng, kt, part, ldp), r += 8;
    if (R & 4) reconstruct_rows<4, 1>(y + r * ldy, ldy, words, ng, kt, part + r * ldp, ldp), r += 4;
    if (R & 2) reconstruct_rows<2, 2>(y + r * ldy, ldy, words, ng, kt, part + r * ldp, ldp), r += 2;
    if (R & 1) reconstruct_rows<1, 4>(y + r * ldy, ldy, words, ng, kt, part + r * ldp, ldp);
  }

 private:
  // The low 32 bits of the 8 + 8 lanes of a and b, as 16 words (see the lane orders above).
  STABKERN_AVX512 static void store_low_words(uint32_t* o, __m512i a, __m512i b) {
    const __m512 w = _mm512_shuffle_ps(_mm512_castsi512_ps(a), _mm512_castsi512_ps(b), 0x88);
    _mm512_store_si512(reinterpret_cast<__m512i*>(o), _mm512_castps_si512(w));
  }

  STABKERN_AVX512 static __m512 sign_pattern(int bit) {
    alignas(64) float s[16];
    for (int l = 0; l < 16; ++l) s[l] = (l >> bit) & 1 ? 1.0f : -1.0f;
    return _mm512_load_ps(s);
  }

  // R rows of x against TG groups of 16 rows of S at a time: R * TG independent add chains.
  template <int R, int TG>
  STABKERN_AVX512 static void project_rows(const float* tab, const uint32_t* words, int ntg, float* part,
                                           int64_t ldp) {
    int g = 0;
    for (; g + TG <= ntg; g += TG) project_tile<R, TG>(tab, words + g * 4 * kLanes, part + g * kLanes, ldp);
    for (; g < ntg; ++g) project_tile<R, 1>(tab, words + g * 4 * kLanes, part + g * kLanes, ldp);
  }

  template <int R, int TG>
  STABKERN_AVX512 static inline __attribute__((always_inline)) void project_tile(const float* tab,
                                                                                  const uint32_t* words,
                                                                                  float* part, int64_t ldp) {
    __m512 acc[R][TG];
    for (int r = 0; r < R; ++r)
      for (int g = 0; g < TG; ++g) acc[r][g] = _mm512_loadu_ps(part + r * ldp + g * kLanes);
    for (int q = 0; q < 4; ++q) {
      __m512i idx[TG];
      for (int g = 0; g < TG; ++g)
        idx[g] = _mm512_load_si512(reinterpret_cast<const __m512i*>(words + (g * 4 + q) * kLanes));
#pragma GCC unroll 1
      for (int i = 0; i < 8; ++i) {
        for (int r = 0; r < R; ++r) {
          const __m512 e = _mm512_load_ps(tab + r * kTable + (8 * q + i) * 16);
          for (int g = 0; g < TG; ++g) acc[r][g] = _mm512_add_ps(acc[r][g], _mm512_permutexvar_ps(idx[g], e));
        }
        for (int g = 0; g < TG; ++g) idx[g] = _mm512_srli_epi32(idx[g], 4);
      }
    }
    for (int r = 0; r < R; ++r)
      for (int g = 0; g < TG; ++g) _mm512_storeu_ps(part + r * ldp + g * kLanes, acc[r][g]);
  }

  // R rows of y against V registers of 16 columns at a time (R * V add chains). For every 4 rows
  // of S (a quad) the 16 signed sums of their y are tabulated once per row of y; a column's index
  // into that table is its sign bit in each of the 4 rows, gathered into bits 0..3 of its lane by
  // rotating each row's word so that bit lands at position i (vprorvd) and merging (vpternlogd).
  template <int R, int V>
  STABKERN_AVX512 static void reconstruct_rows(const float* y, int64_t ldy, const uint32_t* words, int ng, int kt,
                                               float* part, int64_t ldp) {
    constexpr int kQuads = kMaxChunkRows / 4;
    alignas(64) float tab[R][kQuads][16];
    const int nq = (kt + 3) / 4;
    __m512 sgn[4];
    for (int b = 0; b < 4; ++b) sgn[b] = sign_pattern(b);
    for (int r = 0; r < R; ++r) {
      for (int a = 0; a < nq; ++a) {
        float v[4];  // rows past kt count as 0 (their sign bits exist but add nothing)
        for (int i = 0; i < 4; ++i) v[i] = 4 * a + i < kt ? y[r * ldy + 4 * a + i] : 0.0f;
        __m512 e = _mm512_mul_ps(_mm512_set1_ps(v[0]), sgn[0]);
        for (int i = 1; i < 4; ++i) e = _mm512_fmadd_ps(_mm512_set1_ps(v[i]), sgn[i], e);
        _mm512_store_ps(tab[r][a], e);
      }
    }
    const __m512i lane = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
    __m512i bit[4];
    for (int i = 0; i < 4; ++i) bit[i] = _mm512_set1_epi32(1 << i);
    for (int g = 0; g < ng; ++g) {
      const uint32_t* wg = words + g * kMaxChunkRows * 4;
      float* pg = part + g * kGroupCols;
      for (int v0 = 0; v0 < 8; v0 += V) {
        // Register v: columns 16 v .. 16 v + 15 = bits 16 (v % 2) + l of word v / 2.
        __m512i rot[V][4];
        for (int v = 0; v < V; ++v)
          for (int i = 0; i < 4; ++i)
            rot[v][i] = _mm512_and_si512(_mm512_add_epi32(lane, _mm512_set1_epi32(16 * ((v0 + v) & 1) - i + 32)),
                                         _mm512_set1_epi32(31));
        __m512 acc[R][V];
        for (int r = 0; r < R; ++r)
          for (int v = 0; v < V; ++v) acc[r][v] = _mm512_loadu_ps(pg + r * ldp + 16 * (v0 + v));
        for (int a = 0; a < nq; ++a) {
          const uint32_t* wa = wg + (a / 4) * 4 * kLanes + 4 * (a % 4);  // word 0 of row 4 a
          __m512i idx[V];
          for (int v = 0; v < V; ++v) {
            const uint32_t* w = wa + ((v0 + v) >> 1) * kLanes;
            __m512i x = _mm512_rorv_epi32(_mm512_set1_epi32(int(w[0])), rot[v][0]);
            for (int i = 1; i < 4; ++i)  // bit i from row i: select(c ? b : a)
              x = _mm512_ternarylogic_epi32(x, _mm512_rorv_epi32(_mm512_set1_epi32(int(w[i])), rot[v][i]), bit[i],
                                            0xD8);
            idx[v] = x;
          }
          for (int r = 0; r < R; ++r) {
            const __m512 e = _mm512_load_ps(tab[r][a]);
            for (int v = 0; v < V; ++v) acc[r][v] = _mm512_add_ps(acc[r][v], _mm512_permutexvar_ps(idx[v], e));
          }
        }
        for (int r = 0; r < R; ++r)
          for (int v = 0; v < V; ++v) _mm512_storeu_ps(pg + r * ldp + 16 * (v0 + v), acc[r][v]);
      }
    }
  }
};

// The GEMM form (sign_gemm.h): tiles of S expanded once into +-1.0f, then an FMA micro-kernel of
// 6 rows x 4 registers (64 columns of the tile): 24 accumulators, 4 loads of signs and 6 broadcasts
// per 24 FMAs, so it is bounded by the two FMA ports, not by the shuffle port.
struct Avx512Gemm {
  using Words = Avx512Kernel;
  static constexpr int kW = 16;              // lanes per register
  static constexpr int kNV = 4;              // registers per strip
  static constexpr int kStrip = kNV * kW;    // tile columns per micro-kernel call
  static constexpr int kMR = 6;              // rows per micro-kernel call

  // Projection tile (sign_gemm.h): bp[s][j][c] = S[t0 + s * kStrip + c, j] for the 128 columns j of
  // one group, from words of ntg = strips * kNV groups of 16 rows (kernel_contract.h layout).
  STABKERN_AVX512 static void expand_rows(const uint32_t* words, int strips, float* bp) {
    const __m512i sign = _mm512_set1_epi32(int(0x80000000u)), minus_one = _mm512_set1_epi32(int(0xBF800000u));
    for (int g = 0; g < strips * kNV; ++g) {
      float* out = bp + (g / kNV) * kGroupCols * kStrip + (g % kNV) * kW;
      for (int q = 0; q < 4; ++q) {
        const __m512i w = _mm512_load_si512(reinterpret_cast<const __m512i*>(words + (g * 4 + q) * kW));
        for (int b = 0; b < 32; ++b) {  // bit b set (S = +1) flips the sign of -1.0f: (w << 31-b) & sign ^ -1.0f
          const __m512i v = _mm512_ternarylogic_epi32(_mm512_slli_epi32(w, 31 - b), sign, minus_one, 0x6A);
          _mm512_store_si512(reinterpret_cast<__m512i*>(out + (32 * q + b) * kStrip), v);
        }
      }
    }
  }

  // Reconstruction tile: bp[s][t][c] = S[t0 + t, c0 + s * kStrip + c] for t < kt, the columns of ng
  // groups of 128 (words of group i at words + i * wstride, rows in groups of 16).
  STABKERN_AVX512 static void expand_cols(const uint32_t* words, int64_t wstride, int ng, int kt, float* bp) {
    const __m512i sign = _mm512_set1_epi32(int(0x80000000u)), minus_one = _mm512_set1_epi32(int(0xBF800000u));
    const __m512i lane = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
    const __m512i shift_lo = _mm512_sub_epi32(_mm512_set1_epi32(31), lane);
    const __m512i shift_hi = _mm512_sub_epi32(_mm512_set1_epi32(15), lane);
    for (int i = 0; i < ng; ++i)
      for (int t = 0; t < kt; ++t) {
        const uint32_t* w = words + i * wstride + (t / kW) * 4 * kW + t % kW;
        for (int v = 0; v < kGroupCols / kW; ++v) {  // columns 16 v .. 16 v + 15 of the group
          const int c = i * kGroupCols + v * kW;
          const __m512i x = _mm512_sllv_epi32(_mm512_set1_epi32(int(w[(v / 2) * kW])), v % 2 ? shift_hi : shift_lo);
          const __m512i e = _mm512_ternarylogic_epi32(x, sign, minus_one, 0x6A);
          _mm512_store_si512(reinterpret_cast<__m512i*>(bp + (c / kStrip) * kGroupCols * kStrip + t * kStrip + c % kStrip),
                             e);
        }
      }
  }

  // acc[r * ldacc + c] += double(fp32 chain over p < np of a[r * lda + p] * bp[p * kStrip + c]),
  // r < R, c < kStrip; each chain starts at 0 and adds its products in p order (fma by +-1: exact product).
  template <int R>
  STABKERN_AVX512 static void micro(const float* a, int64_t lda, const float* bp, int np, double* acc, int64_t ldacc) {
    __m512 c[R][kNV];
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r)
      for (int v = 0; v < kNV; ++v) c[r][v] = _mm512_setzero_ps();
    for (int p = 0; p < np; ++p) {
      __m512 b[kNV];
      for (int v = 0; v < kNV; ++v) b[v] = _mm512_load_ps(bp + p * kStrip + v * kW);
  #pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
        const __m512 x = _mm512_set1_ps(a[r * lda + p]);
        for (int v = 0; v < kNV; ++v) c[r][v] = _mm512_fmadd_ps(x, b[v], c[r][v]);
      }
    }
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r)
      for (int v = 0; v < kNV; ++v) {
        double* d = acc + r * ldacc + v * kW;
        // maskz forms: the plain ones merge into undefined vectors that GCC 12 warns about
        const __m512d cv = _mm512_castps_pd(c[r][v]);
        const __m512d lo = _mm512_maskz_cvtps_pd(0xFF, _mm256_castpd_ps(_mm512_maskz_extractf64x4_pd(0xF, cv, 0)));
        const __m512d hi = _mm512_maskz_cvtps_pd(0xFF, _mm256_castpd_ps(_mm512_maskz_extractf64x4_pd(0xF, cv, 1)));
        _mm512_storeu_pd(d, _mm512_add_pd(_mm512_loadu_pd(d), lo));
        _mm512_storeu_pd(d + 8, _mm512_add_pd(_mm512_loadu_pd(d + 8), hi));
      }
  }
};

// The GEMM form by table loads on 16 rows of a per register (sign_lut.h; the AVX2 version,
// Avx2Lut, explains it): one zmm load + add applies 16 rows x 4 p = 64 sign-MACs. The tables are
// built by the AVX2 code in two 8-row halves of each 64-byte entry, the selectors by the AVX2 code
// (pattern x 8: entry bytes / 8), so the entries, the chains and the bits are those of Avx2Lut.
struct Avx512Lut {
  using Words = Avx2Kernel;
  static constexpr int kW = 16;
  static constexpr int kEntryBytes = 16 * kW * 4;
  static constexpr int kCT = 8;
  static constexpr int kBlockCols = 512;  // selectors 16 KiB + tables 32 KiB: the 48 KiB L1 here (256: -8%)

  STABKERN_AVX512 static void tables(const float* a, int64_t lda, float* tab) {
    Avx2Lut::tables_strided(a, lda, tab, kW);
    Avx2Lut::tables_strided(a + 8 * lda, lda, tab + 8, kW);
  }
  STABKERN_AVX512 static void index_rows(const uint32_t* words, int ntg, uint8_t* idx, int64_t ldi) {
    Avx2Lut::index_rows<3>(words, ntg, idx, ldi);
  }
  STABKERN_AVX512 static void index_cols(const uint32_t* words, int64_t wstride, int ng, int nq, uint8_t* idx,
                                         int64_t ldi) {
    Avx2Lut::index_cols<3>(words, wstride, ng, nq, idx, ldi);
  }

  // As Avx2Lut::lookups, 16 rows: acc[c * 16 + r].
  STABKERN_AVX512 static void lookups(const float* tab, const uint8_t* idx, int64_t ldi, int nq, int nc,
                                      double* acc) {
    for (int c = 0; c < nc; c += kCT) {
      __m512 s[kCT];
      for (int j = 0; j < kCT; ++j) s[j] = _mm512_setzero_ps();
      const char* t = reinterpret_cast<const char*>(tab);
      const uint8_t* ix = idx + c;
      for (int q = 0; q < nq; ++q, t += kEntryBytes, ix += ldi) {
        for (int j = 0; j < kCT; ++j)
          s[j] = _mm512_add_ps(s[j], _mm512_load_ps(reinterpret_cast<const float*>(t + size_t(ix[j]) * 8)));
      }
      for (int j = 0; j < kCT; ++j) {
        double* d = acc + (c + j) * kW;
        const __m512d cv = _mm512_castps_pd(s[j]);
        const __m512d lo = _mm512_maskz_cvtps_pd(0xFF, _mm256_castpd_ps(_mm512_maskz_extractf64x4_pd(0xF, cv, 0)));
        const __m512d hi = _mm512_maskz_cvtps_pd(0xFF, _mm256_castpd_ps(_mm512_maskz_extractf64x4_pd(0xF, cv, 1)));
        _mm512_store_pd(d, _mm512_add_pd(_mm512_load_pd(d), lo));
        _mm512_store_pd(d + 8, _mm512_add_pd(_mm512_load_pd(d + 8), hi));
      }
    }
  }
};

}  // namespace stabkern::cpu

#undef STABKERN_AVX512

#endif  // __x86_64__
