// CPU sign-sketch kernels: y = x S^T (projection) and x_hat = scale * y S (reconstruction),
// with S = S[t0:t0+k, j0:j0+n] of spec stabkern-sign-v1 generated on the fly.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace stabkern::cpu {

struct SketchArgs {
  int64_t rows;     // leading rows of x / y (GEMM form when > 1)
  int64_t n;        // columns of S (length of x rows)
  int64_t k;        // rows of S (length of y rows)
  uint64_t seed;
  uint32_t stream;
  uint64_t t0;      // first row of S
  uint64_t j0;      // first column of S, a multiple of 128
  int num_threads;  // 0: OpenMP's default
};

// x: (rows, n) contiguous; y: (rows, k) contiguous, overwritten.
void project(const float* x, float* y, const SketchArgs& a);
void project(const double* x, double* y, const SketchArgs& a);

// y: (rows, k) contiguous; out: (rows, n) contiguous, overwritten.
void reconstruct(const float* y, float* out, double scale, const SketchArgs& a);
void reconstruct(const double* y, double* out, double scale, const SketchArgs& a);

// The instruction-set path float32 kernels take now: "avx512", "avx2" or "generic" (the best this
// CPU supports, or a lower one forced by STABKERN_CPU_ISA). float64 always takes "generic".
// Throws std::invalid_argument if STABKERN_CPU_ISA names an unknown or unsupported path.
const char* isa();

// The float32 kernel family a call (op "project" or "reconstruct", this many rows) takes now: "lut"
// (the GEMM form by table loads, sign_lut.h), "fma" (the GEMM form by FMAs, sign_gemm.h) or "table"
// (vpermps lookup tables; always on the generic path and for float64). The rule is family() in
// sign_kernels.cpp; STABKERN_CPU_KERNEL=lut|fma|table forces one. Throws std::invalid_argument for an unknown
// op, STABKERN_CPU_KERNEL or STABKERN_CPU_ISA.
const char* kernel(const std::string& op, int64_t rows);

// Rows of x / y per table of the LUT kernel a float32 call with this many rows would take now on the
// current path: 16 (AVX-512; AVX2 from 32 rows where the L1 data cache is >= 48 KiB) or 8 (AVX2
// otherwise; STABKERN_CPU_LUT_ROWS forces it); 0 on the generic path (no LUT kernel).
int lut_rows(int64_t rows);

// Every path this CPU can run, lowest first.
std::vector<std::string> available_isas();

}  // namespace stabkern::cpu
