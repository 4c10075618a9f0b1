// CPU kernels of the stability meters: sphere noise injection and the per-row squared error.
#pragma once

#include <cstdint>

namespace stabkern::noise {

struct NoiseArgs {
  int64_t batch;    // B: rows of x
  int64_t n;        // elements per row
  int64_t trials;   // T: out has T * B rows, row t * B + b
  uint32_t sample0; // sample index of x row 0 (the counter word 1 is sample0 + b)
  uint32_t trial0;  // trial index of out block 0 (the counter word 2 is trial0 + t)
  uint64_t seed;
  uint32_t stream;
  int num_threads;  // 0: OpenMP's default
};

// The noise path the kernels take now, "avx2" or "generic": the CPU's best unless STABKERN_CPU_ISA forces
// one (generic; avx2 and avx512 both mean the AVX2 path). Throws std::invalid_argument for a value that is
// unknown or that this CPU cannot run, before any work starts.
const char* isa();

// out[t B + b] = x[b] + radius[b] z / ||z||, z the stabkern-noise-v1 Gaussian vector of
// (sample0 + b, trial0 + t). x: (B, n), radius: (B,), out: (T B, n), all contiguous.
void sphere_noise(const float* x, const double* radius, float* out, const NoiseArgs& a);
void sphere_noise(const double* x, const double* radius, double* out, const NoiseArgs& a);

// out[r] = sum_j (y_hat[r, j] - y[r mod B, j])^2 for r < rows. y_hat: (rows, m), y: (B, m).
// y_hat_bf16 holds bfloat16 bits.
void sq_error(const float* y_hat, const float* y, double* out, int64_t rows, int64_t batch, int64_t m,
              int num_threads);
void sq_error(const double* y_hat, const double* y, double* out, int64_t rows, int64_t batch, int64_t m,
              int num_threads);
void sq_error_bf16(const uint16_t* y_hat, const float* y, double* out, int64_t rows, int64_t batch, int64_t m,
                   int num_threads);

}  // namespace stabkern::noise
