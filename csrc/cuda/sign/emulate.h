// Host emulation of the tensor-core sign kernels (gemm.cu), warp by warp, for tests on machines
// without a GPU: the same fragment functions (fragments.h), an independent model of
// mma.m16n8k16 and the same order of float32 accumulation. Not a fast path.
#pragma once

#include <cstdint>

namespace stabkern::cuda::emulate {

// y (rows, k) = x (rows, n) S^T through `terms` bf16 pieces of x, as project_mma_kernel computes it.
void project_mma(const float* x, float* y, int64_t rows, int64_t n, int64_t k, uint64_t seed, uint32_t stream,
                 uint32_t t0, uint64_t j0, int terms);

// out (rows, n) = scale * y (rows, k) S, as reconstruct_mma_kernel computes it.
void reconstruct_mma(const float* y, float* out, int64_t rows, int64_t n, int64_t k, double scale, uint64_t seed,
                     uint32_t stream, uint32_t t0, uint64_t j0, int terms);

}  // namespace stabkern::cuda::emulate
