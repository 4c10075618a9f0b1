// CPU sign kernels: work split, summation order and instruction-set dispatch.
//
// Design note.
// - Signs are never stored beyond a block: each Philox call gives 128 columns of one row of S,
//   and kernels generate them for 16 (AVX-512) or 8 rows at once, vectorized across rows.
//   Scratch is O(threads * block); nothing is O(k * n).
// - Three kernels share the layouts of kernel_contract.h: AVX-512F, AVX2+FMA, and a portable one
//   (also the float64 kernel). The best one the CPU reports is taken at run time;
//   STABKERN_CPU_ISA=generic|avx2|avx512 forces a lower one (read at every call, for tests).
// - Summation order (fixed, so results are bitwise identical run to run and for any thread count;
//   no atomics). Projection, y[r, t]: the columns are cut into chunks of 512 (kChunkCols); within a
//   chunk one fp32 chain adds the table entries in column order (kernel_contract.h); 64 chunk
//   partials in a row make a span, summed in double in chunk order; the span sums are added in
//   double in span order: y = d_0 + d_1 + ..., d_s = p_64s + p_64s+1 + ... . fp32 error grows only
//   over 512 columns, so the error stays ~1e-7 of sum |x| for any n. Reconstruction, out[r, j]:
//   rows of S in chunks of 256, one fp32 chain over the rows of a chunk in order (the AVX2 and
//   AVX-512 kernels add one table entry per quad of 4 rows, the generic one +-y[t] per row; see
//   kernel_contract.h), chunk partials added in double in order, times scale in double. float64
//   input: the same with double chains.
// - Work split. Projection units are (panel of 32 rows of x, block of 512 rows of S). With enough
//   units (the GEMM form) each thread takes whole units and writes y directly. Otherwise (a long
//   vector) threads take (unit, span) tasks, a wave of spans at a time, and the span sums are added
//   in span order afterwards: the same additions either way. Reconstruction units are (8 rows of y,
//   512 columns); each sweeps all rows of S. Philox words are generated per unit, shared by its rows.
// - The GEMM form (many rows) can instead take the LUT kernel of sign_lut.h or the FMA kernels of
//   sign_gemm.h (each with its own summation order and work split, documented there); family()
//   below says when.
#include "sign_kernels.h"

#if defined(_OPENMP)
#include <omp.h>
#endif

#if __has_include(<unistd.h>)
#include <unistd.h>  // sysconf: the L1 data cache size
#endif

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>

#include "common/philox.h"
#include "kernel_contract.h"
#include "sign_gemm.h"
#include "sign_kernels_avx2.h"
#include "sign_kernels_avx512.h"
#include "sign_kernels_generic.h"
#include "sign_lut.h"

namespace stabkern::cpu {
namespace {

constexpr int kChunkGroups = 4;                               // Philox groups per projection chunk
constexpr int64_t kChunkCols = kChunkGroups * kGroupCols;     // columns per fp32 partial
constexpr int kPanelRows = 4 * kMaxTileRows;                  // rows of x sharing one set of sign words
constexpr int kBlockRows = 512;                               // rows of S per projection unit
constexpr int kRecBlockGroups = 4;                            // Philox groups per reconstruction unit
constexpr int64_t kSpanChunks = 64;                           // chunks per double span sum
constexpr int64_t kWaveBytes = int64_t(1) << 20;              // span sums buffered per wave
constexpr int64_t kLutMinRowsAvx2 = 8;                        // rows from which the LUT kernel wins: AVX2,
constexpr int64_t kLutMinRowsAvx512 = 32;                     // and AVX-512 reconstruction

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

SignKey key_of(const SketchArgs& a) { return SignKey{uint32_t(a.seed), uint32_t(a.seed >> 32), a.stream}; }

// Built without OpenMP (e.g. Apple clang), the pragmas are ignored and everything runs on one thread.
int thread_count(const SketchArgs& a) {
#if defined(_OPENMP)
  return a.num_threads > 0 ? a.num_threads : omp_get_max_threads();
#else
  return 1;
#endif
}

// ------------------------------------------------------------------------------ projection

// Row panel and block of rows of S covered by one projection unit.
struct Unit {
  int64_t r0;  // first row of x
  int nr;      // rows of x
  int64_t s0;  // first row of S
  int ntg;     // groups of kLanes rows of S
};

// One thread's scratch for projection: sign words, tables and fp32 chunk partials for one unit.
template <class K>
class SpanSums {
 public:
  using T = typename K::T;

  SpanSums(const T* x, const SketchArgs& a, int max_tg)
      : x_(x), a_(a), key_(key_of(a)), max_tg_(max_tg),
        words_(size_t(kChunkGroups) * max_tg * 4 * K::kLanes),
        tab_(size_t(kMaxTileRows) * K::kTable),
        pad_(kGroupCols),
        part_(size_t(kPanelRows) * max_tg * K::kLanes) {}

  // d[i * w.ntg * kLanes + t] = the double sum, in chunk order, of the fp32 chunk partials of span s
  // for row w.r0 + i of x and row w.s0 + t of S.
  void compute(int64_t s, const Unit& w, double* d) {
    const int64_t first = s * kSpanChunks, last = std::min(first + kSpanChunks, ceil_div(a_.n, kChunkCols));
    const int64_t cells = w.nr * int64_t(w.ntg) * K::kLanes;
    for (int64_t c = first; c < last; ++c) {
      chunk(c, w);
      const T* p = part_.data();
      for (int64_t i = 0; i < cells; ++i) d[i] = c == first ? double(p[i]) : d[i] + double(p[i]);
    }
  }

 private:
  // part_[i * ld + t] = fp32 sum over chunk c of x[w.r0 + i, j] S[w.s0 + t, j], ld = w.ntg * kLanes.
  void chunk(int64_t c, const Unit& w) {
    const int64_t ld = int64_t(w.ntg) * K::kLanes;
    T* part = part_.data();
    std::fill(part, part + w.nr * ld, T(0));
    const int64_t g_first = c * kChunkGroups;
    const int ng = int(std::min<int64_t>(kChunkGroups, ceil_div(a_.n, kGroupCols) - g_first));
    for (int gi = 0; gi < ng; ++gi)
      K::words(key_, uint32_t(a_.t0 + uint64_t(w.s0)), w.ntg, uint32_t(a_.j0 / kGroupCols + g_first + gi),
               words(gi));
    for (int rt = 0; rt < w.nr; rt += kMaxTileRows) {
      const int R = std::min(kMaxTileRows, w.nr - rt);
      for (int gi = 0; gi < ng; ++gi) {
        const int64_t j = (g_first + gi) * kGroupCols;
        const int64_t m = std::min<int64_t>(kGroupCols, a_.n - j);
        for (int r = 0; r < R; ++r) {
          const T* xr = x_ + (w.r0 + rt + r) * a_.n + j;
          if (m < kGroupCols) {  // last group: zero padded, zeros add nothing
            std::copy(xr, xr + m, pad_.data());
            std::fill(pad_.data() + m, pad_.data() + kGroupCols, T(0));
            xr = pad_.data();
          }
          K::tables(xr, tab_.data() + r * K::kTable);
        }
        K::project(tab_.data(), R, words(gi), w.ntg, part + rt * ld, ld);
      }
    }
  }

  uint32_t* words(int gi) const { return words_.data() + size_t(gi) * max_tg_ * 4 * K::kLanes; }

  const T* x_;
  const SketchArgs& a_;
  SignKey key_;
  int max_tg_;
  Scratch<uint32_t> words_;
  Scratch<T> tab_, pad_, part_;
};

template <class K>
void project_run(const typename K::T* x, typename K::T* y, const SketchArgs& a) {
  using T = typename K::T;
  constexpr int L = K::kLanes;
  const int threads = thread_count(a);
  const int64_t tgroups = ceil_div(a.k, L);
  const int tb = int(std::min<int64_t>(tgroups, kBlockRows / L));  // row groups of S per unit
  const int64_t tblocks = ceil_div(tgroups, tb);
  const int64_t units = ceil_div(a.rows, kPanelRows) * tblocks;
  const int64_t chunks = ceil_div(a.n, kChunkCols), spans = ceil_div(chunks, kSpanChunks);
  auto unit = [&](int64_t u) {
    const int64_t r0 = (u / tblocks) * kPanelRows, tg0 = (u % tblocks) * tb;
    return Unit{r0, int(std::min<int64_t>(kPanelRows, a.rows - r0)), tg0 * L,
                int(std::min<int64_t>(tb, tgroups - tg0))};
  };
  const size_t unit_cells = size_t(kPanelRows) * tb * L;

  if (spans == 1 || units >= 2 * threads) {
    // Enough units (the GEMM form): each thread sweeps all spans of its units.
#pragma omp parallel num_threads(threads)
    {
      SpanSums<K> sums(x, a, tb);
      Scratch<double> span(unit_cells), total(unit_cells);
#pragma omp for schedule(dynamic, 1)
      for (int64_t u = 0; u < units; ++u) {
        const Unit w = unit(u);
        for (int64_t s = 0; s < spans; ++s) {
          sums.compute(s, w, span.data());
          const int64_t cells = w.nr * int64_t(w.ntg) * L;
          double* sum = total.data();
          for (int64_t i = 0; i < cells; ++i) sum[i] = s == 0 ? span.data()[i] : sum[i] + span.data()[i];
        }
        const int64_t ld = int64_t(w.ntg) * L, ns = std::min<int64_t>(ld, a.k - w.s0);
        for (int i = 0; i < w.nr; ++i)
          for (int64_t t = 0; t < ns; ++t) y[(w.r0 + i) * a.k + w.s0 + t] = T(total.data()[i * ld + t]);
      }
    }
    return;
  }

  // Few units (a long vector): threads share out the spans of a wave, whose double sums are then
  // added in span order.
  const int64_t cells = a.rows * a.k;
  const int64_t wave = std::clamp<int64_t>(kWaveBytes / int64_t(cells * sizeof(double)), 1, spans);
  Scratch<double> total(cells), buffered(size_t(wave * cells));
  for (int64_t s0 = 0; s0 < spans; s0 += wave) {
    const int64_t ws = std::min(wave, spans - s0);
#pragma omp parallel num_threads(threads)
    {
      SpanSums<K> sums(x, a, tb);
      Scratch<double> span(unit_cells);
#pragma omp for schedule(dynamic, 1)
      for (int64_t task = 0; task < units * ws; ++task) {
        const Unit w = unit(task / ws);
        const int64_t s = s0 + task % ws;
        sums.compute(s, w, span.data());
        const int64_t ld = int64_t(w.ntg) * L, ns = std::min<int64_t>(ld, a.k - w.s0);
        double* out = buffered.data() + (s - s0) * cells + w.r0 * a.k + w.s0;
        for (int i = 0; i < w.nr; ++i) std::copy(span.data() + i * ld, span.data() + i * ld + ns, out + i * a.k);
      }
    }
    for (int64_t s = 0; s < ws; ++s) {
      const double* d = buffered.data() + s * cells;
      for (int64_t i = 0; i < cells; ++i) total.data()[i] = s0 + s == 0 ? d[i] : total.data()[i] + d[i];
    }
  }
  for (int64_t i = 0; i < cells; ++i) y[i] = T(total.data()[i]);
}

// ------------------------------------------------------------------------------ reconstruction

template <class K>
void reconstruct_run(const typename K::T* y, typename K::T* out, double scale, const SketchArgs& a) {
  using T = typename K::T;
  constexpr int L = K::kLanes;
  static_assert(kMaxChunkRows % L == 0, "a chunk of rows of S is whole Philox row groups");
  [[maybe_unused]] const int threads = thread_count(a);  // unused without OpenMP
  const SignKey key = key_of(a);
  const int64_t groups = ceil_div(a.n, kGroupCols);
  const int64_t cblocks = ceil_div(groups, kRecBlockGroups);
  const int64_t tiles = ceil_div(a.rows, kMaxTileRows);
  const int64_t tchunks = ceil_div(a.k, kMaxChunkRows);
  constexpr int64_t ld = kRecBlockGroups * kGroupCols;
#pragma omp parallel num_threads(threads)
  {
    Scratch<uint32_t> words(size_t(kRecBlockGroups) * kMaxChunkRows * 4);
    Scratch<T> part(size_t(kMaxTileRows) * ld);
    Scratch<double> acc(size_t(kMaxTileRows) * ld);
#pragma omp for schedule(dynamic, 1)
    for (int64_t u = 0; u < tiles * cblocks; ++u) {
      const int64_t r0 = (u / cblocks) * kMaxTileRows, g0 = (u % cblocks) * kRecBlockGroups;
      const int R = int(std::min<int64_t>(kMaxTileRows, a.rows - r0));
      const int ng = int(std::min<int64_t>(kRecBlockGroups, groups - g0));
      for (int64_t tc = 0; tc < tchunks; ++tc) {
        const int64_t t = tc * kMaxChunkRows;
        const int kt = int(std::min<int64_t>(kMaxChunkRows, a.k - t));
        const int ntg = int(ceil_div(kt, L));
        std::fill(part.data(), part.data() + R * ld, T(0));
        for (int gi = 0; gi < ng; ++gi)
          K::words(key, uint32_t(a.t0 + uint64_t(t)), ntg, uint32_t(a.j0 / kGroupCols + g0 + gi),
                   words.data() + size_t(gi) * kMaxChunkRows * 4);
        K::reconstruct(y + r0 * a.k + t, a.k, R, words.data(), ng, kt, part.data(), ld);
        for (int r = 0; r < R; ++r)
          for (int64_t j = 0; j < ng * kGroupCols; ++j) {
            const int64_t i = r * ld + j;
            acc.data()[i] = tc == 0 ? double(part.data()[i]) : acc.data()[i] + double(part.data()[i]);
          }
      }
      const int64_t j0 = g0 * kGroupCols, nj = std::min<int64_t>(ng * kGroupCols, a.n - j0);
      for (int r = 0; r < R; ++r)
        for (int64_t j = 0; j < nj; ++j) out[(r0 + r) * a.n + j0 + j] = T(scale * acc.data()[r * ld + j]);
    }
  }
}

// ------------------------------------------------------------------------------ dispatch

enum class Isa { kGeneric = 0, kAvx2 = 1, kAvx512 = 2 };
const char* const kIsaNames[] = {"generic", "avx2", "avx512"};

Isa best_isa() {
#if defined(__x86_64__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
    return Isa::kAvx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::kAvx2;
#endif
  return Isa::kGeneric;
}

Isa chosen_isa() {
  static const Isa best = best_isa();
  const char* env = std::getenv("STABKERN_CPU_ISA");
  if (env == nullptr || env[0] == '\0' || std::strcmp(env, "auto") == 0) return best;
  for (int i = 0; i <= int(Isa::kAvx512); ++i) {
    if (std::strcmp(env, kIsaNames[i]) != 0) continue;
    if (i > int(best))
      throw std::invalid_argument(std::string("STABKERN_CPU_ISA=") + env + " but this CPU supports only up to " +
                                  kIsaNames[int(best)]);
    return Isa(i);
  }
  throw std::invalid_argument(std::string("STABKERN_CPU_ISA must be auto, generic, avx2 or avx512, got '") + env +
                              "'");
}

// The float32 kernel family of a call. The vpermps table kernels spend one shuffle (port 5 on
// Intel, slower on AMD) per 64 (AVX-512) or 24 (AVX2) sign-MACs; the FMA kernels one FMA per 16 or
// 8; the LUT kernels (sign_lut.h) one load + one add per 64 (AVX-512) or 32 (AVX2), on the ports
// that are two or three per core on Intel and AMD alike, plus a 16-entry table per 4 values and
// 16 or 8 rows of x / y, which pays only when whole row blocks fill it. Auto rule, from the GEMM
// form measured here (n = 4608, k = 4096, 1 thread, rows 1..64; csrc/README.md has the sweep):
// - AVX2 path: the LUT kernel (16- or 8-row tables: lut16() below) from kLutMinRowsAvx2 = 8 rows
//   in both directions (from 8 rows the 8-row kernel beats the table kernel by 1.4-1.7x
//   projecting and 1.6-3.3x reconstructing, and the FMA kernel by 2-3x; below 8 rows the table
//   kernel wins);
// - AVX-512 path: the LUT kernel for reconstruction from kLutMinRowsAvx512 = 32 rows (1.1x the
//   table kernel at 32 rows, 1.4x at 64 and more; at 24 rows a half-empty 16-row block loses); the
//   table kernel for projection (the LUT kernel is within 5% of it at 64..512 rows, slower below);
// - everything else: the table kernels. The FMA kernels are taken only when forced.
// STABKERN_CPU_KERNEL=table|fma|lut forces one (read at every call, for tests); the generic path
// has only the table kernel.
enum class Family { kTable = 0, kFma = 1, kLut = 2 };
const char* const kFamilyNames[] = {"table", "fma", "lut"};

Family family(Isa isa, bool project, int64_t rows) {
  const char* env = std::getenv("STABKERN_CPU_KERNEL");
  Family f;
  if (env == nullptr || env[0] == '\0' || std::strcmp(env, "auto") == 0)
    f = (isa == Isa::kAvx2 && rows >= kLutMinRowsAvx2) || (isa == Isa::kAvx512 && !project && rows >= kLutMinRowsAvx512)
            ? Family::kLut
            : Family::kTable;
  else if (std::strcmp(env, "fma") == 0)
    f = Family::kFma;
  else if (std::strcmp(env, "table") == 0)
    f = Family::kTable;
  else if (std::strcmp(env, "lut") == 0)
    f = Family::kLut;
  else
    throw std::invalid_argument(std::string("STABKERN_CPU_KERNEL must be auto, fma, lut or table, got '") + env +
                                "'");
  return isa == Isa::kGeneric ? Family::kTable : f;
}

// Which AVX2 LUT kernel: Avx2Lut16 (16-row tables, 32 KiB per chunk + 16 KiB of selectors) from
// kLut16MinRows rows where the OS reports an L1 data cache of at least 48 KiB, else Avx2Lut (8 rows,
// 16 + 8 KiB), at any thread count. What decided the old rule (16 rows on one thread) was the
// loads per lookup: the 8-row loop loaded each selector byte beside its table load and lost to the
// 16-row loop (one byte load per two table loads) by 1.1-1.4x. Now that it loads 8 selectors at once,
// on AMD Zen 3 (32 KiB L1d) the 16-row tables gain little at 1 thread (median 1.03x) and lose at 2
// (median 0.92x) from 32 to 512 rows (csrc/README.md has the sweep; benchmarks/bench_sign_cpu.py,
// test_lut_table_heights), so the tables that fit a 32 KiB L1 at any thread count; the 16-row tables
// where the L1 holds them (Intel, 48 KiB: 1.1-1.2x at 1 thread, measured against the older 8-row
// loop). Half-empty 16-row blocks lose at 8 and 24 rows. STABKERN_CPU_LUT_ROWS=8|16 forces one (read
// at every call, for tests); both give the same bits.
constexpr int64_t kLut16MinRows = 32;

bool lut16(int64_t rows) {
  const char* env = std::getenv("STABKERN_CPU_LUT_ROWS");
  if (env != nullptr && env[0] != '\0') {
    if (std::strcmp(env, "8") == 0) return false;
    if (std::strcmp(env, "16") == 0) return true;
    throw std::invalid_argument(std::string("STABKERN_CPU_LUT_ROWS must be 8 or 16, got '") + env + "'");
  }
  static const bool big_l1 = [] {
#if defined(_SC_LEVEL1_DCACHE_SIZE)
    return sysconf(_SC_LEVEL1_DCACHE_SIZE) >= 48 * 1024;
#else
    return false;
#endif
  }();
  return rows >= kLut16MinRows && big_l1;
}

// A float32 call by the GEMM-form kernel family() picks (LUT or FMA): rows of `in` (P values each: n
// projecting, k reconstructing) to rows of `out` (C values). False when the pick is the table kernel.
bool run_gemm_form([[maybe_unused]] Isa isa, Family f, [[maybe_unused]] const float* in,
                   [[maybe_unused]] float* out, [[maybe_unused]] double scale, bool project,
                   const SketchArgs& a) {
  if (f == Family::kTable) return false;
  [[maybe_unused]] const int64_t P = project ? a.n : a.k, C = project ? a.k : a.n;
  [[maybe_unused]] const SignKey key = key_of(a);
  [[maybe_unused]] const int threads = thread_count(a);
  switch (isa) {
#if defined(__x86_64__)
    case Isa::kAvx512:
      if (f == Family::kLut) lut_run<Avx512Lut>(in, out, a.rows, P, C, scale, project, key, a, threads);
      else gemm_run<Avx512Gemm>(in, out, a.rows, P, C, scale, project, key, a, threads);
      return true;
    case Isa::kAvx2:
      if (f == Family::kFma) gemm_run<Avx2Gemm>(in, out, a.rows, P, C, scale, project, key, a, threads);
      else if (lut16(a.rows)) lut_run<Avx2Lut16>(in, out, a.rows, P, C, scale, project, key, a, threads);
      else lut_run<Avx2Lut>(in, out, a.rows, P, C, scale, project, key, a, threads);
      return true;
#endif
    default: return false;  // family() gives the generic path the table kernel only
  }
}

}  // namespace

void project(const float* x, float* y, const SketchArgs& a) {
  const Isa isa = chosen_isa();
  if (run_gemm_form(isa, family(isa, true, a.rows), x, y, 1.0, true, a)) return;
  switch (isa) {
#if defined(__x86_64__)
    case Isa::kAvx512: return project_run<Avx512Kernel>(x, y, a);
    case Isa::kAvx2: return project_run<Avx2Kernel>(x, y, a);
#endif
    default: return project_run<GenericKernel<float>>(x, y, a);
  }
}

void project(const double* x, double* y, const SketchArgs& a) {
  chosen_isa();  // reject a bad STABKERN_CPU_ISA here too
  project_run<GenericKernel<double>>(x, y, a);
}

void reconstruct(const float* y, float* out, double scale, const SketchArgs& a) {
  const Isa isa = chosen_isa();
  if (run_gemm_form(isa, family(isa, false, a.rows), y, out, scale, false, a)) return;
  switch (isa) {
#if defined(__x86_64__)
    case Isa::kAvx512: return reconstruct_run<Avx512Kernel>(y, out, scale, a);
    case Isa::kAvx2: return reconstruct_run<Avx2Kernel>(y, out, scale, a);
#endif
    default: return reconstruct_run<GenericKernel<float>>(y, out, scale, a);
  }
}

void reconstruct(const double* y, double* out, double scale, const SketchArgs& a) {
  chosen_isa();
  reconstruct_run<GenericKernel<double>>(y, out, scale, a);
}

const char* isa() { return kIsaNames[int(chosen_isa())]; }

const char* kernel(const std::string& op, int64_t rows) {
  if (op != "project" && op != "reconstruct")
    throw std::invalid_argument("op must be 'project' or 'reconstruct', got '" + op + "'");
  return kFamilyNames[int(family(chosen_isa(), op == "project", rows))];
}

int lut_rows(int64_t rows) {
  switch (chosen_isa()) {
    case Isa::kAvx512: return 16;
    case Isa::kAvx2: return lut16(rows) ? 16 : 8;
    default: return 0;
  }
}

std::vector<std::string> available_isas() {
  std::vector<std::string> names;
  for (int i = 0; i <= int(best_isa()); ++i) names.emplace_back(kIsaNames[i]);
  return names;
}

}  // namespace stabkern::cpu
