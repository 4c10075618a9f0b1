// Philox4x32-10 (Random123) and the sign spec stabkern-sign-v1, for host and device.
//
// One implementation serves the C++ (`_cpu`) and CUDA (`_cuda`) modules, so both draw the
// same bits. sign(seed, stream, t, j) is bit (j & 31) of word (j >> 5) & 3 of
// Philox4x32-10(key = (seed lo, seed hi), counter = (j >> 7, t, stream, 0)): set means +1.
// One call yields the signs of 128 consecutive columns of one row; kernels use all of them.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define STABKERN_HD __host__ __device__ __forceinline__
#else
#define STABKERN_HD inline
#endif

namespace stabkern {

constexpr uint32_t kPhiloxM0 = 0xD2511F53u;
constexpr uint32_t kPhiloxM1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u;
constexpr uint32_t kPhiloxW1 = 0xBB67AE85u;

// Largest row count and column count the counter layout addresses (t < 2^32, j < 2^38).
constexpr uint64_t kMaxRows = uint64_t(1) << 32;
constexpr uint64_t kMaxCols = uint64_t(1) << 38;

struct Philox4 {
  uint32_t w[4];
};

STABKERN_HD void mulhilo32(uint32_t a, uint32_t b, uint32_t& hi, uint32_t& lo) {
#if defined(__CUDA_ARCH__)
  lo = a * b;
  hi = __umulhi(a, b);
#else
  const uint64_t p = uint64_t(a) * uint64_t(b);
  lo = uint32_t(p);
  hi = uint32_t(p >> 32);
#endif
}

STABKERN_HD Philox4 philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0,
                                  uint32_t k1) {
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int round = 0; round < 10; ++round) {
    uint32_t hi0, lo0, hi1, lo1;
    mulhilo32(kPhiloxM0, c0, hi0, lo0);
    mulhilo32(kPhiloxM1, c2, hi1, lo1);
    const uint32_t n0 = hi1 ^ c1 ^ k0, n2 = hi0 ^ c3 ^ k1;
    c0 = n0;
    c1 = lo1;
    c2 = n2;
    c3 = lo0;
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
  }
  return Philox4{{c0, c1, c2, c3}};
}

// The 128 sign bits of row t, columns [128 * group, 128 * group + 128): bit b of word w is
// column 128 * group + 32 * w + b; a set bit is +1.
STABKERN_HD Philox4 sign_bits(uint64_t seed, uint32_t stream, uint32_t t, uint32_t group) {
  return philox4x32_10(group, t, stream, 0u, uint32_t(seed), uint32_t(seed >> 32));
}

}  // namespace stabkern
