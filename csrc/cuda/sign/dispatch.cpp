// Host side of the CUDA sign kernels: argument validation, workspace layout, launch order
// (pack -> main kernel -> fixed-order sum of partial results) and launch checking.
#include <cuda_runtime_api.h>

#include <stdexcept>
#include <string>

#include "common/philox.h"
#include "sign_cuda.h"

namespace stabkern::cuda {
namespace {

[[noreturn]] void bad(const std::string& what) { throw std::invalid_argument("stabkern._cuda: " + what); }

size_t out_elem_bytes(const SignParams& p) { return p.dtype == DType::kF64 ? 8 : 4; }

size_t align16(size_t v) { return (v + 15) / 16 * 16; }

int stack_of(Form form, const SignParams& p) { return form == Form::kGemm ? detail::stacked_rows(p) : 1; }

// Partial results (when split, or with stacked rows) live at the start of the workspace, the packed
// operand after.
size_t partial_bytes(bool project, Form form, const SignParams& p) {
  const int stack = stack_of(form, p);
  if (p.splits == 1 && stack == 1) return 0;
  const size_t cols = size_t(project ? p.k : p.n);
  return align16(size_t(p.splits) * size_t(p.rows) * size_t(stack) * cols * out_elem_bytes(p));
}

void set_device(int device) {
  const cudaError_t err = cudaSetDevice(device);
  if (err != cudaSuccess) {
    throw std::runtime_error(std::string("stabkern._cuda: cudaSetDevice(") + std::to_string(device) +
                             ") failed: " + cudaGetErrorString(err));
  }
}

void run(bool project, Form form, const SignParams& p, cudaStream_t stream) {
  check_workspace(project, form, p);
  set_device(p.device);
  char* work = static_cast<char*>(p.work);
  const int stack = stack_of(form, p);
  void* part = (p.splits == 1 && stack == 1) ? p.out : work;
  if (form == Form::kGemv) {
    if (project) detail::project_gemv(p, part, stream);
    else detail::reconstruct_gemv(p, part, stream);
  } else {
    void* packed = work + partial_bytes(project, form, p);
    float* fpart = static_cast<float*>(part);
    if (project) detail::project_gemm(p, packed, fpart, stream);
    else detail::reconstruct_gemm(p, packed, fpart, stream);
  }
  if (part != p.out) {
    detail::sum_splits(part, p.out, p.rows, project ? p.k : p.n, p.splits, stack, p.dtype == DType::kF64, stream);
  }
}

}  // namespace

namespace detail {
void check_launch(const char* what) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) {
    throw std::runtime_error(std::string("stabkern._cuda: ") + what + " failed to launch: " + cudaGetErrorString(err));
  }
}
}  // namespace detail

size_t workspace_bytes(bool project, Form form, const SignParams& p) {
  validate(project, form, p);
  const size_t packed = form == Form::kGemm ? detail::packed_bytes(project, p) : 0;
  return partial_bytes(project, form, p) + packed;
}

void validate(bool project, Form form, const SignParams& p) {
  if (form != Form::kGemv && form != Form::kGemm) bad("form must be 0 (gemv) or 1 (gemm)");
  const int dt = static_cast<int>(p.dtype);
  if (dt < 0 || dt > 3) bad("dtype code must be 0 (f32), 1 (f64), 2 (f16) or 3 (bf16)");
  if (form == Form::kGemm && p.dtype == DType::kF64) bad("the GEMM form takes float32, float16 or bfloat16 input");
  if (p.rows <= 0 || p.n <= 0 || p.k <= 0) bad("rows, n and k must be positive");
  if (uint64_t(p.t0) + uint64_t(p.k) > kMaxRows) bad("t0 + k must be <= 2^32");
  if (p.j0 % 128 != 0) bad("j0 must be a multiple of 128");
  if (p.j0 + uint64_t(p.n) > kMaxCols) bad("j0 + n must be <= 2^38");
  if (p.terms < 1 || p.terms > 3) bad("terms must be 1, 2 or 3");
  if (p.splits < 1 || p.splits > 65535) bad("splits must be in [1, 65535]");
  // The m-tiles of the GEMM form, padded to a multiple of 8, run along grid.y (at most 65535); grid.x
  // always fits (k < 2^32, n < 2^38).
  if (form == Form::kGemm && (p.rows + 15) / 16 > 65528) bad("the GEMM form takes at most 16 * 65528 rows");
  if (reinterpret_cast<uintptr_t>(p.work) % 16 != 0) bad("the workspace must be 16-byte aligned");
}

void check_workspace(bool project, Form form, const SignParams& p) {
  if (p.in == nullptr || p.out == nullptr) bad("null input or output pointer");
  const size_t need = workspace_bytes(project, form, p);
  if (need > p.work_bytes || (need > 0 && p.work == nullptr)) {
    bad("workspace too small: need " + std::to_string(need) + " bytes, got " + std::to_string(p.work_bytes));
  }
}

void project(Form form, const SignParams& p, cudaStream_t stream) { run(true, form, p, stream); }

void reconstruct(Form form, const SignParams& p, cudaStream_t stream) { run(false, form, p, stream); }

}  // namespace stabkern::cuda
