// stabkern-noise-v1 Gaussians (gaussian.h) for 8 consecutive groups at once, on AVX2: GCC vector
// extensions for the float arithmetic and two intrinsics for Philox's 32x32->64 products. Callers
// compile these helpers inside functions with the same target attribute and pick that path at run
// time (`__builtin_cpu_supports("avx2")`), with scalar `gauss4` as the portable fallback.
//
// Why: GCC does not vectorize the Philox round loop of philox.h nor the Box-Muller selects through
// inlining (measured: 50 ns per group, scalar), and on plain vector extensions it expands the 64-bit
// products into shift/add chains (35 ns per group); with vpmuludq it runs at a few ns per group. The Philox rounds here are
// philox.h's (Random123 multipliers and key increments) applied lane-wise; tests compare the
// resulting noise with the float64 reference, so any difference in the bits would show.
#pragma once

#include <immintrin.h>

#include <cmath>
#include <cstdint>

#include "common/philox.h"
#include "gaussian.h"

#define STABKERN_AVX2 inline __attribute__((always_inline, target("avx2,fma")))

namespace stabkern::noise {

typedef uint32_t u32x8 __attribute__((vector_size(32)));
typedef int32_t i32x8 __attribute__((vector_size(32)));
typedef float f32x8 __attribute__((vector_size(32)));

// hi and lo words of a * b lane-wise: even and odd lanes multiplied by vpmuludq, then interleaved.
STABKERN_AVX2 void mulhilo_x8(uint32_t a, u32x8 b, u32x8& hi, u32x8& lo) {
  const __m256i bv = (__m256i)b, av = _mm256_set1_epi32(int(a));
  const __m256i even = _mm256_mul_epu32(bv, av);
  const __m256i odd = _mm256_mul_epu32(_mm256_srli_epi64(bv, 32), av);
  hi = (u32x8)_mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
  lo = (u32x8)_mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
}

STABKERN_AVX2 f32x8 open_uniform_x8(u32x8 w) {
  return __builtin_convertvector((i32x8)(((w >> 9) << 1) | 1u), f32x8) * 5.9604644775390625e-08f;
}

STABKERN_AVX2 f32x8 log_positive_x8(f32x8 u) {
  const u32x8 bits = (u32x8)u;
  i32x8 e = (i32x8)((bits >> 23) & 0xffu) - 127;
  f32x8 m = (f32x8)((bits & 0x7fffffu) | 0x3f800000u);
  const i32x8 big = m > 1.41421356237f;
  m = big ? 0.5f * m : m;
  e = big ? e + 1 : e;
  const f32x8 s = (m - 1.0f) / (m + 1.0f);
  const f32x8 s2 = s * s;
  const f32x8 series =
      1.0f + s2 * (1.0f / 3 + s2 * (1.0f / 5 + s2 * (1.0f / 7 + s2 * (1.0f / 9 + s2 * (1.0f / 11)))));
  return __builtin_convertvector(e, f32x8) * kLn2 + 2.0f * s * series;
}

STABKERN_AVX2 void sincos_turns_x8(f32x8 v, f32x8& s, f32x8& c) {
  const f32x8 x = v > 0.5f ? v - 1.0f : v;
  const i32x8 q = __builtin_convertvector(4.0f * x + 2.5f, i32x8) - 2;
  const f32x8 t = (x - 0.25f * __builtin_convertvector(q, f32x8)) * kTwoPi;
  const f32x8 t2 = t * t;
  const f32x8 st = t * (1.0f - t2 / 6 * (1.0f - t2 / 20 * (1.0f - t2 / 42 * (1.0f - t2 / 72))));
  const f32x8 ct = 1.0f - t2 / 2 * (1.0f - t2 / 12 * (1.0f - t2 / 30 * (1.0f - t2 / 56)));
  const i32x8 r = q & 3;
  s = r == 0 ? st : (r == 1 ? ct : (r == 2 ? -st : -ct));
  c = r == 0 ? ct : (r == 1 ? -st : (r == 2 ? -ct : st));
}

STABKERN_AVX2 f32x8 sqrt_x8(f32x8 x) { return (f32x8)_mm256_sqrt_ps((__m256)x); }

// z[c][l] = element 4 (group0 + l) + c of the noise vector of (sample, trial), l < 8.
STABKERN_AVX2 void gauss4_x8(uint64_t seed, uint32_t stream, uint32_t sample, uint32_t trial, uint32_t group0,
                             f32x8 z[4]) {
  const u32x8 zero = {0, 0, 0, 0, 0, 0, 0, 0};
  u32x8 c0 = u32x8{0, 1, 2, 3, 4, 5, 6, 7} + group0;
  u32x8 c1 = zero + sample, c2 = zero + trial, c3 = zero + (stream + 1u);
  uint32_t k0 = uint32_t(seed), k1 = uint32_t(seed >> 32);
#pragma GCC unroll 10
  for (int round = 0; round < 10; ++round) {
    u32x8 hi0, lo0, hi1, lo1;
    mulhilo_x8(kPhiloxM0, c0, hi0, lo0);
    mulhilo_x8(kPhiloxM1, c2, hi1, lo1);
    c0 = hi1 ^ c1 ^ k0;
    c1 = lo1;
    c2 = hi0 ^ c3 ^ k1;
    c3 = lo0;
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
  }
  const f32x8 r0 = sqrt_x8(-2.0f * log_positive_x8(open_uniform_x8(c0)));
  const f32x8 r1 = sqrt_x8(-2.0f * log_positive_x8(open_uniform_x8(c2)));
  f32x8 s0, cs0, s1, cs1;
  sincos_turns_x8(open_uniform_x8(c1), s0, cs0);
  sincos_turns_x8(open_uniform_x8(c3), s1, cs1);
  z[0] = r0 * cs0;
  z[1] = r0 * s0;
  z[2] = r1 * cs1;
  z[3] = r1 * s1;
}

}  // namespace stabkern::noise
