// pybind11 bindings of the stability-meter CPU kernels (`stabkern._noise`). Tensors cross as raw
// addresses (no libtorch link): the Python caller checks dtype, device, contiguity and sizes.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include "gaussian.h"
#include "noise_kernels.h"

namespace py = pybind11;
namespace nz = stabkern::noise;

namespace {

template <typename T>
void sphere_noise(uintptr_t x, uintptr_t radius, uintptr_t out, int64_t batch, int64_t n, int64_t trials,
                  uint32_t sample0, uint32_t trial0, uint64_t seed, uint32_t stream, int num_threads) {
  const nz::NoiseArgs a{batch, n, trials, sample0, trial0, seed, stream, num_threads};
  py::gil_scoped_release release;
  nz::sphere_noise(reinterpret_cast<const T*>(x), reinterpret_cast<const double*>(radius),
                   reinterpret_cast<T*>(out), a);
}

template <typename TH, typename TY>
void sq_error(uintptr_t y_hat, uintptr_t y, uintptr_t out, int64_t rows, int64_t batch, int64_t m,
              int num_threads) {
  py::gil_scoped_release release;
  nz::sq_error(reinterpret_cast<const TH*>(y_hat), reinterpret_cast<const TY*>(y), reinterpret_cast<double*>(out),
               rows, batch, m, num_threads);
}

void sq_error_bf16(uintptr_t y_hat, uintptr_t y, uintptr_t out, int64_t rows, int64_t batch, int64_t m,
                   int num_threads) {
  py::gil_scoped_release release;
  nz::sq_error_bf16(reinterpret_cast<const uint16_t*>(y_hat), reinterpret_cast<const float*>(y),
                    reinterpret_cast<double*>(out), rows, batch, m, num_threads);
}

py::tuple gauss4(uint64_t seed, uint32_t stream, uint32_t sample, uint32_t trial, uint32_t group) {
  const nz::Gauss4 g = nz::gauss4(seed, stream, sample, trial, group);
  return py::make_tuple(g.z[0], g.z[1], g.z[2], g.z[3]);
}

}  // namespace

PYBIND11_MODULE(_noise, m) {
  m.doc() = "stabkern stability-meter CPU kernels (C++17, OpenMP): sphere noise and per-row squared error";
  const char* noise_doc =
      "sphere_noise_f*(x, radius, out, batch, n, trials, sample0, trial0, seed, stream, num_threads): "
      "out[t B + b] = x[b] + radius[b] z / ||z||";
  const char* err_doc = "sq_error_*(y_hat, y, out, rows, batch, m, num_threads): out[r] = ||y_hat[r] - y[r % B]||^2";
  m.def("sphere_noise_f32", &sphere_noise<float>, noise_doc);
  m.def("sphere_noise_f64", &sphere_noise<double>, noise_doc);
  m.def("sq_error_f32", &sq_error<float, float>, err_doc);
  m.def("sq_error_f64", &sq_error<double, double>, err_doc);
  m.def("sq_error_bf16", &sq_error_bf16, err_doc);
  m.def("isa", [] { return std::string(nz::isa()); },
        "noise path the kernels take now: avx2 or generic (STABKERN_CPU_ISA=generic forces the scalar one)");
  m.def("gauss4", &gauss4, "gauss4(seed, stream, sample, trial, group) -> the 4 Gaussians of one Philox call");
}
