// CUDA sign kernels: y = x S^T (projection) and out = scale * y S (reconstruction), with
// S = S[t0:t0+k, j0:j0+n] of spec stabkern-sign-v1 generated on the fly (csrc/common/philox.h).
//
// Two forms:
//  - kGemv (gemv.cu): CUDA cores, any dtype, float32 sums (float64 for float64 input); exact
//    float32 arithmetic whatever the precision mode.
//  - kGemm (gemm.cu): tensor cores (mma.sync m16n8k16 bf16, sm_80+): the +-1 operand is built in
//    registers from Philox bits, the other operand is split into `terms` bf16 pieces by a packing
//    pass into the workspace. float32/float16/bfloat16 input only.
// Both split the reduction into `splits` partial results when asked and sum them in a fixed order
// (deterministic, no atomics). Every launch is checked; failures throw std::runtime_error.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace stabkern::cuda {

enum class DType : int { kF32 = 0, kF64 = 1, kF16 = 2, kBF16 = 3 };
enum class Form : int { kGemv = 0, kGemm = 1 };

struct SignParams {
  const void* in = nullptr;  // project: x (rows, n); reconstruct: y (rows, k); row-major, contiguous
  void* out = nullptr;       // project: (rows, k); reconstruct: (rows, n); float32 (float64 for kF64 input)
  void* work = nullptr;      // workspace of workspace_bytes() bytes, 16-byte aligned (may be null if 0)
  size_t work_bytes = 0;
  DType dtype = DType::kF32;
  int64_t rows = 0, n = 0, k = 0;
  uint64_t seed = 0;
  uint32_t stream = 0;
  uint32_t t0 = 0;  // first row of S (t0 + k <= 2^32)
  uint64_t j0 = 0;  // first column of S, a multiple of 128 (j0 + n <= 2^38)
  double scale = 1.0;  // reconstruction only
  int terms = 3;   // kGemm: bf16 terms of the split operand, 1..3
  int splits = 1;  // partial results along the reduction, 1..65535
  int device = 0;  // CUDA device of the pointers and of `stream`
};

// Bytes of workspace a call needs (partial results; for kGemm also the packed operand).
size_t workspace_bytes(bool project, Form form, const SignParams& p);

// Throw std::invalid_argument naming the first bad field, if any (sizes, ranges, dtype, form).
void validate(bool project, Form form, const SignParams& p);
// validate() plus pointers and workspace size.
void check_workspace(bool project, Form form, const SignParams& p);

// Launch on `stream` (asynchronous) after check_workspace().
void project(Form form, const SignParams& p, cudaStream_t stream);
void reconstruct(Form form, const SignParams& p, cudaStream_t stream);

// ---- internal launchers (gemv.cu, gemm.cu); `part` is the output or the partial-result buffer.
namespace detail {
void project_gemv(const SignParams& p, void* part, cudaStream_t stream);
void reconstruct_gemv(const SignParams& p, void* part, cudaStream_t stream);
// out[r][c] = sum over split s, then stacked row i, of part[s][r * stack + i][c], in that order.
void sum_splits(const void* part, void* out, int64_t rows, int64_t cols, int splits, int stack, bool f64,
                cudaStream_t stream);
// kGemm: rows of the packed operand per input row (the bf16 terms stacked as rows when rows * terms
// <= 16; 1 otherwise).
int stacked_rows(const SignParams& p);
size_t packed_bytes(bool project, const SignParams& p);
void project_gemm(const SignParams& p, void* packed, float* part, cudaStream_t stream);
void reconstruct_gemm(const SignParams& p, void* packed, float* part, cudaStream_t stream);
void check_launch(const char* what);  // cudaGetLastError -> std::runtime_error
}  // namespace detail

}  // namespace stabkern::cuda
