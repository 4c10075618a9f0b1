// Host emulation of gemm.cu's data flow (see emulate.h). Each function walks the warps' tiles in
// the kernels' order, builds every lane's fragments with fragments.h and feeds them to `mma`,
// which models mma.m16n8k16 from the PTX ISA fragment layout (not from fragments.h).
#include "emulate.h"

#include <array>
#include <cstring>
#include <vector>

#include "common/philox.h"
#include "fragments.h"

namespace stabkern::cuda::emulate {
namespace {

using frag::U32x4;
using Acc = std::array<float, 4>;  // one lane's accumulator fragment c0..c3

float bf16_value(uint32_t half) { return frag::bits_float(half << 16); }

// d += A B for one m16n8k16 tile given every lane's fragments (PTX ISA layout, lane = 4 g + q).
// Products are exact (bf16 x +-1); the 16 of each output are summed exactly, then rounded once.
void mma(std::array<Acc, 32>& d, const std::array<U32x4, 32>& a, const std::array<std::array<uint32_t, 2>, 32>& b) {
  float A[16][16], B[16][8];
  for (int lane = 0; lane < 32; ++lane) {
    const int g = lane >> 2, q = lane & 3;
    for (int r = 0; r < 4; ++r) {  // a0: (g, 2q..), a1: (g + 8, 2q..), a2: (g, 2q + 8..), a3: (g + 8, 2q + 8..)
      const int row = g + 8 * (r & 1), col = 2 * q + 8 * (r >> 1);
      A[row][col] = bf16_value(a[lane].r[r] & 0xFFFF);
      A[row][col + 1] = bf16_value(a[lane].r[r] >> 16);
    }
    for (int r = 0; r < 2; ++r) {  // b0: (2q.., g), b1: (2q + 8.., g)
      B[2 * q + 8 * r][g] = bf16_value(b[lane][r] & 0xFFFF);
      B[2 * q + 8 * r + 1][g] = bf16_value(b[lane][r] >> 16);
    }
  }
  for (int lane = 0; lane < 32; ++lane) {
    const int g = lane >> 2, q = lane & 3;
    for (int c = 0; c < 4; ++c) {  // c0: (g, 2q), c1: (g, 2q + 1), c2: (g + 8, 2q), c3: (g + 8, 2q + 1)
      const int row = g + 8 * (c >> 1), col = 2 * q + (c & 1);
      double sum = 0;
      for (int kk = 0; kk < 16; ++kk) sum += double(A[row][kk]) * double(B[kk][col]);
      d[lane][c] = float(double(d[lane][c]) + sum);
    }
  }
}

// The kernels' view of the operand: stacked rows when few (frag::stack_of), as pack_kernel packs it.
struct Stacked {
  const float* in;
  int64_t rows, cols;
  int stack;
  float operator()(int64_t r, int64_t c) const {
    const int64_t row = r / stack;
    if (row >= rows || c >= cols) return 0.0f;
    return stack == 1 ? in[row * cols + c] : frag::term_value(in[row * cols + c], int(r % stack));
  }
};

// out[r][c] = sum over the stacked rows of part (in order), as sum_splits_kernel does.
void unstack(const std::vector<float>& part, float* out, int64_t rows, int64_t cols, int stack) {
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) {
      float s = 0;
      for (int i = 0; i < stack; ++i) s += part[(r * stack + i) * cols + c];
      out[r * cols + c] = s;
    }
  }
}

}  // namespace

void project_mma(const float* x, float* y, int64_t rows, int64_t n, int64_t k, uint64_t seed, uint32_t stream,
                 uint32_t t0, uint64_t j0, int terms) {
  const int stack = frag::stack_of(rows, terms);
  const Stacked load{x, rows, n, stack};
  const int64_t vrows = rows * stack;
  if (stack > 1) terms = 1;
  const auto col_of = [](int64_t S, int q, int e) { return frag::project_col(S, q, e); };
  const int64_t mtiles = (vrows + 15) / 16, ntiles = (k + 7) / 8, superblocks = (n + 511) / 512;
  const uint32_t group0 = uint32_t(j0 >> 7);
  std::vector<float> part(size_t(vrows * k));
  for (int64_t mt = 0; mt < mtiles; ++mt) {
    for (int64_t nt = 0; nt < ntiles; ++nt) {
      std::array<Acc, 32> acc{};
      for (int64_t sb = 0; sb < superblocks; ++sb) {
        uint32_t words[32][4];
        for (int lane = 0; lane < 32; ++lane) {
          const Philox4 w = sign_bits(seed, stream, t0 + uint32_t(8 * nt + (lane >> 2)),
                                      group0 + uint32_t(4 * sb + (lane & 3)));
          std::memcpy(words[lane], w.w, sizeof(words[lane]));
        }
        for (int s = 0; s < 32; ++s) {
          std::array<std::array<uint32_t, 2>, 32> b;
          for (int lane = 0; lane < 32; ++lane) frag::project_b(words[lane], s, b[lane][0], b[lane][1]);
          for (int term = 0; term < terms; ++term) {
            std::array<U32x4, 32> a;
            for (int lane = 0; lane < 32; ++lane) {
              U32x4 all[3];
              frag::pack_a(load, col_of, mt, 32 * sb + s, lane, terms, all);
              a[lane] = all[term];
            }
            mma(acc, a, b);
          }
        }
      }
      for (int lane = 0; lane < 32; ++lane) {
        for (int c = 0; c < 4; ++c) {
          const int64_t row = 16 * mt + (lane >> 2) + 8 * (c >> 1), t = 8 * nt + 2 * (lane & 3) + (c & 1);
          if (row < vrows && t < k) part[row * k + t] = acc[lane][c];
        }
      }
    }
  }
  unstack(part, y, rows, k, stack);
}

void reconstruct_mma(const float* y, float* out, int64_t rows, int64_t n, int64_t k, double scale, uint64_t seed,
                     uint32_t stream, uint32_t t0, uint64_t j0, int terms) {
  const int stack = frag::stack_of(rows, terms);
  const Stacked load{y, rows, k, stack};
  const int64_t vrows = rows * stack;
  if (stack > 1) terms = 1;
  const auto col_of = [](int64_t S, int q, int e) { return 16 * S + frag::k_of_slot(q, e); };
  const int64_t mtiles = (vrows + 15) / 16, groups = (n + 127) / 128, chunks = (k + 31) / 32;
  std::vector<float> part(size_t(vrows * n));
  for (int64_t mt = 0; mt < mtiles; ++mt) {
    for (int64_t group = 0; group < groups; ++group) {
      std::vector<std::array<Acc, 32>> acc(16);  // per n-tile
      for (int64_t c = 0; c < chunks; ++c) {
        uint32_t xch[4][4][8];  // [q][word][slot]: what the lanes write to shared memory
        for (int lane = 0; lane < 32; ++lane) {
          const int g = lane >> 2, q = lane & 3;
          const Philox4 w = sign_bits(seed, stream, t0 + uint32_t(32 * c + frag::recon_slot_t(q, g)),
                                      uint32_t(j0 >> 7) + uint32_t(group));
          for (int word = 0; word < 4; ++word) xch[q][word][g] = w.w[word];
        }
        uint32_t merged[32][4];
        for (int lane = 0; lane < 32; ++lane) {
          const int g = lane >> 2, q = lane & 3;
          const uint32_t* slots = xch[q][g >> 1];
          for (int m = 0; m < 4; ++m) merged[lane][m] = frag::recon_merge(slots[2 * m], slots[2 * m + 1], g & 1);
        }
        for (int s = 0; s < 2; ++s) {
          std::vector<std::array<U32x4, 32>> a(terms);
          for (int lane = 0; lane < 32; ++lane) {
            U32x4 all[3];
            frag::pack_a(load, col_of, mt, 2 * c + s, lane, terms, all);
            for (int term = 0; term < terms; ++term) a[term][lane] = all[term];
          }
          for (int nt = 0; nt < 16; ++nt) {
            std::array<std::array<uint32_t, 2>, 32> b;
            for (int lane = 0; lane < 32; ++lane) {
              b[lane][0] = frag::sign_pair(merged[lane][2 * s], nt);
              b[lane][1] = frag::sign_pair(merged[lane][2 * s + 1], nt);
            }
            for (int term = 0; term < terms; ++term) mma(acc[nt], a[term], b);
          }
        }
      }
      for (int lane = 0; lane < 32; ++lane) {
        for (int c = 0; c < 4; ++c) {
          const int64_t row = 16 * mt + (lane >> 2) + 8 * (c >> 1);
          for (int nt = 0; nt < 16; ++nt) {
            const int64_t col = 128 * group + frag::recon_out_col(lane & 3, nt, c);
            if (row < vrows && col < n) part[row * n + col] = acc[nt][lane][c] * float(scale);
          }
        }
      }
    }
  }
  unstack(part, out, rows, n, stack);
}

}  // namespace stabkern::cuda::emulate
