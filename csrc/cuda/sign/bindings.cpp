// pybind11 bindings of the CUDA sign kernels (module stabkern._cuda). Tensors cross as raw device
// addresses with the caller's stream handle (no libtorch link); every size, range and code is
// validated here before a launch (std::invalid_argument -> ValueError), and launch failures come
// back as RuntimeError. The emulate_* functions run the tensor-core kernels' data flow on the host
// (no GPU needed) so that tests can check the fragment mapping anywhere nvcc built this module.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "common/philox.h"
#include "emulate.h"
#include "sign_cuda.h"

namespace py = pybind11;
namespace sc = stabkern::cuda;

namespace {

uint32_t u32(const char* name, uint64_t v) {
  if (v > 0xFFFFFFFFull) throw std::invalid_argument(std::string("stabkern._cuda: ") + name + " must be < 2^32");
  return uint32_t(v);
}

sc::SignParams params(int dtype, uintptr_t in, uintptr_t out, uintptr_t work, size_t work_bytes, int64_t rows,
                      int64_t n, int64_t k, uint64_t seed, uint64_t stream, uint64_t t0, uint64_t j0, double scale,
                      int terms, int splits, int device) {
  if (dtype < 0 || dtype > 3) throw std::invalid_argument("stabkern._cuda: dtype code must be 0..3");
  sc::SignParams p;
  p.in = reinterpret_cast<const void*>(in);
  p.out = reinterpret_cast<void*>(out);
  p.work = reinterpret_cast<void*>(work);
  p.work_bytes = work_bytes;
  p.dtype = static_cast<sc::DType>(dtype);
  p.rows = rows;
  p.n = n;
  p.k = k;
  p.seed = seed;
  p.stream = u32("stream", stream);
  p.t0 = u32("t0", t0);
  p.j0 = j0;
  p.scale = scale;
  p.terms = terms;
  p.splits = splits;
  p.device = device;
  return p;
}

sc::Form form_of(int form) {
  if (form != 0 && form != 1) throw std::invalid_argument("stabkern._cuda: form must be 0 (gemv) or 1 (gemm)");
  return static_cast<sc::Form>(form);
}

void check_emulation_args(int64_t rows, int64_t n, int64_t k, uint64_t t0, uint64_t j0, int terms) {
  sc::SignParams p;
  p.rows = rows;
  p.n = n;
  p.k = k;
  p.t0 = u32("t0", t0);
  p.j0 = j0;
  p.terms = terms;
  sc::validate(true, sc::Form::kGemm, p);
}

}  // namespace

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "stabkern CUDA kernels: seeded sign projection and reconstruction (GEMV on CUDA cores, "
            "GEMM on tensor cores)";

  m.def(
      "workspace_bytes",
      [](bool project, int form, int dtype, int64_t rows, int64_t n, int64_t k, uint64_t t0, uint64_t j0, int terms,
         int splits) {
        const sc::SignParams p = params(dtype, 0, 0, 0, 0, rows, n, k, 0, 0, t0, j0, 1.0, terms, splits, 0);
        return sc::workspace_bytes(project, form_of(form), p);
      },
      py::arg("project"), py::arg("form"), py::arg("dtype"), py::arg("rows"), py::arg("n"), py::arg("k"),
      py::arg("t0"), py::arg("j0"), py::arg("terms"), py::arg("splits"),
      "workspace_bytes(project, form, dtype, rows, n, k, t0, j0, terms, splits) -> bytes of workspace");

  m.def(
      "project",
      [](int form, uintptr_t x, int dtype, uintptr_t y, uintptr_t work, size_t work_bytes, int64_t rows, int64_t n,
         int64_t k, uint64_t seed, uint64_t stream, uint64_t t0, uint64_t j0, int terms, int splits, int device,
         uintptr_t cuda_stream) {
        const sc::SignParams p =
            params(dtype, x, y, work, work_bytes, rows, n, k, seed, stream, t0, j0, 1.0, terms, splits, device);
        py::gil_scoped_release release;
        sc::project(form_of(form), p, reinterpret_cast<cudaStream_t>(cuda_stream));
      },
      "project(form, x, dtype, y, work, work_bytes, rows, n, k, seed, stream, t0, j0, terms, splits, device, "
      "cuda_stream): y (rows, k) = x (rows, n) S^T");

  m.def(
      "reconstruct",
      [](int form, uintptr_t y, int dtype, uintptr_t out, uintptr_t work, size_t work_bytes, int64_t rows, int64_t n,
         int64_t k, double scale, uint64_t seed, uint64_t stream, uint64_t t0, uint64_t j0, int terms, int splits,
         int device, uintptr_t cuda_stream) {
        const sc::SignParams p =
            params(dtype, y, out, work, work_bytes, rows, n, k, seed, stream, t0, j0, scale, terms, splits, device);
        py::gil_scoped_release release;
        sc::reconstruct(form_of(form), p, reinterpret_cast<cudaStream_t>(cuda_stream));
      },
      "reconstruct(form, y, dtype, out, work, work_bytes, rows, n, k, scale, seed, stream, t0, j0, terms, splits, "
      "device, cuda_stream): out (rows, n) = scale y (rows, k) S");

  m.def(
      "emulate_project_mma",
      [](uintptr_t x, uintptr_t y, int64_t rows, int64_t n, int64_t k, uint64_t seed, uint64_t stream, uint64_t t0,
         uint64_t j0, int terms) {
        check_emulation_args(rows, n, k, t0, j0, terms);
        py::gil_scoped_release release;
        sc::emulate::project_mma(reinterpret_cast<const float*>(x), reinterpret_cast<float*>(y), rows, n, k, seed,
                                 u32("stream", stream), uint32_t(t0), j0, terms);
      },
      "emulate_project_mma(x, y, rows, n, k, seed, stream, t0, j0, terms): host float32 pointers; "
      "the tensor-core projection's data flow on the CPU");

  m.def(
      "emulate_reconstruct_mma",
      [](uintptr_t y, uintptr_t out, int64_t rows, int64_t n, int64_t k, double scale, uint64_t seed,
         uint64_t stream, uint64_t t0, uint64_t j0, int terms) {
        check_emulation_args(rows, n, k, t0, j0, terms);
        py::gil_scoped_release release;
        sc::emulate::reconstruct_mma(reinterpret_cast<const float*>(y), reinterpret_cast<float*>(out), rows, n, k,
                                     scale, seed, u32("stream", stream), uint32_t(t0), j0, terms);
      },
      "emulate_reconstruct_mma(y, out, rows, n, k, scale, seed, stream, t0, j0, terms): host float32 pointers; "
      "the tensor-core reconstruction's data flow on the CPU");
}
