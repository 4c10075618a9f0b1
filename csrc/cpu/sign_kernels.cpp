// Placeholder scalar kernels; replaced by the SIMD implementation.
#include "sign_kernels.h"

#include <omp.h>

#include <vector>

#include "../common/philox.h"

namespace stabkern::cpu {
namespace {

template <typename T>
void project_impl(const T* x, T* y, const SketchArgs& a) {
  const int threads = a.num_threads > 0 ? a.num_threads : omp_get_max_threads();
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t t = 0; t < a.k; ++t) {
    for (int64_t r = 0; r < a.rows; ++r) {
      const T* xr = x + r * a.n;
      double acc = 0;
      for (int64_t j = 0; j < a.n; j += 128) {
        const Philox4 bits = sign_bits(a.seed, a.stream, uint32_t(a.t0 + t), uint32_t((a.j0 + j) >> 7));
        const int64_t m = a.n - j < 128 ? a.n - j : 128;
        for (int64_t i = 0; i < m; ++i) {
          const bool plus = (bits.w[i >> 5] >> (i & 31)) & 1u;
          acc += plus ? double(xr[j + i]) : -double(xr[j + i]);
        }
      }
      y[r * a.k + t] = T(acc);
    }
  }
}

template <typename T>
void reconstruct_impl(const T* y, T* out, double scale, const SketchArgs& a) {
  const int threads = a.num_threads > 0 ? a.num_threads : omp_get_max_threads();
  const int64_t groups = (a.n + 127) / 128;
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t g = 0; g < groups; ++g) {
    const int64_t j = g * 128;
    const int64_t m = a.n - j < 128 ? a.n - j : 128;
    for (int64_t r = 0; r < a.rows; ++r) {
      double acc[128] = {0};
      for (int64_t t = 0; t < a.k; ++t) {
        const Philox4 bits = sign_bits(a.seed, a.stream, uint32_t(a.t0 + t), uint32_t((a.j0 + j) >> 7));
        const double v = double(y[r * a.k + t]);
        for (int64_t i = 0; i < m; ++i) acc[i] += ((bits.w[i >> 5] >> (i & 31)) & 1u) ? v : -v;
      }
      for (int64_t i = 0; i < m; ++i) out[r * a.n + j + i] = T(scale * acc[i]);
    }
  }
}

}  // namespace

void project(const float* x, float* y, const SketchArgs& a) { project_impl(x, y, a); }
void project(const double* x, double* y, const SketchArgs& a) { project_impl(x, y, a); }
void reconstruct(const float* y, float* out, double s, const SketchArgs& a) { reconstruct_impl(y, out, s, a); }
void reconstruct(const double* y, double* out, double s, const SketchArgs& a) { reconstruct_impl(y, out, s, a); }
const char* isa() { return "generic"; }

}  // namespace stabkern::cpu
