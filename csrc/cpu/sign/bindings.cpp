// pybind11 bindings of the CPU kernels. Tensors cross as raw addresses (no libtorch link): the
// Python caller checks dtype, device and contiguity; sizes and counter ranges are checked again
// here, so a bad call raises ValueError instead of reading out of bounds.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <cstdint>
#include <string>

#include "common/philox.h"
#include "sign_kernels.h"

namespace py = pybind11;
using stabkern::cpu::SketchArgs;

namespace {

constexpr int kMaxThreads = 1 << 16;

SketchArgs checked_args(const char* op, uintptr_t in, uintptr_t out, int64_t rows, int64_t n, int64_t k,
                        uint64_t seed, uint32_t stream, uint64_t t0, uint64_t j0, int num_threads) {
  const std::string where = std::string(op) + ": ";
  if (in == 0 || out == 0) throw py::value_error(where + "null data address");
  if (rows < 1 || n < 1 || k < 1)
    throw py::value_error(where + "rows, n and k must be >= 1, got rows=" + std::to_string(rows) +
                          ", n=" + std::to_string(n) + ", k=" + std::to_string(k));
  if (t0 >= stabkern::kMaxRows || uint64_t(k) > stabkern::kMaxRows - t0)
    throw py::value_error(where + "rows [t0, t0 + k) = [" + std::to_string(t0) + ", " + std::to_string(t0 + k) +
                          ") exceed the counter range [0, 2^32) of spec stabkern-sign-v1");
  if (j0 >= stabkern::kMaxCols || uint64_t(n) > stabkern::kMaxCols - j0)
    throw py::value_error(where + "columns [j0, j0 + n) = [" + std::to_string(j0) + ", " + std::to_string(j0 + n) +
                          ") exceed the counter range [0, 2^38) of spec stabkern-sign-v1");
  if (j0 % 128 != 0) throw py::value_error(where + "j0 must be a multiple of 128, got " + std::to_string(j0));
  if (rows > INT64_MAX / 8 / (n > k ? n : k))
    throw py::value_error(where + "rows * max(n, k) overflows the address space");
  if (num_threads < 0 || num_threads > kMaxThreads)
    throw py::value_error(where + "num_threads must be in [0, " + std::to_string(kMaxThreads) + "], got " +
                          std::to_string(num_threads));
  return SketchArgs{rows, n, k, seed, stream, t0, j0, num_threads};
}

template <typename T>
void project(uintptr_t x, uintptr_t y, int64_t rows, int64_t n, int64_t k, uint64_t seed, uint32_t stream,
             uint64_t t0, uint64_t j0, int num_threads) {
  const SketchArgs a = checked_args("project", x, y, rows, n, k, seed, stream, t0, j0, num_threads);
  py::gil_scoped_release release;
  stabkern::cpu::project(reinterpret_cast<const T*>(x), reinterpret_cast<T*>(y), a);
}

template <typename T>
void reconstruct(uintptr_t y, uintptr_t out, int64_t rows, int64_t n, int64_t k, double scale, uint64_t seed,
                 uint32_t stream, uint64_t t0, uint64_t j0, int num_threads) {
  const SketchArgs a = checked_args("reconstruct", y, out, rows, n, k, seed, stream, t0, j0, num_threads);
  if (!std::isfinite(scale)) throw py::value_error("reconstruct: scale must be finite, got " + std::to_string(scale));
  py::gil_scoped_release release;
  stabkern::cpu::reconstruct(reinterpret_cast<const T*>(y), reinterpret_cast<T*>(out), scale, a);
}

py::tuple philox(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0, uint32_t k1) {
  const stabkern::Philox4 r = stabkern::philox4x32_10(c0, c1, c2, c3, k0, k1);
  return py::make_tuple(r.w[0], r.w[1], r.w[2], r.w[3]);
}

}  // namespace

PYBIND11_MODULE(_cpu, m) {
  m.doc() = "stabkern CPU kernels (C++17, OpenMP): seeded sign projection and reconstruction";
  const char* proj_doc = "project_f*(x, y, rows, n, k, seed, stream, t0, j0, num_threads): y = x S^T";
  const char* rec_doc = "reconstruct_f*(y, out, rows, n, k, scale, seed, stream, t0, j0, num_threads): out = scale y S";
  m.def("project_f32", &project<float>, proj_doc);
  m.def("project_f64", &project<double>, proj_doc);
  m.def("reconstruct_f32", &reconstruct<float>, rec_doc);
  m.def("reconstruct_f64", &reconstruct<double>, rec_doc);
  m.def("philox4x32_10", &philox, "Philox4x32-10(counter c0..c3, key k0, k1) -> 4 words");
  m.def("isa", &stabkern::cpu::isa,
        "instruction-set path float32 kernels take now: avx512, avx2 or generic (STABKERN_CPU_ISA forces a lower one)");
  m.def("kernel", &stabkern::cpu::kernel, py::arg("op"), py::arg("rows"),
        "float32 kernel family a call of op (project or reconstruct) with this many rows takes now: lut or fma "
        "(GEMM-form kernels) or table; STABKERN_CPU_KERNEL=lut|fma|table forces one");
  m.def("lut_rows", &stabkern::cpu::lut_rows, py::arg("rows"),
        "rows per table of the LUT kernel a float32 call with this many rows takes on the current path: 16 or 8 "
        "(STABKERN_CPU_LUT_ROWS=8|16 forces it on AVX2), 0 on the generic path");
  m.def("available_isas", &stabkern::cpu::available_isas, "every path this CPU can run, lowest first");
}
