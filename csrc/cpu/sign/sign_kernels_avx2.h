// AVX2 + FMA sign kernels (float32), compiled with a target attribute and taken only when the CPU
// reports AVX2 and FMA at run time.
//
// Same shape as the AVX-512 kernels (sign_kernels_avx512.h), on 8 lanes: Philox on 8 rows of S in
// 64-bit lanes. AVX2 has no 16-entry float permute, so projection looks up 3 columns at a time
// (vpermps picks one of 8 entries by the low 3 bits of each lane's word): a 32-column word takes
// 10 lookups of 3 columns and one of its last 2 (a table whose third column is zero).
// Reconstruction looks up 4 rows of S at a time (the AVX-512 kernel's quad tables, folded to 8
// entries by symmetry): one vpermps applies 8 columns x 4 rows (see reconstruct_rows).
#pragma once

#if defined(__x86_64__)

// GCC 12 reports the deliberately undefined vectors inside the intrinsics (_mm512_undefined_ps)
// as maybe-uninitialized; that is a known false positive of the compiler's own header.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop

#include <cstdint>
#include <cstring>

#include "common/philox.h"
#include "kernel_contract.h"

#define STABKERN_AVX2 __attribute__((target("avx2,fma")))

namespace stabkern::cpu {

struct Avx2Kernel {
  using T = float;
  static constexpr int kLanes = 8;
  static constexpr int kLookups = 11;           // per 32-column word: columns 3i, 3i+1, 3i+2
  static constexpr int kTable = 4 * kLookups * 8;  // 44 tables of 8 sign patterns

  STABKERN_AVX2 static void words(const SignKey& key, uint32_t t, int ntg, uint32_t group, uint32_t* out) {
    uint32_t hi0, lo0, hi1, lo1;
    mulhilo32(kPhiloxM0, group, hi0, lo0);
    mulhilo32(kPhiloxM1, key.stream, hi1, lo1);
    // After round 1: c0 = hi1 ^ row ^ k0, c1 = lo1, c2 = hi0 ^ k1, c3 = lo0.
    const __m256i c0_base = _mm256_set1_epi64x(hi1 ^ key.k0);
    const __m256i m0 = _mm256_set1_epi64x(kPhiloxM0), m1 = _mm256_set1_epi64x(kPhiloxM1);
    __m256i rk0[9], rk1[9];
    for (int i = 0; i < 9; ++i) {
      rk0[i] = _mm256_set1_epi64x(uint32_t(key.k0 + uint32_t(i + 1) * kPhiloxW0));
      rk1[i] = _mm256_set1_epi64x(uint32_t(key.k1 + uint32_t(i + 1) * kPhiloxW1));
    }
    // Lane orders chosen so that shuffle_ps(a, b, 0x88) at the end yields rows 0..7 in order.
    const __m256i off_a = _mm256_set_epi64x(5, 4, 1, 0), off_b = _mm256_set_epi64x(7, 6, 3, 2);
    for (int g = 0; g < ntg; ++g) {
      const __m256i row = _mm256_set1_epi64x(uint32_t(t + uint32_t(g * kLanes)));
      __m256i a0 = _mm256_xor_si256(c0_base, _mm256_add_epi64(row, off_a));
      __m256i b0 = _mm256_xor_si256(c0_base, _mm256_add_epi64(row, off_b));
      __m256i a1 = _mm256_set1_epi64x(lo1), b1 = a1;
      __m256i a2 = _mm256_set1_epi64x(hi0 ^ key.k1), b2 = a2;
      __m256i a3 = _mm256_set1_epi64x(lo0), b3 = a3;
      for (int i = 0; i < 9; ++i) {
        const __m256i pa0 = _mm256_mul_epu32(a0, m0), pa1 = _mm256_mul_epu32(a2, m1);
        const __m256i pb0 = _mm256_mul_epu32(b0, m0), pb1 = _mm256_mul_epu32(b2, m1);
        a0 = _mm256_xor_si256(_mm256_xor_si256(_mm256_srli_epi64(pa1, 32), a1), rk0[i]);
        a2 = _mm256_xor_si256(_mm256_xor_si256(_mm256_srli_epi64(pa0, 32), a3), rk1[i]);
        b0 = _mm256_xor_si256(_mm256_xor_si256(_mm256_srli_epi64(pb1, 32), b1), rk0[i]);
        b2 = _mm256_xor_si256(_mm256_xor_si256(_mm256_srli_epi64(pb0, 32), b3), rk1[i]);
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

  // tab[word q][lookup i][pattern s] = (x0 s0 + x1 s1) + x2 s2 for columns 32 q + 3 i + {0, 1, 2}
  // (x2 = 0 for i = 10, past the word), s_b = +1 if bit b of s.
  STABKERN_AVX2 static void tables(const float* x, float* tab) {
    __m256 sgn[3];
    for (int b = 0; b < 3; ++b) sgn[b] = sign_pattern(b);
    for (int q = 0; q < 4; ++q) {
      for (int i = 0; i < kLookups; ++i) {
        const float* xc = x + 32 * q + 3 * i;
        const float x2 = i + 1 < kLookups ? xc[2] : 0.0f;
        __m256 v = _mm256_mul_ps(_mm256_set1_ps(xc[0]), sgn[0]);
        v = _mm256_fmadd_ps(_mm256_set1_ps(xc[1]), sgn[1], v);
        v = _mm256_fmadd_ps(_mm256_set1_ps(x2), sgn[2], v);
        _mm256_store_ps(tab + (q * kLookups + i) * 8, v);
      }
    }
  }

  STABKERN_AVX2 static void project(const float* tab, int R, const uint32_t* words, int ntg, float* part,
                                    int64_t ldp) {
    int r = 0;
    if (R & 8) project_rows<8, 1>(tab, words, ntg, part, ldp), r += 8;
    if (R & 4) project_rows<4, 1>(tab + r * kTable, words, ntg, part + r * ldp, ldp), r += 4;
    if (R & 2) project_rows<2, 2>(tab + r * kTable, words, ntg, part + r * ldp, ldp), r += 2;
    if (R & 1) project_rows<1, 4>(tab + r * kTable, words, ntg, part + r * ldp, ldp);
  }

  STABKERN_AVX2 static void reconstruct(const float* y, int64_t ldy, int R, const uint32_t* words, int ng, int kt,
                                        float* part, int64_t ldp) {
    constexpr int kQuads = kMaxChunkRows / 4;
    alignas(32) float tab[kMaxTileRows * kQuads * 8];
    alignas(32) uint32_t prep[kQuads * 4 * 4];
    const int nq = (kt + 3) / 4;
    quad_tables(y, ldy, R, kt, tab);
    for (int i = 0; i < ng; ++i) {
      prepare(words + i * kMaxChunkRows * 4, nq, prep);
      float* p = part + i * kGroupCols;
      int r = 0;
      if (R & 8) reconstruct_rows<8, 1>(prep, nq, tab, p, ldp), r += 8;
      if (R & 4) reconstruct_rows<4, 2>(prep, nq, tab + r * kQuads * 8, p + r * ldp, ldp), r += 4;
      if (R & 2) reconstruct_rows<2, 4>(prep, nq, tab + r * kQuads * 8, p + r * ldp, ldp), r += 2;
      if (R & 1) reconstruct_rows<1, 4>(prep, nq, tab + r * kQuads * 8, p + r * ldp, ldp);
    }
  }

 private:
  STABKERN_AVX2 static void store_low_words(uint32_t* o, __m256i a, __m256i b) {
    const __m256 w = _mm256_shuffle_ps(_mm256_castsi256_ps(a), _mm256_castsi256_ps(b), 0x88);
    _mm256_store_si256(reinterpret_cast<__m256i*>(o), _mm256_castps_si256(w));
  }

  STABKERN_AVX2 static __m256 sign_pattern(int bit) {
    alignas(32) float s[8];
    for (int l = 0; l < 8; ++l) s[l] = (l >> bit) & 1 ? 1.0f : -1.0f;
    return _mm256_load_ps(s);
  }

  template <int R, int TG>
  STABKERN_AVX2 static void project_rows(const float* tab, const uint32_t* words, int ntg, float* part,
                                         int64_t ldp) {
    int g = 0;
    for (; g + TG <= ntg; g += TG) project_tile<R, TG>(tab, words + g * 4 * kLanes, part + g * kLanes, ldp);
    for (; g < ntg; ++g) project_tile<R, 1>(tab, words + g * 4 * kLanes, part + g * kLanes, ldp);
  }

  template <int R, int TG>
  STABKERN_AVX2 static inline __attribute__((always_inline)) void project_tile(const float* tab,
                                                                                const uint32_t* words,
                                                                                float* part, int64_t ldp) {
    __m256 acc[R][TG];
    for (int r = 0; r < R; ++r)
      for (int g = 0; g < TG; ++g) acc[r][g] = _mm256_loadu_ps(part + r * ldp + g * kLanes);
    for (int q = 0; q < 4; ++q) {
      __m256i idx[TG];
      for (int g = 0; g < TG; ++g)
        idx[g] = _mm256_load_si256(reinterpret_cast<const __m256i*>(words + (g * 4 + q) * kLanes));
#pragma GCC unroll 1
      for (int i = 0; i < kLookups; ++i) {
        for (int r = 0; r < R; ++r) {
          const __m256 e = _mm256_load_ps(tab + r * kTable + (q * kLookups + i) * 8);
          for (int g = 0; g < TG; ++g)
            acc[r][g] = _mm256_add_ps(acc[r][g], _mm256_permutevar8x32_ps(e, idx[g]));
        }
        for (int g = 0; g < TG; ++g) idx[g] = _mm256_srli_epi32(idx[g], 3);
      }
    }
    for (int r = 0; r < R; ++r)
      for (int g = 0; g < TG; ++g) _mm256_storeu_ps(part + r * ldp + g * kLanes, acc[r][g]);
  }

  // Reconstruction, the lookup turned around (as Avx512Kernel::reconstruct_rows, on 8 lanes): lanes
  // are 8 columns, and for every quad of 4 rows of S the table holds signed sums of their 4 values
  // of y. vpermps picks one of 8 entries, so the table keeps the 8 patterns whose row-3 sign is -1,
  // U[d] = ((s0 y0 + s1 y1) + s2 y2) - y3 (s_i = +1 if bit i of d), and a column whose row-3 sign is
  // +1 takes the negation of the complement's entry: index d_i = b_i ^ b_3, sign flipped iff b_3 (b_i
  // the column's sign bit in row i). -U[~s] is exactly ((s0 y0 + s1 y1) + s2 y2) + y3 (rounding is
  // symmetric), so every column adds the entry ((+-y0 +-y1) +-y2) +-y3 of kernel_contract.h, the
  // same value the AVX-512 kernel adds: both give the same bits.
  //
  // Per quad and 32-column word: prepare() has put (b0 ^ b3, rotl(b1 ^ b3, 1), rotl(b2 ^ b3, 2),
  // rotr(b3, 1)) in memory; four broadcasts, ands with lane masks and ors put bit i of column
  // 8 m + d at bit (8 m + d + i) mod 32 of lane d (the flip at 8 m + d - 1), and one rotation right
  // by d (two shifts) gives T: in lane d, bits 0..2 of byte m are (d0, d1, d2) of column 8 m + d,
  // and its flip is bit 7 of byte m - 1 (mod 4). Step 0 (columns 0..7) uses T as it is: bits 0..2
  // index vpermps, bit 31 is the flip; step m > 0 first copies byte m to byte 0 and byte m - 1 to
  // byte 3 (vpshufb). Per 32 sign-MACs of one row of y: vpermps, and, xor, add, 3/4 of a vpshufb
  // (the shuffle costs about a cycle beside vpermps), a quarter of T's 10 ops; every further row of
  // y: vpermps, xor, add.
  template <int R, int NB>  // R rows of y, NB steps (registers of 8 columns) of a word per pass
  STABKERN_AVX2 static void reconstruct_rows(const uint32_t* prep, int nq,
                                             const float* tab, float* part, int64_t ldp) {
    constexpr int kQuads = kMaxChunkRows / 4;
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i rot_left = _mm256_sub_epi32(_mm256_set1_epi32(32), lane);
    const __m256i sign = _mm256_set1_epi32(int(0x80000000u));
    __m256i mask[4];  // lane d keeps bits (8 m + d + i) mod 32 of row i's prepared word (i = 0, 1, 2, -1)
    for (int i = 0; i < 4; ++i) {
      const int rot = i < 3 ? i : 31;
      const __m256i m = _mm256_sllv_epi32(_mm256_set1_epi32(0x01010101), lane);
      mask[i] = _mm256_or_si256(_mm256_sllv_epi32(m, _mm256_set1_epi32(rot)),
                                _mm256_srlv_epi32(m, _mm256_set1_epi32(32 - rot)));
    }
    __m256i ctl[4];  // step m > 0: byte m of each lane to byte 0, byte m - 1 to byte 3 (vpshufb: within 16 bytes)
    for (int m = 0; m < 4; ++m) {
      alignas(32) uint8_t c[32];
      for (int k = 0; k < 32; ++k)
        c[k] = k % 4 == 0 ? uint8_t((k % 16) / 4 * 4 + m) : k % 4 == 3 ? uint8_t((k % 16) / 4 * 4 + (m + 3) % 4) : 0x80;
      ctl[m] = _mm256_load_si256(reinterpret_cast<const __m256i*>(c));
    }
    for (int q = 0; q < 4; ++q)
      for (int m0 = 0; m0 < 4; m0 += NB) {
        __m256 acc[R][NB];
        for (int r = 0; r < R; ++r)
          for (int m = 0; m < NB; ++m) acc[r][m] = _mm256_loadu_ps(part + r * ldp + 32 * q + 8 * (m0 + m));
        for (int a = 0; a < nq; ++a) {
          const int* p = reinterpret_cast<const int*>(prep + (a * 4 + q) * 4);
          __m256i x = _mm256_and_si256(_mm256_set1_epi32(p[0]), mask[0]);
          for (int i = 1; i < 4; ++i) x = _mm256_or_si256(x, _mm256_and_si256(_mm256_set1_epi32(p[i]), mask[i]));
          const __m256i t = _mm256_or_si256(_mm256_srlv_epi32(x, lane), _mm256_sllv_epi32(x, rot_left));
          for (int m = 0; m < NB; ++m) {
            const __m256i sel = m0 + m == 0 ? t : _mm256_shuffle_epi8(t, ctl[m0 + m]);
            const __m256 flip = _mm256_castsi256_ps(_mm256_and_si256(sel, sign));
            for (int r = 0; r < R; ++r) {
              const __m256 e = _mm256_permutevar8x32_ps(_mm256_load_ps(tab + (r * kQuads + a) * 8), sel);
              acc[r][m] = _mm256_add_ps(acc[r][m], _mm256_xor_ps(e, flip));
            }
          }
        }
        for (int r = 0; r < R; ++r)
          for (int m = 0; m < NB; ++m) _mm256_storeu_ps(part + r * ldp + 32 * q + 8 * (m0 + m), acc[r][m]);
      }
  }

  // prep[(a * 4 + q) * 4 + i] for the quads a < nq of one group's words (kernel_contract.h layout:
  // quad a is rows 4 a .. 4 a + 3, lanes 4 (a % 2) .. of row group a / 2): with b_i word q of row
  // 4 a + i, (b0 ^ b3, rotl(b1 ^ b3, 1), rotl(b2 ^ b3, 2), rotr(b3, 1)).
  STABKERN_AVX2 static void prepare(const uint32_t* words, int nq, uint32_t* prep) {
    const __m256i keep = _mm256_setr_epi32(-1, -1, -1, 0, -1, -1, -1, 0);
    const __m256i left = _mm256_setr_epi32(0, 1, 2, 31, 0, 1, 2, 31);
    const __m256i right = _mm256_setr_epi32(32, 31, 30, 1, 32, 31, 30, 1);
    for (int g = 0; g < (nq + 1) / 2; ++g)
      for (int q = 0; q < 4; ++q) {
        const __m256i x = _mm256_load_si256(reinterpret_cast<const __m256i*>(words + (g * 4 + q) * kLanes));
        const __m256i e = _mm256_xor_si256(x, _mm256_and_si256(_mm256_shuffle_epi32(x, 0xFF), keep));
        const __m256i r = _mm256_or_si256(_mm256_sllv_epi32(e, left), _mm256_srlv_epi32(e, right));
        _mm_store_si128(reinterpret_cast<__m128i*>(prep + ((2 * g) * 4 + q) * 4), _mm256_castsi256_si128(r));
        _mm_store_si128(reinterpret_cast<__m128i*>(prep + ((2 * g + 1) * 4 + q) * 4), _mm256_extracti128_si256(r, 1));
      }
  }

  // tab[(r * kQuads + a) * 8 + d] = ((s0 y0 + s1 y1) + s2 y2) - y3 for quad a (y_i = y[r, 4 a + i], 0
  // past kt), s_i = +1 if bit i of d: the same roundings as the AVX-512 table (fma by +-1 = one add).
  STABKERN_AVX2 static void quad_tables(const float* y, int64_t ldy, int R, int kt, float* tab) {
    constexpr int kQuads = kMaxChunkRows / 4;
    __m256 sgn[3];
    for (int b = 0; b < 3; ++b) sgn[b] = sign_pattern(b);
    for (int r = 0; r < R; ++r)
      for (int a = 0; a < (kt + 3) / 4; ++a) {
        float v[4];
        for (int i = 0; i < 4; ++i) v[i] = 4 * a + i < kt ? y[r * ldy + 4 * a + i] : 0.0f;
        __m256 e = _mm256_mul_ps(_mm256_set1_ps(v[0]), sgn[0]);
        e = _mm256_fmadd_ps(_mm256_set1_ps(v[1]), sgn[1], e);
        e = _mm256_fmadd_ps(_mm256_set1_ps(v[2]), sgn[2], e);
        _mm256_store_ps(tab + (r * kQuads + a) * 8, _mm256_sub_ps(e, _mm256_set1_ps(v[3])));
      }
  }
};

// The GEMM form (sign_gemm.h): tiles of S expanded once into +-1.0f, then an FMA micro-kernel of
// 6 rows x 2 registers (16 columns of the tile): 12 accumulators, 2 loads of signs and 6 broadcasts
// per 12 FMAs (15 of the 16 ymm registers), bounded by the two FMA ports.
struct Avx2Gemm {
  using Words = Avx2Kernel;
  static constexpr int kW = 8;
  static constexpr int kNV = 2;
  static constexpr int kStrip = kNV * kW;
  static constexpr int kMR = 6;

  // As Avx512Gemm::expand_rows, groups of 8 rows of S.
  STABKERN_AVX2 static void expand_rows(const uint32_t* words, int strips, float* bp) {
    const __m256i sign = _mm256_set1_epi32(int(0x80000000u)), minus_one = _mm256_set1_epi32(int(0xBF800000u));
    for (int g = 0; g < strips * kNV; ++g) {
      float* out = bp + (g / kNV) * kGroupCols * kStrip + (g % kNV) * kW;
      for (int q = 0; q < 4; ++q) {
        const __m256i w = _mm256_load_si256(reinterpret_cast<const __m256i*>(words + (g * 4 + q) * kW));
        for (int b = 0; b < 32; ++b) {  // bit b set (S = +1) flips the sign of -1.0f
          const __m256i bit = _mm256_and_si256(_mm256_slli_epi32(w, 31 - b), sign);
          _mm256_store_si256(reinterpret_cast<__m256i*>(out + (32 * q + b) * kStrip), _mm256_xor_si256(bit, minus_one));
        }
      }
    }
  }

  // As Avx512Gemm::expand_cols, 8 columns per register.
  STABKERN_AVX2 static void expand_cols(const uint32_t* words, int64_t wstride, int ng, int kt, float* bp) {
    const __m256i sign = _mm256_set1_epi32(int(0x80000000u)), minus_one = _mm256_set1_epi32(int(0xBF800000u));
    const __m256i lane = _mm256_set_epi32(7, 6, 5, 4, 3, 2, 1, 0);
    __m256i shift[4];  // register v % 4 of a word: bits 8 (v % 4) + lane to bit 31
    for (int h = 0; h < 4; ++h) shift[h] = _mm256_sub_epi32(_mm256_set1_epi32(31 - 8 * h), lane);
    for (int i = 0; i < ng; ++i)
      for (int t = 0; t < kt; ++t) {
        const uint32_t* w = words + i * wstride + (t / kW) * 4 * kW + t % kW;
        for (int v = 0; v < kGroupCols / kW; ++v) {
          const int c = i * kGroupCols + v * kW;
          const __m256i x = _mm256_sllv_epi32(_mm256_set1_epi32(int(w[(v / 4) * kW])), shift[v % 4]);
          const __m256i e = _mm256_xor_si256(_mm256_and_si256(x, sign), minus_one);
          _mm256_store_si256(reinterpret_cast<__m256i*>(bp + (c / kStrip) * kGroupCols * kStrip + t * kStrip + c % kStrip),
                             e);
        }
      }
  }

  // As Avx512Gemm::micro.
  template <int R>
  STABKERN_AVX2 static void micro(const float* a, int64_t lda, const float* bp, int np, double* acc, int64_t ldacc) {
    __m256 c[R][kNV];
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r)
      for (int v = 0; v < kNV; ++v) c[r][v] = _mm256_setzero_ps();
    for (int p = 0; p < np; ++p) {
      __m256 b[kNV];
      for (int v = 0; v < kNV; ++v) b[v] = _mm256_load_ps(bp + p * kStrip + v * kW);
  #pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
        const __m256 x = _mm256_broadcast_ss(a + r * lda + p);
        for (int v = 0; v < kNV; ++v) c[r][v] = _mm256_fmadd_ps(x, b[v], c[r][v]);
      }
    }
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r)
      for (int v = 0; v < kNV; ++v) {
        double* d = acc + r * ldacc + v * kW;
        const __m256d lo = _mm256_cvtps_pd(_mm256_castps256_ps128(c[r][v]));
        const __m256d hi = _mm256_cvtps_pd(_mm256_extractf128_ps(c[r][v], 1));
        _mm256_storeu_pd(d, _mm256_add_pd(_mm256_loadu_pd(d), lo));
        _mm256_storeu_pd(d + 4, _mm256_add_pd(_mm256_loadu_pd(d + 4), hi));
      }
  }
};

// The GEMM form by table loads ("lut", driver and blocking in sign_lut.h): the lanes are 8 rows of
// a (x or y), the reduction axis p (columns of x, or rows of S) goes in quads. For each quad and
// each 8-row block of a the 16 signed sums of its 4 values are tabulated once (16 registers, 512
// bytes); every output column c then adds the entry its 4 signs select, one load + one add for
// 8 rows x 4 p = 32 sign-MACs, twice what an FMA applies, on the load and add ports (not the
// shuffle port the vpermps kernels need, and not the FMA port alone). The selectors are bytes,
// idx[q][c] = 4 * (4-bit sign pattern of quad q at column c), shared by every row of the panel.
struct Avx2Lut {
  using Words = Avx2Kernel;
  static constexpr int kW = 8;                        // rows of a per register
  static constexpr int kQuads = kGroupCols / 4;       // quads per chunk of 128 p
  static constexpr int kEntryBytes = 16 * kW * 4;     // one quad's table: 16 entries x 8 rows of fp32
  static constexpr int kCT = 8;                       // output columns (independent add chains) per pass
  static constexpr int kBlockCols = 256;              // output columns per unit (sign_lut.h): selectors 8 KiB
                                                      // + tables 16 KiB, within a 32 KiB L1

  // tab[q][s][r] = ((s0 a[r, 4q] + s1 a[r, 4q + 1]) + s2 a[r, 4q + 2]) + s3 a[r, 4q + 3], s_i = +1 if
  // bit i of s else -1, for r < 8 and q < 32. a: 8 rows (lda apart) of 128 values, zero padded by the
  // caller. The entry of ~s is computed as the negation of that of s: exactly the same value.
  STABKERN_AVX2 static void tables(const float* a, int64_t lda, float* tab) { tables_strided(a, lda, tab, kW); }

  // The same with entries `stride` floats apart (Avx512Lut builds its 16-row entries in two halves).
  STABKERN_AVX2 static void tables_strided(const float* a, int64_t lda, float* tab, int stride) {
    const __m256 neg = _mm256_set1_ps(-0.0f);
    for (int p8 = 0; p8 < kGroupCols; p8 += 8) {
      __m256 v[8];  // v[i][r] = a[r, p8 + i]: an 8 x 8 transpose
      for (int r = 0; r < 8; ++r) v[r] = _mm256_loadu_ps(a + r * lda + p8);
      transpose8(v);
      for (int h = 0; h < 2; ++h) {
        const __m256 a0 = v[4 * h], a1 = v[4 * h + 1], a2 = v[4 * h + 2], a3 = v[4 * h + 3];
        float* t = tab + (p8 / 4 + h) * 16 * stride;
        __m256 e01[4];  // index s & 3
        e01[3] = _mm256_add_ps(a0, a1);
        e01[1] = _mm256_sub_ps(a0, a1);
        e01[2] = _mm256_xor_ps(e01[1], neg);
        e01[0] = _mm256_xor_ps(e01[3], neg);
        __m256 e012[8];  // index s & 7: bit 2 set adds a2, clear is the negation of the complement
        for (int s = 4; s < 8; ++s) e012[s] = _mm256_add_ps(e01[s & 3], a2);
        for (int s = 0; s < 4; ++s) e012[s] = _mm256_xor_ps(e012[7 - s], neg);
        for (int s = 8; s < 16; ++s) {
          const __m256 e = _mm256_add_ps(e012[s & 7], a3);
          _mm256_store_ps(t + s * stride, e);
          _mm256_store_ps(t + (15 - s) * stride, _mm256_xor_ps(e, neg));
        }
      }
    }
  }

  // Projection selectors: idx[q * ldi + c] for c < 8 * ntg (rows of S, words in the
  // kernel_contract.h layout of one column group), q < 32: quad q is bits 4 (q % 8) .. of word q / 8.
  template <int Shift = 2>  // selector = pattern << Shift: entry bytes / 8
  STABKERN_AVX2 static void index_rows(const uint32_t* words, int ntg, uint8_t* idx, int64_t ldi) {
    const __m256i low = _mm256_set1_epi32(0x0F0F0F0F);
    // Within each 128-bit lane (4 rows x 4 bytes) gather byte j of the 4 rows into dword j.
    const __m256i gather = _mm256_setr_epi8(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15, 0, 4, 8, 12, 1,
                                            5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    const __m256i pair = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (int g = 0; g < ntg; ++g)
      for (int w = 0; w < 4; ++w) {
        const __m256i x = _mm256_load_si256(reinterpret_cast<const __m256i*>(words + (g * 4 + w) * kW));
        for (int odd = 0; odd < 2; ++odd) {
          // byte j of each row: nibble 2 j + odd of the word, times 4
          __m256i b = _mm256_slli_epi32(_mm256_and_si256(odd ? _mm256_srli_epi32(x, 4) : x, low), Shift);
          b = _mm256_permutevar8x32_epi32(_mm256_shuffle_epi8(b, gather), pair);  // qword j: byte j of rows 0..7
          alignas(32) uint64_t q[4];
          _mm256_store_si256(reinterpret_cast<__m256i*>(q), b);
          for (int j = 0; j < 4; ++j)
            std::memcpy(idx + (8 * w + 2 * j + odd) * ldi + g * kW, &q[j], 8);
        }
      }
  }

  // Reconstruction selectors: idx[q * ldi + c] for c < 128 * ng (columns; group i's words at
  // words + i * wstride, rows of S in groups of 8), q < nq: bit k of quad q is S[4 q + k, c].
  template <int Shift = 2>
  STABKERN_AVX2 static void index_cols(const uint32_t* words, int64_t wstride, int ng, int nq, uint8_t* idx,
                                       int64_t ldi) {
    // Byte lane c of a register of 32 columns (one word per row of S) takes byte c / 8 of the
    // word (vpshufb within each 128-bit half of the broadcast word), tests bit c % 8, and the 0xFF
    // where it is set keeps bit k + Shift of the selector: 5 ops per row and 32 columns.
    const __m256i spread = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2,
                                            3, 3, 3, 3, 3, 3, 3, 3);
    const __m256i bits = _mm256_set1_epi64x(int64_t(0x8040201008040201ull));
    for (int i = 0; i < ng; ++i)
      for (int q = 0; q < nq; ++q) {
        const uint32_t* wq = words + i * wstride + (q / 2) * 4 * kW + 4 * (q % 2);  // word 0 of row 4 q
        uint8_t* out = idx + q * ldi + i * kGroupCols;
        for (int v = 0; v < 4; ++v) {  // columns 32 v .. 32 v + 31: word v
          const uint32_t* w = wq + v * kW;
          __m256i sel = _mm256_setzero_si256();
          for (int k = 0; k < 4; ++k) {
            const __m256i x = _mm256_shuffle_epi8(_mm256_set1_epi32(int(w[k])), spread);
            const __m256i set = _mm256_cmpeq_epi8(_mm256_and_si256(x, bits), bits);
            sel = _mm256_or_si256(sel, _mm256_and_si256(set, _mm256_set1_epi8(char(1 << (k + Shift)))));
          }
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + 32 * v), sel);
        }
      }
  }

  // acc[c * 8 + r] += double(fp32 chain over q < nq of tab[q][idx[q * ldi + c] / 4][r]) for c < nc
  // (a multiple of kCT), r < 8; each chain starts at 0 and adds its entries in q order.
  STABKERN_AVX2 static void lookups(const float* tab, const uint8_t* idx, int64_t ldi, int nq, int nc, double* acc) {
    for (int c = 0; c < nc; c += kCT) {
      __m256 s[kCT];
      for (int j = 0; j < kCT; ++j) s[j] = _mm256_setzero_ps();
      const char* t = reinterpret_cast<const char*>(tab);
      const uint8_t* ix = idx + c;
      for (int q = 0; q < nq; ++q, t += kEntryBytes, ix += ldi) {
        const uint64_t sel = selectors(ix);  // the 8 columns' selectors of quad q
        for (int j = 0; j < kCT; ++j)
          s[j] = _mm256_add_ps(s[j], _mm256_load_ps(reinterpret_cast<const float*>(t + ((sel >> (8 * j)) & 0xFF) * 8)));
      }
      for (int j = 0; j < kCT; ++j) {
        double* d = acc + (c + j) * kW;
        const __m256d lo = _mm256_cvtps_pd(_mm256_castps256_ps128(s[j]));
        const __m256d hi = _mm256_cvtps_pd(_mm256_extractf128_ps(s[j], 1));
        _mm256_store_pd(d, _mm256_add_pd(_mm256_load_pd(d), lo));
        _mm256_store_pd(d + 4, _mm256_add_pd(_mm256_load_pd(d + 4), hi));
      }
    }
  }

 private:
  // The selectors of 8 consecutive columns in one integer load, taken apart by shifts: a byte load per
  // lookup was a second load beside each table load, and the loads are what the lookup loop waits on
  // (1.08-1.54x on Zen 3; csrc/README.md).
  static uint64_t selectors(const uint8_t* ix) {
    uint64_t u;
    std::memcpy(&u, ix, sizeof(u));
    return u;
  }

  STABKERN_AVX2 static void transpose8(__m256* v) {
    __m256 t[8], u[8];
    for (int i = 0; i < 4; ++i) {
      t[2 * i] = _mm256_unpacklo_ps(v[2 * i], v[2 * i + 1]);
      t[2 * i + 1] = _mm256_unpackhi_ps(v[2 * i], v[2 * i + 1]);
    }
    for (int i = 0; i < 2; ++i) {
      u[4 * i + 0] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
      u[4 * i + 1] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0xEE);
      u[4 * i + 2] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
      u[4 * i + 3] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xEE);
    }
    for (int i = 0; i < 4; ++i) {
      v[i] = _mm256_permute2f128_ps(u[i], u[4 + i], 0x20);
      v[4 + i] = _mm256_permute2f128_ps(u[i], u[4 + i], 0x31);
    }
  }
};

// Avx2Lut on 16 rows of a per table (the 64-byte entries of Avx512Lut, two ymm halves): one
// selector byte load serves two table loads + adds, 64 sign-MACs: 1.1-1.15x Avx2Lut on a 48 KiB L1
// when Avx2Lut loaded a byte per lookup; against today's Avx2Lut on Zen 3, median 1.03x at 1 thread
// and 0.92x at 2 (csrc/README.md). Its tables are 32 KiB per chunk, so sign_kernels.cpp takes it
// only on cores whose L1 data cache holds them with the selectors (>= 48 KiB). Same entries and
// chains as Avx2Lut: the same bits.
struct Avx2Lut16 {
  using Words = Avx2Kernel;
  static constexpr int kW = 16;
  static constexpr int kEntryBytes = 16 * kW * 4;
  static constexpr int kCT = 4;                // 8 accumulators
  static constexpr int kBlockCols = 512;       // selectors 16 KiB + tables 32 KiB: a 48 KiB L1

  STABKERN_AVX2 static void tables(const float* a, int64_t lda, float* tab) {
    Avx2Lut::tables_strided(a, lda, tab, kW);
    Avx2Lut::tables_strided(a + 8 * lda, lda, tab + 8, kW);
  }
  STABKERN_AVX2 static void index_rows(const uint32_t* words, int ntg, uint8_t* idx, int64_t ldi) {
    Avx2Lut::index_rows<3>(words, ntg, idx, ldi);
  }
  STABKERN_AVX2 static void index_cols(const uint32_t* words, int64_t wstride, int ng, int nq, uint8_t* idx,
                                       int64_t ldi) {
    Avx2Lut::index_cols<3>(words, wstride, ng, nq, idx, ldi);
  }

  STABKERN_AVX2 static void lookups(const float* tab, const uint8_t* idx, int64_t ldi, int nq, int nc, double* acc) {
    for (int c = 0; c < nc; c += kCT) {
      __m256 s[kCT][2];
      for (int j = 0; j < kCT; ++j) s[j][0] = s[j][1] = _mm256_setzero_ps();
      const char* t = reinterpret_cast<const char*>(tab);
      const uint8_t* ix = idx + c;
      for (int q = 0; q < nq; ++q, t += kEntryBytes, ix += ldi) {
        for (int j = 0; j < kCT; ++j) {  // a byte load per two table loads (4 at once measured 0.91-1.02x)
          const float* e = reinterpret_cast<const float*>(t + size_t(ix[j]) * 8);
          s[j][0] = _mm256_add_ps(s[j][0], _mm256_load_ps(e));
          s[j][1] = _mm256_add_ps(s[j][1], _mm256_load_ps(e + 8));
        }
      }
      for (int j = 0; j < kCT; ++j)
        for (int h = 0; h < 2; ++h) {
          double* d = acc + (c + j) * kW + 8 * h;
          const __m256d lo = _mm256_cvtps_pd(_mm256_castps256_ps128(s[j][h]));
          const __m256d hi = _mm256_cvtps_pd(_mm256_extractf128_ps(s[j][h], 1));
          _mm256_store_pd(d, _mm256_add_pd(_mm256_load_pd(d), lo));
          _mm256_store_pd(d + 4, _mm256_add_pd(_mm256_load_pd(d + 4), hi));
        }
    }
  }
};

}  // namespace stabkern::cpu

#undef STABKERN_AVX2

#endif  // __x86_64__
