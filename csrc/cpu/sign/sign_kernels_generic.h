// Portable sign kernels (any C++17 compiler, x86-64 or aarch64): the fallback path, and the only
// path for float64.
//
// Projection looks up 4 columns at a time: for each group of 4 columns the 16 signed sums
// +-x0 +-x1 +-x2 +-x3 are tabulated once per row of x and shared by every row of S, so each
// row t adds one table entry per 4 columns, indexed by 4 of its sign bits. Eight rows of S are
// interleaved so the additions form 8 independent chains instead of one long dependency.
// Reconstruction adds +-y[t] to 128 column accumulators per row of S, picking the sign by xor with
// a 256-entry table of sign-bit patterns, 8 columns per lookup.
#pragma once

#include <array>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "common/philox.h"
#include "kernel_contract.h"

namespace stabkern::cpu {

template <typename Elem>
struct GenericKernel {
  using T = Elem;
  static constexpr int kLanes = 8;
  static constexpr int kTable = 32 * 16;  // 32 groups of 4 columns x 16 sign patterns

  static void words(const SignKey& key, uint32_t t, int ntg, uint32_t group, uint32_t* out) {
    for (int g = 0; g < ntg; ++g) {
      for (int l = 0; l < kLanes; ++l) {
        const uint32_t row = t + uint32_t(g * kLanes + l);
        const Philox4 w = philox4x32_10(group, row, key.stream, 0u, key.k0, key.k1);
        for (int q = 0; q < 4; ++q) out[(g * 4 + q) * kLanes + l] = w.w[q];
      }
    }
  }

  // tab[4-column group c][pattern s] = ((x0 s0 + x1 s1) + x2 s2) + x3 s3 with s_i = +1 if bit i of s.
  static void tables(const T* x, T* tab) {
    for (int c = 0; c < 32; ++c) {
      const T* xc = x + 4 * c;
      for (int s = 0; s < 16; ++s) {
        T v = xc[0] * sign(s, 0);
        v = v + xc[1] * sign(s, 1);
        v = v + xc[2] * sign(s, 2);
        v = v + xc[3] * sign(s, 3);
        tab[16 * c + s] = v;
      }
    }
  }

  static void project(const T* tab, int R, const uint32_t* words, int ntg, T* part, int64_t ldp) {
    for (int r = 0; r < R; ++r) {
      const T* tr = tab + r * kTable;
      for (int g = 0; g < ntg; ++g) {
        T* p = part + r * ldp + g * kLanes;
        const uint32_t* w = words + g * 4 * kLanes;
        T acc[kLanes];
        for (int l = 0; l < kLanes; ++l) acc[l] = p[l];
        for (int q = 0; q < 4; ++q) {
          for (int i = 0; i < 8; ++i) {
            const T* e = tr + (8 * q + i) * 16;
            for (int l = 0; l < kLanes; ++l) acc[l] += e[(w[q * kLanes + l] >> (4 * i)) & 15u];
          }
        }
        for (int l = 0; l < kLanes; ++l) p[l] = acc[l];
      }
    }
  }

  // -y is y with its sign bit flipped: xor with kFlip[byte of sign bits] gives +-y for 8 columns
  // at once, a branch-free loop compilers vectorize with any SIMD width.
  static void reconstruct(const T* y, int64_t ldy, int R, const uint32_t* words, int ng, int kt, T* part,
                          int64_t ldp) {
    const FlipTable& flip = flip_table();
    for (int i = 0; i < ng; ++i) {
      const uint32_t* wg = words + i * kMaxChunkRows * 4;
      for (int r = 0; r < R; ++r) {
        T* p = part + r * ldp + i * kGroupCols;
        for (int t = 0; t < kt; ++t) {
          Bits yb;
          std::memcpy(&yb, y + r * ldy + t, sizeof(T));
          const uint32_t* w = wg + (t / kLanes) * 4 * kLanes + t % kLanes;
          for (int q = 0; q < 4; ++q) {
            for (int byte = 0; byte < 4; ++byte) {
              const Bits* f = flip[(w[q * kLanes] >> (8 * byte)) & 255u].data();
              T* pb = p + 32 * q + 8 * byte;
              for (int b = 0; b < 8; ++b) {
                const Bits v = yb ^ f[b];
                T term;
                std::memcpy(&term, &v, sizeof(T));
                pb[b] += term;
              }
            }
          }
        }
      }
    }
  }

 private:
  using Bits = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;
  using FlipTable = std::array<std::array<Bits, 8>, 256>;

  // flip[b][i] = the sign bit of T if bit i of b is clear (S = -1), else 0.
  static const FlipTable& flip_table() {
    static const FlipTable table = [] {
      FlipTable f{};
      for (int b = 0; b < 256; ++b)
        for (int i = 0; i < 8; ++i) f[b][i] = (b >> i) & 1 ? Bits(0) : Bits(1) << (8 * sizeof(T) - 1);
      return f;
    }();
    return table;
  }

  static T sign(int s, int bit) { return (s >> bit) & 1 ? T(1) : T(-1); }
};

}  // namespace stabkern::cpu
