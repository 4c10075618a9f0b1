// GEMV-form sign kernels on CUDA cores (any dtype; float32 sums, float64 for float64 input).
//
// Design note. The work is one sign per multiply-add, so the kernels are shaped around the
// instruction count per sign: the Philox call (~40 instructions) is made once per 128 signs of one
// row t, and a sign is applied without a branch or a multiply by flipping the float's sign bit,
// x ^ ((~word << (31 - b)) & 0x80000000): one shift, one LOP3 (and + xor) and one FADD per sign,
// the budget of the ~10 T sign-MAC/s ALU estimate on an H100 (benchmarks/bench_sign_gpu.py).
//
// Projection (y[t] = sum_j x[j] S[t, j]): a thread owns 4 rows t (2 for float64; one Philox call
// each per group of 128 columns) and every thread of a block walks the same columns, so its x loads
// are warp-uniform 16-byte loads that the L1 serves to all. A block covers 512 rows t; blocks along
// y split the columns into `splits` ranges, each writing a partial result.
//
// Reconstruction (out[j] = scale sum_t y[t] S[t, j]): a warp owns one group of 128 columns, 4
// columns per lane, and walks t in chunks of 32: lane l makes the Philox call of row t = chunk + l
// and the words pass through shared memory (one 16-byte read gives a lane its 4 bits of 4 rows),
// so each call is made once and all 128 bits are used. Blocks along y split t into ranges.
//
// Partial results are summed by sum_splits_kernel in split order: deterministic, no atomics (it
// also sums the rows that gemm.cu stacks).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "common/philox.h"
#include "sign_cuda.h"

namespace stabkern::cuda {
namespace {

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;  // reconstruction: groups per block
constexpr int kMaxGridZ = 65535;

template <typename T>
struct AccOf {
  using type = float;
};
template <>
struct AccOf<double> {
  using type = double;
};
template <typename T>
using Acc = typename AccOf<T>::type;

// Projection: rows t per thread (Philox calls per group of 128 columns); 2 for float64, whose 32
// loaded values take twice the registers.
template <typename T>
constexpr int kRowsPerThread = sizeof(Acc<T>) == 8 ? 2 : 4;
template <typename T>
constexpr int kProjectBlockT = kThreads * kRowsPerThread<T>;

__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }
__device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }

// v with its sign flipped where `flip` (0 or 0x80000000) says: the sign application, branch-free.
__device__ __forceinline__ float flip_sign(float v, uint32_t flip) { return __uint_as_float(__float_as_uint(v) ^ flip); }
__device__ __forceinline__ double flip_sign(double v, uint32_t flip) {
  return __hiloint2double(__double2hiint(v) ^ int(flip), __double2loint(v));
}

// v[0..31] = x[col .. col + 31] as accumulation values; kFull: all inside the row and (kVec) the
// address 16-byte aligned, read with 16-byte loads; otherwise guarded scalar loads, 0 past n.
template <typename T, bool kFull, bool kVec>
__device__ __forceinline__ void load32(const T* __restrict__ x, int64_t col, int64_t n, Acc<T> (&v)[32]) {
  if constexpr (kFull && kVec) {
    constexpr int kPer = 16 / sizeof(T);
    const uint4* p = reinterpret_cast<const uint4*>(x + col);
#pragma unroll
    for (int c = 0; c < 32 / kPer; ++c) {
      const uint4 raw = __ldg(p + c);
      const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
      for (int i = 0; i < kPer; ++i) v[c * kPer + i] = to_acc(e[i]);
    }
  } else {
#pragma unroll
    for (int i = 0; i < 32; ++i) v[i] = (kFull || col + i < n) ? to_acc(__ldg(x + col + i)) : Acc<T>(0);
  }
}

// acc[i][b & 1] += S[t_i, j] x[j] over the 128 columns j of group g (one Philox call per row t_i).
template <typename T, bool kFull, bool kVec>
__device__ __forceinline__ void project_group(const T* __restrict__ x, int64_t g, int64_t n,
                                              const uint32_t (&ctr)[kRowsPerThread<T>], uint32_t group0,
                                              const SignParams& p, Acc<T> (&acc)[kRowsPerThread<T>][2]) {
  uint32_t words[kRowsPerThread<T>][4];
#pragma unroll
  for (int i = 0; i < kRowsPerThread<T>; ++i) {
    const Philox4 w = sign_bits(p.seed, p.stream, ctr[i], group0 + uint32_t(g));
#pragma unroll
    for (int c = 0; c < 4; ++c) words[i][c] = w.w[c];
  }
#pragma unroll
  for (int w = 0; w < 4; ++w) {
    Acc<T> v[32];
    load32<T, kFull, kVec>(x, 128 * g + 32 * w, n, v);
#pragma unroll
    for (int b = 0; b < 32; ++b) {
#pragma unroll
      for (int i = 0; i < kRowsPerThread<T>; ++i) acc[i][b & 1] += flip_sign(v[b], (~words[i][w] << (31 - b)) & 0x80000000u);
    }
  }
}

template <typename T, bool kVec>
__global__ __launch_bounds__(kThreads) void project_gemv_kernel(const SignParams p, Acc<T>* __restrict__ part,
                                                                int64_t groups_per_split) {
  const int64_t groups = (p.n + 127) / 128;
  const int64_t full_groups = p.n / 128;
  const int64_t g_begin = int64_t(blockIdx.y) * groups_per_split;
  const int64_t g_end = min(g_begin + groups_per_split, groups);
  const int64_t g_full_end = max(g_begin, min(g_end, full_groups));
  const uint32_t group0 = uint32_t(p.j0 >> 7);
  constexpr int R = kRowsPerThread<T>;
  const int64_t t_first = int64_t(blockIdx.x) * kProjectBlockT<T> + threadIdx.x;
  uint32_t ctr[R];
#pragma unroll
  for (int i = 0; i < R; ++i) ctr[i] = p.t0 + uint32_t(t_first + i * kThreads);

  for (int64_t row = blockIdx.z; row < p.rows; row += gridDim.z) {
    const T* x = static_cast<const T*>(p.in) + row * p.n;
    Acc<T> acc[R][2] = {};
    for (int64_t g = g_begin; g < g_full_end; ++g) project_group<T, true, kVec>(x, g, p.n, ctr, group0, p, acc);
    for (int64_t g = g_full_end; g < g_end; ++g) project_group<T, false, kVec>(x, g, p.n, ctr, group0, p, acc);
    Acc<T>* out = part + (int64_t(blockIdx.y) * p.rows + row) * p.k;
#pragma unroll
    for (int i = 0; i < R; ++i) {
      const int64_t t = t_first + i * kThreads;
      if (t < p.k) out[t] = acc[i][0] + acc[i][1];
    }
  }
}

template <typename T>
__global__ __launch_bounds__(kThreads) void reconstruct_gemv_kernel(const SignParams p, Acc<T>* __restrict__ part,
                                                                    int64_t rows_per_split) {
  // Words of the chunk's 32 rows, [word][row], rows padded to 36 so that the four 16-byte reads of
  // a warp (one per word) fall in different banks.
  __shared__ __align__(16) uint32_t words_s[kWarps][4][36];
  __shared__ __align__(16) Acc<T> y_s[kWarps][32];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t group = int64_t(blockIdx.x) * kWarps + warp;
  if (group * 128 >= p.n) return;  // only warp-level synchronization below
  const int64_t t_begin = int64_t(blockIdx.y) * rows_per_split;
  const int64_t t_end = min(t_begin + rows_per_split, p.k);
  const uint32_t ctr_group = uint32_t(p.j0 >> 7) + uint32_t(group);
  const int word = lane >> 3, shift = 4 * (lane & 7);  // lane owns columns 4 lane .. 4 lane + 3
  const Acc<T> scale = Acc<T>(p.scale);

  for (int64_t row = blockIdx.z; row < p.rows; row += gridDim.z) {
    const T* y = static_cast<const T*>(p.in) + row * p.k;
    Acc<T> acc[4] = {};
    for (int64_t chunk = t_begin; chunk < t_end; chunk += 32) {
      const int64_t t = chunk + lane;
      const Philox4 w = sign_bits(p.seed, p.stream, p.t0 + uint32_t(t), ctr_group);
      const Acc<T> yv = t < t_end ? to_acc(y[t]) : Acc<T>(0);
      __syncwarp();  // the previous chunk's reads are done
#pragma unroll
      for (int c = 0; c < 4; ++c) words_s[warp][c][lane] = w.w[c];
      y_s[warp][lane] = yv;
      __syncwarp();
#pragma unroll
      for (int r = 0; r < 32; r += 4) {
        const uint4 wq = *reinterpret_cast<const uint4*>(&words_s[warp][word][r]);
        const uint32_t rows_words[4] = {wq.x, wq.y, wq.z, wq.w};
#pragma unroll
        for (int rr = 0; rr < 4; ++rr) {
          const Acc<T> yr = y_s[warp][r + rr];
          const uint32_t nw = ~(rows_words[rr] >> shift);
#pragma unroll
          for (int i = 0; i < 4; ++i) acc[i] += flip_sign(yr, (nw << (31 - i)) & 0x80000000u);
        }
      }
    }
    Acc<T>* out = part + (int64_t(blockIdx.y) * p.rows + row) * p.n;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int64_t col = group * 128 + 4 * lane + i;
      if (col < p.n) out[col] = acc[i] * scale;
    }
  }
}

template <typename Acc>
__global__ void sum_splits_kernel(const Acc* __restrict__ part, Acc* __restrict__ out, int64_t rows, int64_t cols,
                                  int splits, int stack) {
  const int64_t size = rows * cols;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < size; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = i / cols, c = i % cols;
    Acc s = 0;
    for (int split = 0; split < splits; ++split) {
      const Acc* src = part + ((int64_t(split) * rows + r) * stack) * cols + c;
      for (int piece = 0; piece < stack; ++piece) s += src[int64_t(piece) * cols];
    }
    out[i] = s;
  }
}

template <typename T>
void launch_project(const SignParams& p, void* part, cudaStream_t stream) {
  const int64_t groups = (p.n + 127) / 128;
  const int64_t per_split = (groups + p.splits - 1) / p.splits;
  const dim3 grid(unsigned((p.k + kProjectBlockT<T> - 1) / kProjectBlockT<T>), unsigned(p.splits),
                  unsigned(std::min<int64_t>(p.rows, kMaxGridZ)));
  const bool vec = reinterpret_cast<uintptr_t>(p.in) % 16 == 0 && (p.n * int64_t(sizeof(T))) % 16 == 0;
  if (vec) {
    project_gemv_kernel<T, true><<<grid, kThreads, 0, stream>>>(p, static_cast<Acc<T>*>(part), per_split);
  } else {
    project_gemv_kernel<T, false><<<grid, kThreads, 0, stream>>>(p, static_cast<Acc<T>*>(part), per_split);
  }
  detail::check_launch("project_gemv_kernel");
}

template <typename T>
void launch_reconstruct(const SignParams& p, void* part, cudaStream_t stream) {
  const int64_t groups = (p.n + 127) / 128;
  const int64_t chunks = (p.k + 31) / 32;
  const int64_t per_split = 32 * ((chunks + p.splits - 1) / p.splits);
  const dim3 grid(unsigned((groups + kWarps - 1) / kWarps), unsigned(p.splits),
                  unsigned(std::min<int64_t>(p.rows, kMaxGridZ)));
  reconstruct_gemv_kernel<T><<<grid, kThreads, 0, stream>>>(p, static_cast<Acc<T>*>(part), per_split);
  detail::check_launch("reconstruct_gemv_kernel");
}

}  // namespace

namespace detail {

void project_gemv(const SignParams& p, void* part, cudaStream_t stream) {
  switch (p.dtype) {
    case DType::kF32: return launch_project<float>(p, part, stream);
    case DType::kF64: return launch_project<double>(p, part, stream);
    case DType::kF16: return launch_project<__half>(p, part, stream);
    case DType::kBF16: return launch_project<__nv_bfloat16>(p, part, stream);
  }
}

void reconstruct_gemv(const SignParams& p, void* part, cudaStream_t stream) {
  switch (p.dtype) {
    case DType::kF32: return launch_reconstruct<float>(p, part, stream);
    case DType::kF64: return launch_reconstruct<double>(p, part, stream);
    case DType::kF16: return launch_reconstruct<__half>(p, part, stream);
    case DType::kBF16: return launch_reconstruct<__nv_bfloat16>(p, part, stream);
  }
}

void sum_splits(const void* part, void* out, int64_t rows, int64_t cols, int splits, int stack, bool f64,
                cudaStream_t stream) {
  const int threads = 256;
  const unsigned blocks = unsigned(std::min<int64_t>((rows * cols + threads - 1) / threads, 1 << 20));
  if (f64) {
    sum_splits_kernel<double><<<blocks, threads, 0, stream>>>(static_cast<const double*>(part),
                                                              static_cast<double*>(out), rows, cols, splits, stack);
  } else {
    sum_splits_kernel<float><<<blocks, threads, 0, stream>>>(static_cast<const float*>(part),
                                                             static_cast<float*>(out), rows, cols, splits, stack);
  }
  check_launch("sum_splits_kernel");
}

}  // namespace detail
}  // namespace stabkern::cuda
