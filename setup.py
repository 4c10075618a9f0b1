"""Build stabkern's compiled backends.

- `stabkern._cpu` (sign kernels) and `stabkern._noise` (stability-meter kernels) always:
  C++17 + OpenMP; SIMD paths are chosen at run time inside the modules (target attributes),
  so one build runs on any x86-64 and on aarch64.
- `stabkern._cuda` when nvcc is found: .cu files compiled by nvcc for `STABKERN_CUDA_ARCHS`
  (default "80;90"), linked with the static CUDA runtime. `STABKERN_SKIP_CUDA=1` skips it.

Neither links libtorch: kernels take raw pointers, sizes and the CUDA stream, so the build
needs only pybind11 and does not break with torch's C++ ABI.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

from pybind11.setup_helpers import Pybind11Extension
from setuptools import setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).parent


def find_cuda_home():
    """The CUDA toolkit folder holding bin/nvcc, include/ and lib64/, or None."""
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(str(Path(nvcc).resolve().parent.parent))
    for home in candidates:
        if home and (Path(home) / "bin" / "nvcc").exists() and (Path(home) / "include" / "cuda_runtime.h").exists():
            return Path(home)
    return None


def cuda_archs():
    archs = os.environ.get("STABKERN_CUDA_ARCHS", "80;90")
    return [a.strip() for a in archs.replace(",", ";").split(";") if a.strip()]


class BuildExt(build_ext):
    """Compiles .cu sources with nvcc before the host compiler links the extension."""

    def build_extension(self, ext):
        cu_sources = [s for s in ext.sources if s.endswith(".cu")]
        if cu_sources:
            ext.sources = [s for s in ext.sources if not s.endswith(".cu")]
            ext.extra_objects = list(ext.extra_objects or []) + self.compile_cuda(ext, cu_sources)
        super().build_extension(ext)

    def compile_cuda(self, ext, sources):
        home = ext.cuda_home
        objects = []
        gencode = []
        for arch in cuda_archs():
            gencode += [f"-gencode=arch=compute_{arch},code=sm_{arch}"]
        # PTX of the newest arch too, so later cards can JIT it.
        gencode += [f"-gencode=arch=compute_{cuda_archs()[-1]},code=compute_{cuda_archs()[-1]}"]
        for src in sources:
            obj = Path(self.build_temp) / (Path(src).stem + ".o")
            obj.parent.mkdir(parents=True, exist_ok=True)
            cmd = [str(home / "bin" / "nvcc"), "-c", src, "-o", str(obj), "-O3", "-std=c++17",
                   "--use_fast_math", "-Xcompiler", "-fPIC", "-Icsrc", *gencode]
            if os.environ.get("STABKERN_PTXAS_VERBOSE"):
                cmd += ["-Xptxas", "-v"]
            print(" ".join(cmd), flush=True)
            subprocess.check_call(cmd, cwd=ROOT)
            objects.append(str(obj))
        return objects


def extensions():
    headers = sorted(str(p) for p in Path("csrc").glob("**/*.h"))  # a changed header rebuilds the modules
    openmp = ["-fopenmp"] if sys.platform != "darwin" else []
    exts = [
        Pybind11Extension(
            "stabkern._cpu",
            sources=["csrc/cpu/sign/bindings.cpp", "csrc/cpu/sign/sign_kernels.cpp"],
            depends=headers,
            include_dirs=["csrc"],
            cxx_std=17,
            extra_compile_args=["-O3", *openmp],
            extra_link_args=openmp,
        ),
        # Stability-meter kernels (csrc/cpu/noise): sqrt without errno so the noise loops vectorize.
        Pybind11Extension(
            "stabkern._noise",
            sources=["csrc/cpu/noise/bindings.cpp", "csrc/cpu/noise/noise_kernels.cpp"],
            depends=headers,
            include_dirs=["csrc"],
            cxx_std=17,
            extra_compile_args=["-O3", "-fno-math-errno", "-Wno-psabi", *openmp],
            extra_link_args=openmp,
        ),
    ]
    home = None if os.environ.get("STABKERN_SKIP_CUDA") == "1" else find_cuda_home()
    if home is None:
        print("stabkern: nvcc not found (or STABKERN_SKIP_CUDA=1): building without stabkern._cuda")
    else:
        lib = home / "lib64" if (home / "lib64").exists() else home / "lib"
        cuda = Pybind11Extension(
            "stabkern._cuda",
            sources=sorted(str(p) for p in Path("csrc/cuda/sign").glob("*.cpp"))
            + sorted(str(p) for p in Path("csrc/cuda/sign").glob("*.cu")),
            # .cu files leave `sources` before the up-to-date check, so they are listed here too
            depends=headers + sorted(str(p) for p in Path("csrc/cuda/sign").glob("*.cu")),
            include_dirs=["csrc", str(home / "include")],
            cxx_std=17,
            extra_compile_args=["-O3"],
            library_dirs=[str(lib)],
            libraries=["cudart_static", "dl", "rt", "pthread"],
        )
        cuda.cuda_home = home
        if cuda.sources:
            exts.append(cuda)
    return exts


setup(ext_modules=extensions(), cmdclass={"build_ext": BuildExt})
