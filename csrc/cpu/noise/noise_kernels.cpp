// CPU kernels of the stability meters (see gaussian.h for the noise mapping).
//
// Why this shape: one noise row (a sample's input to one layer, <= a few MB) stays in L1/L2,
// so each row is generated once into `out` while its squared norm accumulates, then rescaled
// and added to x in place; Philox runs once per four elements. (The Triton kernel regenerates
// instead, because a GPU row does not stay on chip.) Rows are independent: OpenMP splits rows,
// and each row is summed in a fixed order, so results do not depend on the thread count.
// Noise runs 8 groups per step on AVX2 (gaussian_simd.h), chosen at run time (STABKERN_CPU_ISA=generic
// forces the scalar path); scalar elsewhere.
#include "noise_kernels.h"

#include <omp.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>

#include "gaussian.h"
#include "gaussian_simd.h"

namespace stabkern::noise {
namespace {

constexpr int64_t kBlockGroups = 256;  // groups of 4 elements summed in float before the double total

int threads_of(int requested) { return requested > 0 ? requested : omp_get_max_threads(); }

// The noise of one row into out[0, n) (elements of groups >= group0 only), returning its sum of
// squares; scalar form, the portable path and the AVX2 path's tail.
template <typename T>
double noise_groups_scalar(T* out, int64_t n, int64_t group0, uint64_t seed, uint32_t stream, uint32_t sample,
                           uint32_t trial) {
  double total = 0;
  const int64_t groups = (n + 3) / 4;
  for (int64_t g = group0; g < groups; ++g) {
    const Gauss4 z = gauss4(seed, stream, sample, trial, uint32_t(g));
    for (int64_t c = 0; c < 4 && 4 * g + c < n; ++c) {
      out[4 * g + c] = T(z.z[c]);
      total += double(z.z[c]) * z.z[c];
    }
  }
  return total;
}

// Groups [0, 8 * (n / 32)) eight at a time: 4 x 8 values transposed to element order in
// registers, each block of kBlockGroups summed in float, blocks in double.
template <typename T>
__attribute__((target("avx2,fma"))) double noise_groups_avx2(T* out, int64_t n, uint64_t seed, uint32_t stream,
                                                           uint32_t sample, uint32_t trial, int64_t& done) {
  const int64_t full = (n / 32) * 8;
  double total = 0;
  for (int64_t b0 = 0; b0 < full; b0 += kBlockGroups) {
    const int64_t b1 = b0 + kBlockGroups < full ? b0 + kBlockGroups : full;
    f32x8 acc = {0, 0, 0, 0, 0, 0, 0, 0};
    for (int64_t g = b0; g < b1; g += 8) {
      f32x8 z[4];
      gauss4_x8(seed, stream, sample, trial, uint32_t(g), z);
      acc += z[0] * z[0] + z[1] * z[1] + z[2] * z[2] + z[3] * z[3];
      const __m256 ab_lo = _mm256_unpacklo_ps((__m256)z[0], (__m256)z[1]);
      const __m256 ab_hi = _mm256_unpackhi_ps((__m256)z[0], (__m256)z[1]);
      const __m256 cd_lo = _mm256_unpacklo_ps((__m256)z[2], (__m256)z[3]);
      const __m256 cd_hi = _mm256_unpackhi_ps((__m256)z[2], (__m256)z[3]);
      const __m256 q0 = _mm256_shuffle_ps(ab_lo, cd_lo, 0x44), q1 = _mm256_shuffle_ps(ab_lo, cd_lo, 0xEE);
      const __m256 q2 = _mm256_shuffle_ps(ab_hi, cd_hi, 0x44), q3 = _mm256_shuffle_ps(ab_hi, cd_hi, 0xEE);
      // q0 holds groups g and g + 4, q1 g + 1 and g + 5, q2 g + 2 and g + 6, q3 g + 3 and g + 7
      const __m256 rows[4] = {_mm256_permute2f128_ps(q0, q1, 0x20), _mm256_permute2f128_ps(q2, q3, 0x20),
                              _mm256_permute2f128_ps(q0, q1, 0x31), _mm256_permute2f128_ps(q2, q3, 0x31)};
      for (int k = 0; k < 4; ++k) {
        if constexpr (sizeof(T) == 4) {
          _mm256_storeu_ps(reinterpret_cast<float*>(out) + 4 * g + 8 * k, rows[k]);
        } else {
          _mm256_storeu_pd(reinterpret_cast<double*>(out) + 4 * g + 8 * k, _mm256_cvtps_pd(_mm256_castps256_ps128(rows[k])));
          _mm256_storeu_pd(reinterpret_cast<double*>(out) + 4 * g + 8 * k + 4, _mm256_cvtps_pd(_mm256_extractf128_ps(rows[k], 1)));
        }
      }
    }
    float block = 0;
    for (int l = 0; l < 8; ++l) block += acc[l];
    total += block;
  }
  done = full;
  return total;
}

template <typename T>
void noise_row(const T* x, double radius, T* out, int64_t n, uint64_t seed, uint32_t stream, uint32_t sample,
               uint32_t trial, bool avx2) {
  int64_t done = 0;
  double total = avx2 ? noise_groups_avx2(out, n, seed, stream, sample, trial, done) : 0.0;
  total += noise_groups_scalar(out, n, done, seed, stream, sample, trial);
  const T scale = T(radius / std::sqrt(total));
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) out[j] = x[j] + scale * out[j];
}

template <typename T>
void sphere_noise_impl(const T* x, const double* radius, T* out, const NoiseArgs& a) {
  const bool avx2 = std::strcmp(isa(), "avx2") == 0;  // read once per call, before the threads start
  const int64_t rows = a.trials * a.batch;
#pragma omp parallel for schedule(static) num_threads(threads_of(a.num_threads))
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t t = r / a.batch, b = r % a.batch;
    noise_row(x + b * a.n, radius[b], out + r * a.n, a.n, a.seed, a.stream, uint32_t(a.sample0 + b),
              uint32_t(a.trial0 + t), avx2);
  }
}

inline float to_float(float v) { return v; }
inline double to_float(double v) { return v; }
inline float to_float(uint16_t bf16) {
  const uint32_t bits = uint32_t(bf16) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

template <typename TH, typename TY, typename Acc>
void sq_error_impl(const TH* y_hat, const TY* y, double* out, int64_t rows, int64_t batch, int64_t m,
                   int num_threads) {
  constexpr int64_t kBlock = 1024;
#pragma omp parallel for schedule(static) num_threads(threads_of(num_threads))
  for (int64_t r = 0; r < rows; ++r) {
    const TH* a = y_hat + r * m;
    const TY* c = y + (r % batch) * m;
    double total = 0;
    for (int64_t j0 = 0; j0 < m; j0 += kBlock) {
      const int64_t j1 = j0 + kBlock < m ? j0 + kBlock : m;
      Acc acc = 0;
#pragma omp simd reduction(+ : acc)
      for (int64_t j = j0; j < j1; ++j) {
        const Acc d = Acc(to_float(a[j])) - Acc(c[j]);
        acc += d * d;
      }
      total += acc;
    }
    out[r] = total;
  }
}

}  // namespace

const char* isa() {
  // The same variable as the sign kernels: STABKERN_CPU_ISA=generic forces the scalar path (for tests on
  // any machine); avx2 and avx512 take the AVX2 path (the noise has no AVX-512 one) where the CPU has it.
  static const bool has_avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  static const bool has_avx512 = has_avx2 && __builtin_cpu_supports("avx512f");
  const char* env = std::getenv("STABKERN_CPU_ISA");
  if (env == nullptr || env[0] == '\0' || std::strcmp(env, "auto") == 0) return has_avx2 ? "avx2" : "generic";
  if (std::strcmp(env, "generic") == 0) return "generic";
  const bool avx512 = std::strcmp(env, "avx512") == 0;
  if (!avx512 && std::strcmp(env, "avx2") != 0)
    throw std::invalid_argument(std::string("STABKERN_CPU_ISA must be auto, generic, avx2 or avx512, got '") + env +
                                "'");
  if (avx512 ? !has_avx512 : !has_avx2)
    throw std::invalid_argument(std::string("STABKERN_CPU_ISA=") + env + " but this CPU does not support it");
  return "avx2";
}

void sphere_noise(const float* x, const double* radius, float* out, const NoiseArgs& a) {
  sphere_noise_impl(x, radius, out, a);
}
void sphere_noise(const double* x, const double* radius, double* out, const NoiseArgs& a) {
  sphere_noise_impl(x, radius, out, a);
}
void sq_error(const float* y_hat, const float* y, double* out, int64_t rows, int64_t batch, int64_t m, int nt) {
  sq_error_impl<float, float, float>(y_hat, y, out, rows, batch, m, nt);
}
void sq_error(const double* y_hat, const double* y, double* out, int64_t rows, int64_t batch, int64_t m, int nt) {
  sq_error_impl<double, double, double>(y_hat, y, out, rows, batch, m, nt);
}
void sq_error_bf16(const uint16_t* y_hat, const float* y, double* out, int64_t rows, int64_t batch, int64_t m,
                   int nt) {
  sq_error_impl<uint16_t, float, float>(y_hat, y, out, rows, batch, m, nt);
}

}  // namespace stabkern::noise
