// pybind11 bindings of the CPU kernels. Tensors cross as raw addresses (no libtorch link):
// the Python caller checks dtype, device, contiguity and sizes before calling.
#include <pybind11/pybind11.h>

#include <cstdint>

#include "../common/philox.h"
#include "sign_kernels.h"

namespace py = pybind11;
using stabkern::cpu::SketchArgs;

namespace {

SketchArgs make_args(int64_t rows, int64_t n, int64_t k, uint64_t seed, uint32_t stream, uint64_t t0,
                     uint64_t j0, int num_threads) {
  return SketchArgs{rows, n, k, seed, stream, t0, j0, num_threads};
}

template <typename T>
void project(uintptr_t x, uintptr_t y, int64_t rows, int64_t n, int64_t k, uint64_t seed, uint32_t stream,
             uint64_t t0, uint64_t j0, int num_threads) {
  const SketchArgs a = make_args(rows, n, k, seed, stream, t0, j0, num_threads);
  py::gil_scoped_release release;
  stabkern::cpu::project(reinterpret_cast<const T*>(x), reinterpret_cast<T*>(y), a);
}

template <typename T>
void reconstruct(uintptr_t y, uintptr_t out, int64_t rows, int64_t n, int64_t k, double scale, uint64_t seed,
                 uint32_t stream, uint64_t t0, uint64_t j0, int num_threads) {
  const SketchArgs a = make_args(rows, n, k, seed, stream, t0, j0, num_threads);
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
  m.def("isa", &stabkern::cpu::isa, "instruction-set path taken on this machine");
}
