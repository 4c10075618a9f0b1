"""The `cpu` backend: C++17/OpenMP kernels, `stabkern._cpu` for the sign ops (csrc/cpu/sign) and
`stabkern._noise` for the noise ops (csrc/cpu/noise).

This is the adapter (raw pointers, sizes, thread count) and the check of STABKERN_CPU_ISA. Both kernel
families read that variable at every call (their instruction-set dispatch is C++): the sign kernels
take the path it names (generic, avx2, avx512); the noise kernels have two paths, so generic forces
the scalar one and avx2 or avx512 the AVX2 one (csrc/cpu/noise/noise_kernels.cpp), and they refuse
a value the CPU cannot run themselves. No kernel lives here.
"""

from __future__ import annotations

import os

import torch

from .base import Backend, import_extension

ISA_NAMES = ("auto", "generic", "avx2", "avx512")


class CpuBackend(Backend):
    """C++ kernels on CPU tensors; float32 and float64 read directly."""

    name = "cpu"
    families = frozenset({"sign", "noise"})
    devices = ("cpu",)

    def __init__(self):
        self._modules: dict[str, tuple] = {}

    def _module(self, name: str):
        if name not in self._modules:
            self._modules[name] = import_extension(name)
        return self._modules[name][0]

    @property
    def module(self):
        """stabkern._cpu (the sign kernels), or None."""
        return self._module("_cpu")

    @property
    def noise_module(self):
        """stabkern._noise (the noise kernels), or None."""
        return self._module("_noise")

    def missing(self, family: str | None = None) -> str | None:
        for fam, ext in (("sign", "_cpu"), ("noise", "_noise")):
            if family in (None, fam) and self._module(ext) is None:
                return (f"stabkern.{ext} is not built or does not load ({self._modules[ext][1]}); reinstall "
                        "stabkern with a C++17 compiler (`pip install -e .`)")
        return None

    def isa_problem(self) -> str | None:
        """Why STABKERN_CPU_ISA is invalid here (unknown name, or a path this CPU cannot run), or None."""
        value = os.environ.get("STABKERN_CPU_ISA", "")
        if value in ("", "auto"):
            return None
        if value not in ISA_NAMES:
            return f"STABKERN_CPU_ISA must be one of {', '.join(ISA_NAMES)}; got {value!r}"
        if self.module is not None:
            available = tuple(self.module.available_isas())
            if value not in available:
                return (f"STABKERN_CPU_ISA={value} but this CPU runs only {', '.join(available)}: unset it or "
                        f"choose one of those")
        return None

    def check_environment(self, family: str) -> None:
        # The sign family is checked here; the noise kernels check the variable themselves at each call.
        problem = self.isa_problem() if family == "sign" else None
        if problem is not None:
            raise ValueError(problem)

    # ----------------------------------------------------------------- sign family

    def project(self, x, k, seed, stream, t0, j0, precision):
        rows, n = x.shape
        y = torch.empty(rows, k, dtype=x.dtype)
        fn = self.module.project_f64 if x.dtype == torch.float64 else self.module.project_f32
        fn(x.data_ptr(), y.data_ptr(), rows, n, k, seed, stream, t0, j0, torch.get_num_threads())
        return y

    def reconstruct(self, y, n, scale, seed, stream, t0, j0, precision):
        rows, k = y.shape
        out = torch.empty(rows, n, dtype=y.dtype)
        fn = self.module.reconstruct_f64 if y.dtype == torch.float64 else self.module.reconstruct_f32
        fn(y.data_ptr(), out.data_ptr(), rows, n, k, scale, seed, stream, t0, j0, torch.get_num_threads())
        return out

    # ----------------------------------------------------------------- noise family

    def sphere_noise(self, rows, radius, trials, seed, stream, sample0, trial0, out_dtype):
        mod = self.noise_module
        b = rows.shape[0]
        kernel_dtype = torch.float64 if rows.dtype == torch.float64 else torch.float32
        src = rows.to(kernel_dtype).contiguous()
        flat = torch.empty(trials * b, src.shape[1], dtype=kernel_dtype)
        fn = mod.sphere_noise_f64 if kernel_dtype == torch.float64 else mod.sphere_noise_f32
        rad = radius.detach().to(torch.float64).contiguous()
        fn(src.data_ptr(), rad.data_ptr(), flat.data_ptr(), b, src.shape[1], trials, sample0, trial0, seed,
           stream, torch.get_num_threads())
        return flat.to(out_dtype)

    def sq_error(self, y_hat, y):
        """The kernels read float32, float64 and bfloat16 y_hat; other dtypes take the float64 reference."""
        mod = self.noise_module
        if y_hat.dtype == torch.float64:
            a, c, fn = y_hat.contiguous(), y.double().contiguous(), mod.sq_error_f64
        elif y_hat.dtype == torch.bfloat16:
            a, c, fn = y_hat.contiguous(), y.float().contiguous(), mod.sq_error_bf16
        elif y_hat.dtype == torch.float32:
            a, c, fn = y_hat.contiguous(), y.float().contiguous(), mod.sq_error_f32
        else:
            from .reference import sq_error_reference

            return sq_error_reference(y_hat, y)
        out = torch.empty(a.shape[0], dtype=torch.float64)
        fn(a.data_ptr(), c.data_ptr(), out.data_ptr(), a.shape[0], c.shape[0], c.shape[1], torch.get_num_threads())
        return out
