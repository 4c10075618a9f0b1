// GEMM-form sign kernels on tensor cores: mma.sync m16n8k16, bf16 operands, float32 accumulators
// (sm_80 and sm_90).
//
// Design note. S never exists in memory: each thread builds its own +-1 B fragments from Philox
// words in registers, with one shift and one LOP3 per bf16 pair (fragments.h explains the
// permutation of the reduction axis that makes this possible and uses all 128 bits of every call).
// The other operand (x for projection, y for reconstruction) is split once into `terms` bf16 pieces
// (hi + mid + lo is exact for float32) by pack_kernel, which writes them in fragment order: the
// main kernels then read each A fragment with one coalesced 16-byte load per lane and reuse every
// B fragment for all the m-tiles and terms of the warp. Precision modes are the number of terms;
// all products are exact, so "highest" differs from float32 only by the order of the additions.
//
// With few rows (rows * terms <= 16) the terms are stacked as rows of the one m-tile instead, so a
// B fragment costs one mma whatever the precision; the stacked rows are summed after the kernel.
//
// Projection: warp tile MT m-tiles x NT n-tiles (16 MT rows of x, 8 NT rows t of S); per 512
// columns a thread makes NT Philox calls (its rows t, its group 4 sb + q). Reconstruction: a warp owns
// the 128 columns of one group and MT m-tiles; per chunk of 32 rows t each lane makes one Philox
// call and the words are exchanged through 640 bytes of shared memory. Both split the reduction
// axis over grid.z into partial results (summed in order by sum_splits_kernel in gemv.cu).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <stdexcept>

#include "common/philox.h"
#include "fragments.h"
#include "sign_cuda.h"

namespace stabkern::cuda {
namespace {

using frag::U32x4;

constexpr int kReconWarps = 4;   // groups of 128 columns per reconstruction block
constexpr int kXchStride = 40;   // words per q in the exchange buffer: 4 words x 8 slots, padded

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

__device__ __forceinline__ void mma_bf16(float (&d)[4], const uint4& a, uint32_t b0, uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a.x), "r"(a.y), "r"(a.z), "r"(a.w), "r"(b0), "r"(b1));
}

struct ProjectCols {
  __device__ int64_t operator()(int64_t S, int q, int e) const { return frag::project_col(S, q, e); }
};
struct ReconstructCols {
  __device__ int64_t operator()(int64_t S, int q, int e) const { return 16 * S + frag::k_of_slot(q, e); }
};

// Packed A = the (rows x cols) input split into `terms` bf16 pieces, in fragment order
// [m-tile][step][term][lane] (frag::packed_index); zeros outside the input. With stack > 1 the
// pieces are rows instead: packed row r * stack + i holds piece i of input row r (terms is then 1).
// Grid: x over (step, lane), one thread per lane and step writing all its terms; y over m-tiles.
template <typename T, typename ColOf>
__global__ void pack_kernel(const T* __restrict__ in, uint4* __restrict__ packed, int64_t rows, int64_t cols,
                            int64_t steps, int terms, int stack) {
  const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t S = idx >> 5, mt = blockIdx.y;
  const int lane = int(idx & 31);
  if (S >= steps) return;
  const auto load = [&](int64_t r, int64_t c) -> float {
    if (stack == 1) return (r < rows && c < cols) ? to_float(__ldg(in + r * cols + c)) : 0.0f;
    const int row = int(r) / stack, piece = int(r) - row * stack;  // stacked: at most 16 rows
    return (row < rows && c < cols) ? frag::term_value(to_float(__ldg(in + row * cols + c)), piece) : 0.0f;
  };
  U32x4 a[3];
  frag::pack_a(load, ColOf(), mt, S, lane, terms, a);
#pragma unroll
  for (int term = 0; term < 3; ++term) {  // constant trip count: `a` stays in registers
    if (term < terms) {
      packed[frag::packed_index(mt, S, term, lane, steps, terms)] = make_uint4(a[term].r[0], a[term].r[1],
                                                                               a[term].r[2], a[term].r[3]);
    }
  }
}

struct MmaArgs {
  const uint4* packed;
  float* part;        // [split][rows][cols_out]
  int64_t rows;
  int64_t cols_out;   // k (projection) or n (reconstruction)
  int64_t steps;      // k16 steps of the packed operand
  int64_t per_split;  // superblocks (projection) or chunks of 32 t (reconstruction) per split
  int64_t units;      // superblocks or chunks in all
  uint64_t seed;
  uint32_t stream, t0, group0;
  float scale;
};

template <int MT, int NT, int WM, int WN, int TERMS>
__global__ __launch_bounds__(32 * WM * WN) void project_mma_kernel(const MmaArgs a) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, q = lane & 3;
  const int64_t mt0 = (int64_t(blockIdx.y) * WM + warp % WM) * MT;
  const int64_t tt0 = (int64_t(blockIdx.x) * WN + warp / WM) * (8 * NT);
  const int64_t sb_begin = int64_t(blockIdx.z) * a.per_split;
  const int64_t sb_end = min(sb_begin + a.per_split, a.units);
  float acc[MT][NT][4] = {};
  // Fragments of a superblock are contiguous per m-tile: 32 steps x TERMS x 32 lanes.
  constexpr int64_t kSuperblock = 32 * TERMS * 32;
  const uint4* a_tile[MT];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) a_tile[mt] = a.packed + frag::packed_index(mt0 + mt, 0, 0, lane, a.steps, TERMS);
  for (int64_t sb = sb_begin; sb < sb_end; ++sb) {
    uint32_t words[NT][4];
    const uint32_t group = a.group0 + uint32_t(4 * sb + q);
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      const Philox4 w = sign_bits(a.seed, a.stream, a.t0 + uint32_t(tt0 + 8 * nt + g), group);
#pragma unroll
      for (int c = 0; c < 4; ++c) words[nt][c] = w.w[c];
    }
#pragma unroll
    for (int s = 0; s < 32; ++s) {
      uint4 av[MT][TERMS];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
        for (int term = 0; term < TERMS; ++term) av[mt][term] = __ldg(a_tile[mt] + sb * kSuperblock + (s * TERMS + term) * 32);
      }
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        uint32_t b0, b1;
        frag::project_b(words[nt], s, b0, b1);
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
          for (int term = 0; term < TERMS; ++term) mma_bf16(acc[mt][nt], av[mt][term], b0, b1);
        }
      }
    }
  }
  float* out = a.part + int64_t(blockIdx.z) * a.rows * a.cols_out;
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        const int64_t row = 16 * (mt0 + mt) + g + 8 * (c >> 1);
        const int64_t t = tt0 + 8 * nt + 2 * q + (c & 1);
        if (row < a.rows && t < a.cols_out) out[row * a.cols_out + t] = acc[mt][nt][c];
      }
    }
  }
}

// At least 3 (MT = 1) or 2 (MT = 2) blocks per SM: ptxas's own choice for <1, 2> was a 128-register
// cap that spilled a pointer inside the loop.
template <int MT, int TERMS>
__global__ __launch_bounds__(32 * kReconWarps, MT == 1 ? 3 : 2) void reconstruct_mma_kernel(const MmaArgs a) {
  __shared__ __align__(16) uint32_t xch[kReconWarps][4 * kXchStride];  // [q][word][slot]
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, q = lane & 3;
  const int64_t group = int64_t(blockIdx.x) * kReconWarps + warp;
  if (group * 128 >= a.cols_out) return;  // only warp-level synchronization below
  const int64_t mt0 = int64_t(blockIdx.y) * MT;
  const int64_t c_begin = int64_t(blockIdx.z) * a.per_split;
  const int64_t c_end = min(c_begin + a.per_split, a.units);
  const uint32_t ctr_group = a.group0 + uint32_t(group);
  const int slot_t = frag::recon_slot_t(q, g);  // this lane's Philox row within a chunk (slot g)
  uint32_t* mine = xch[warp] + q * kXchStride;
  const uint4* theirs = reinterpret_cast<const uint4*>(mine + 8 * (g >> 1));  // word g >> 1, slots 0..7
  float acc[MT][16][4] = {};
  // Fragments of a chunk are contiguous per m-tile: 2 steps x TERMS x 32 lanes.
  constexpr int64_t kChunk = 2 * TERMS * 32;
  const uint4* a_tile[MT];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) a_tile[mt] = a.packed + frag::packed_index(mt0 + mt, 0, 0, lane, a.steps, TERMS);
  for (int64_t c = c_begin; c < c_end; ++c) {
    const Philox4 w = sign_bits(a.seed, a.stream, a.t0 + uint32_t(32 * c + slot_t), ctr_group);
    __syncwarp();  // the previous chunk's reads are done
#pragma unroll
    for (int word = 0; word < 4; ++word) mine[8 * word + g] = w.w[word];
    __syncwarp();
    const uint4 lo = theirs[0], hi = theirs[1];
    const uint32_t merged[4] = {frag::recon_merge(lo.x, lo.y, g & 1), frag::recon_merge(lo.z, lo.w, g & 1),
                                frag::recon_merge(hi.x, hi.y, g & 1), frag::recon_merge(hi.z, hi.w, g & 1)};
#pragma unroll
    for (int s = 0; s < 2; ++s) {
      uint4 av[MT][TERMS];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
        for (int term = 0; term < TERMS; ++term) av[mt][term] = __ldg(a_tile[mt] + c * kChunk + (s * TERMS + term) * 32);
      }
#pragma unroll
      for (int nt = 0; nt < 16; ++nt) {
        const uint32_t b0 = frag::sign_pair(merged[2 * s], nt), b1 = frag::sign_pair(merged[2 * s + 1], nt);
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
          for (int term = 0; term < TERMS; ++term) mma_bf16(acc[mt][nt], av[mt][term], b0, b1);
        }
      }
    }
  }
  float* out = a.part + int64_t(blockIdx.z) * a.rows * a.cols_out;
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      const int64_t row = 16 * (mt0 + mt) + g + 8 * (c >> 1);
      if (row >= a.rows) continue;
#pragma unroll
      for (int nt = 0; nt < 16; ++nt) {
        const int64_t col = 128 * group + frag::recon_out_col(q, nt, c);
        if (col < a.cols_out) out[row * a.cols_out + col] = acc[mt][nt][c] * a.scale;
      }
    }
  }
}

// Tile shapes: a warp of the projection covers 16 MT rows x 8 NT rows t; blocks are WM x WN warps.
struct ProjectShape {
  int mt, nt, wm, wn;
};

ProjectShape project_shape(int64_t rows, int terms) {
  if (rows <= 16) return {1, 8, 1, 4};      // GEMV-like: one m-tile, 256 rows t per block
  if (terms == 3) return {2, 4, 2, 2};      // 64 x 64 per block, registers for 3 terms
  return {4, 4, 2, 2};                      // 128 x 64 per block
}

int reconstruct_mt(int64_t rows, int terms) { return (rows <= 16 || terms == 3) ? 1 : 2; }

int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

// The shape the kernels see: with stacked terms, rows * terms rows of one term.
struct Operand {
  int64_t rows;  // rows of the packed operand (stacked rows included)
  int terms;     // terms per packed entry
  int stack;     // input pieces stacked as rows (1: none)
};

Operand operand(const SignParams& p) {
  const int stack = frag::stack_of(p.rows, p.terms);
  return stack > 1 ? Operand{p.rows * stack, 1, stack} : Operand{p.rows, p.terms, 1};
}

template <typename ColOf>
void launch_pack(const SignParams& p, const Operand& op, int64_t cols, int64_t mtiles, int64_t steps, uint4* packed,
                 cudaStream_t stream) {
  const int threads = 256;
  const dim3 grid(unsigned((steps * 32 + threads - 1) / threads), unsigned(mtiles));
  switch (p.dtype) {
    case DType::kF32:
      pack_kernel<float, ColOf><<<grid, threads, 0, stream>>>(static_cast<const float*>(p.in), packed, p.rows, cols,
                                                              steps, op.terms, op.stack);
      break;
    case DType::kF16:
      pack_kernel<__half, ColOf><<<grid, threads, 0, stream>>>(static_cast<const __half*>(p.in), packed, p.rows,
                                                               cols, steps, op.terms, op.stack);
      break;
    case DType::kBF16:
      pack_kernel<__nv_bfloat16, ColOf><<<grid, threads, 0, stream>>>(static_cast<const __nv_bfloat16*>(p.in),
                                                                      packed, p.rows, cols, steps, op.terms, op.stack);
      break;
    case DType::kF64:
      throw std::invalid_argument("the GEMM form takes float32, float16 or bfloat16 input");
  }
  detail::check_launch("pack_kernel");
}

// The instantiations project_shape() can pick: one m-tile with any terms; MT = 2 for 3 terms;
// MT = 4 for 1 or 2.
void launch_project_mma(const ProjectShape& sh, int terms, const MmaArgs& args, dim3 grid, cudaStream_t stream) {
  const int threads = 32 * sh.wm * sh.wn;
  if (sh.mt == 1) {
    if (terms == 1) project_mma_kernel<1, 8, 1, 4, 1><<<grid, threads, 0, stream>>>(args);
    else if (terms == 2) project_mma_kernel<1, 8, 1, 4, 2><<<grid, threads, 0, stream>>>(args);
    else project_mma_kernel<1, 8, 1, 4, 3><<<grid, threads, 0, stream>>>(args);
  } else if (sh.mt == 2) {
    project_mma_kernel<2, 4, 2, 2, 3><<<grid, threads, 0, stream>>>(args);
  } else if (terms == 1) {
    project_mma_kernel<4, 4, 2, 2, 1><<<grid, threads, 0, stream>>>(args);
  } else {
    project_mma_kernel<4, 4, 2, 2, 2><<<grid, threads, 0, stream>>>(args);
  }
}

}  // namespace

namespace detail {

int stacked_rows(const SignParams& p) { return int(operand(p).stack); }

// Projection: steps = 32 per 512 columns; reconstruction: 2 per 32 rows t.
size_t packed_bytes(bool project, const SignParams& p) {
  const Operand op = operand(p);
  const int64_t mtiles = (op.rows + 15) / 16;
  int64_t mtiles_pad, steps;
  if (project) {
    const ProjectShape sh = project_shape(op.rows, op.terms);
    mtiles_pad = round_up(mtiles, sh.mt * sh.wm);
    steps = 32 * ((p.n + 511) / 512);
  } else {
    mtiles_pad = round_up(mtiles, reconstruct_mt(op.rows, op.terms));
    steps = 2 * ((p.k + 31) / 32);
  }
  return size_t(mtiles_pad) * size_t(steps) * size_t(op.terms) * 32 * sizeof(uint4);
}

void project_gemm(const SignParams& p, void* packed_v, float* part, cudaStream_t stream) {
  const Operand op = operand(p);
  const ProjectShape sh = project_shape(op.rows, op.terms);
  const int64_t mtiles_pad = round_up((op.rows + 15) / 16, sh.mt * sh.wm);
  const int64_t superblocks = (p.n + 511) / 512;
  auto* packed = static_cast<uint4*>(packed_v);
  launch_pack<ProjectCols>(p, op, p.n, mtiles_pad, 32 * superblocks, packed, stream);
  MmaArgs args{packed, part, op.rows, p.k, 32 * superblocks, (superblocks + p.splits - 1) / p.splits, superblocks,
               p.seed, p.stream, p.t0, uint32_t(p.j0 >> 7), 1.0f};
  const int64_t block_t = 8 * sh.nt * sh.wn;
  const dim3 grid(unsigned((p.k + block_t - 1) / block_t), unsigned(mtiles_pad / (sh.mt * sh.wm)), unsigned(p.splits));
  launch_project_mma(sh, op.terms, args, grid, stream);
  check_launch("project_mma_kernel");
}

void reconstruct_gemm(const SignParams& p, void* packed_v, float* part, cudaStream_t stream) {
  const Operand op = operand(p);
  const int mt = reconstruct_mt(op.rows, op.terms);
  const int64_t mtiles_pad = round_up((op.rows + 15) / 16, mt);
  const int64_t chunks = (p.k + 31) / 32;
  auto* packed = static_cast<uint4*>(packed_v);
  launch_pack<ReconstructCols>(p, op, p.k, mtiles_pad, 2 * chunks, packed, stream);
  MmaArgs args{packed, part, op.rows, p.n, 2 * chunks, (chunks + p.splits - 1) / p.splits, chunks,
               p.seed, p.stream, p.t0, uint32_t(p.j0 >> 7), float(p.scale)};
  const int64_t groups = (p.n + 127) / 128;
  const dim3 grid(unsigned((groups + kReconWarps - 1) / kReconWarps), unsigned(mtiles_pad / mt), unsigned(p.splits));
  constexpr int threads = 32 * kReconWarps;
  if (mt == 2) {
    if (op.terms == 1) reconstruct_mma_kernel<2, 1><<<grid, threads, 0, stream>>>(args);
    else reconstruct_mma_kernel<2, 2><<<grid, threads, 0, stream>>>(args);
  } else {
    switch (op.terms) {
      case 1: reconstruct_mma_kernel<1, 1><<<grid, threads, 0, stream>>>(args); break;
      case 2: reconstruct_mma_kernel<1, 2><<<grid, threads, 0, stream>>>(args); break;
      default: reconstruct_mma_kernel<1, 3><<<grid, threads, 0, stream>>>(args); break;
    }
  }
  check_launch("reconstruct_mma_kernel");
}

}  // namespace detail
}  // namespace stabkern::cuda
