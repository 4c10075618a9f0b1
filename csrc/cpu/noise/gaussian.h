// Counter-based Gaussian noise of spec stabkern-noise-v1, for host and device.
//
// Element j of the noise vector of (sample s, trial t) under (seed, stream) is
//   (w0, w1, w2, w3) = Philox4x32-10(key = (seed lo, seed hi), counter = (j >> 2, s, t, stream + 1))
//   pair p = (j >> 1) & 1 uses (a, b) = (w_{2p}, w_{2p+1}):
//   u = (2 (a >> 9) + 1) 2^-24, v = (2 (b >> 9) + 1) 2^-24     (odd multiples of 2^-24, in (0, 1))
//   z = sqrt(-2 ln u) cos(2 pi v) for even j, sqrt(-2 ln u) sin(2 pi v) for odd j   (Box-Muller)
// so one Philox call yields four Gaussians. Counter word 3 is stream + 1: the sign spec
// (stabkern-sign-v1) uses 0 there, so signs and noise never share a counter under one seed.
// |z| <= sqrt(48 ln 2) = 5.77: the tail beyond 5.77 sigma (probability 8e-9) is cut.
//
// ln and sincos are short polynomials (no calls, no branches); they agree with the float64
// reference to about 1e-7 relative. `gauss4` is the scalar form (host or device); the CPU
// kernels use `gauss4_x8` (gaussian_simd.h), the same arithmetic on 8 groups at once.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "common/philox.h"

namespace stabkern::noise {

constexpr float kLn2 = 0.693147180559945309f;
constexpr float kTwoPi = 6.28318530717958647692f;

// An odd multiple of 2^-24 in (0, 1) from the top 23 bits of w; exact in float.
STABKERN_HD float open_uniform(uint32_t w) { return float(((w >> 9) << 1) | 1u) * 5.9604644775390625e-08f; }

// ln(u) for normal positive u: u = m 2^e with m in [sqrt(1/2), sqrt(2)), ln m = 2 atanh(s),
// s = (m - 1) / (m + 1), |s| <= 0.172, series to s^11 (truncation < 1e-9).
STABKERN_HD float log_positive(float u) {
  uint32_t bits;
  bits = __builtin_bit_cast(uint32_t, u);
  int e = int((bits >> 23) & 0xffu) - 127;
  uint32_t mbits = (bits & 0x7fffffu) | 0x3f800000u;
  float m;
  m = __builtin_bit_cast(float, mbits);
  const bool big = m > 1.41421356237f;
  m = big ? 0.5f * m : m;
  e = big ? e + 1 : e;
  const float s = (m - 1.0f) / (m + 1.0f);
  const float s2 = s * s;
  const float series =
      1.0f + s2 * (1.0f / 3 + s2 * (1.0f / 5 + s2 * (1.0f / 7 + s2 * (1.0f / 9 + s2 * (1.0f / 11)))));
  return float(e) * kLn2 + 2.0f * s * series;
}

// sin and cos of 2 pi v for v in (0, 1): reduce to x in (-1/2, 1/2] turns, then to the nearest
// quarter turn q, f = x - q / 4 in [-1/8, 1/8]; Taylor polynomials on |2 pi f| <= pi / 4
// (sin to f^9, cos to f^8: truncation < 3e-8), rotated back by q quarter turns.
STABKERN_HD void sincos_turns(float v, float& s, float& c) {
  const float x = v > 0.5f ? v - 1.0f : v;
  const int q = int(4.0f * x + 2.5f) - 2;  // round(4x), 4x + 2.5 > 0
  const float t = (x - 0.25f * float(q)) * kTwoPi;
  const float t2 = t * t;
  const float st = t * (1.0f - t2 / 6 * (1.0f - t2 / 20 * (1.0f - t2 / 42 * (1.0f - t2 / 72))));
  const float ct = 1.0f - t2 / 2 * (1.0f - t2 / 12 * (1.0f - t2 / 30 * (1.0f - t2 / 56)));
  const int r = q & 3;  // rotation by r quarter turns: (sin, cos) -> (cos, -sin) per turn
  s = r == 0 ? st : (r == 1 ? ct : (r == 2 ? -st : -ct));
  c = r == 0 ? ct : (r == 1 ? -st : (r == 2 ? -ct : st));
}

struct Gauss4 {
  float z[4];
};

// The four Gaussians of elements 4 group .. 4 group + 3 of the noise vector of (sample, trial).
STABKERN_HD Gauss4 gauss4(uint64_t seed, uint32_t stream, uint32_t sample, uint32_t trial, uint32_t group) {
  const Philox4 w = philox4x32_10(group, sample, trial, stream + 1u, uint32_t(seed), uint32_t(seed >> 32));
  Gauss4 g;
  const float r0 = std::sqrt(-2.0f * log_positive(open_uniform(w.w[0])));
  const float r1 = std::sqrt(-2.0f * log_positive(open_uniform(w.w[2])));
  float s0, c0, s1, c1;
  sincos_turns(open_uniform(w.w[1]), s0, c0);
  sincos_turns(open_uniform(w.w[3]), s1, c1);
  g.z[0] = r0 * c0;
  g.z[1] = r0 * s0;
  g.z[2] = r1 * c1;
  g.z[3] = r1 * s1;
  return g;
}

}  // namespace stabkern::noise
