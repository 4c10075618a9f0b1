"""`python -m stabkern.info`: versions, what was built, which backends are usable here, and any
stabkern environment variable set to a bad value. It reports; it never raises on a bad setting.
"""

from __future__ import annotations

import importlib
import platform

import torch

from . import __version__
from .backends import BACKENDS, environment_problems, triton_interpreting
from .spec import NOISE_SPEC, SPEC


def _version(module: str) -> str:
    try:
        return importlib.import_module(module).__version__
    except ImportError:
        return "not installed"


def _extension(name: str, problems: dict[str, str]) -> str:
    try:
        module = importlib.import_module(f"stabkern.{name}")
    except ImportError as err:
        return f"not built ({err})"
    details = [f"built ({module.__file__})"]
    if hasattr(module, "isa"):
        # isa() raises under a bad STABKERN_CPU_ISA (the sign kernels and the noise generator read it)
        details.append("ISA path: none, STABKERN_CPU_ISA is invalid" if "STABKERN_CPU_ISA" in problems
                       else f"ISA path: {module.isa()}")
    if hasattr(module, "kernel") and "STABKERN_CPU_ISA" not in problems:
        details.append(_gemm_kernels(module))
    if hasattr(module, "archs"):
        details.append(f"archs: {module.archs()}")
    return "; ".join(details)


def _gemm_kernels(module, rows: int = 512) -> str:
    """Which float32 kernel family a many-row call takes here (csrc/README.md has the rule), or why not known."""
    try:
        families = {op: module.kernel(op, rows) for op in ("project", "reconstruct")}
        tables = f", LUT tables of {module.lut_rows(rows)} rows" if "lut" in families.values() else ""
    except ValueError as err:  # a bad STABKERN_CPU_KERNEL / STABKERN_CPU_LUT_ROWS: the sign ops raise the same
        return f"GEMM-form kernels: unknown, {err}"
    return (f"GEMM-form kernels at {rows} rows: project {families['project']}, "
            f"reconstruct {families['reconstruct']}{tables}")


def _backend_line(name: str, device: str, problems: dict[str, str]) -> str:
    backend = BACKENDS[name]
    reason = backend.missing() or backend.refuses(torch.device(device), torch.float32)
    if reason is None and name == "cpu" and "STABKERN_CPU_ISA" in problems:
        reason = "STABKERN_CPU_ISA is invalid (see above)"
    if reason is not None:
        return f"  {name:<10} unusable: {reason}"
    if "STABKERN_BACKEND" in problems:
        return f"  {name:<10} usable only when named (backend='{name}'): STABKERN_BACKEND is invalid"
    return f"  {name:<10} usable"


def report() -> str:
    problems = environment_problems()
    lines = [
        f"stabkern {__version__} (sign spec {SPEC}, noise spec {NOISE_SPEC})",
        f"python {platform.python_version()} on {platform.machine()}, torch {torch.__version__}, "
        f"triton {_version('triton')}, numpy {_version('numpy')}",
        f"torch threads: {torch.get_num_threads()}",
        f"stabkern._cpu:  {_extension('_cpu', problems)}",
        f"stabkern._noise: {_extension('_noise', problems)}",
        f"stabkern._cuda: {_extension('_cuda', problems)}",
    ]
    affected = {"STABKERN_BACKEND": "every op with backend='auto' raises",
                "STABKERN_CPU_ISA": "the sign ops on the cpu backend raise"}
    for variable, problem in problems.items():
        lines.append(f"INVALID {variable}: {problem}; {affected[variable]} ValueError until it is fixed or unset")
    devices = ["cpu"]
    if torch.cuda.is_available():
        lines.append(f"CUDA device: {torch.cuda.get_device_name()} (torch CUDA {torch.version.cuda}, "
                     f"compute capability {'.'.join(map(str, torch.cuda.get_device_capability()))})")
        devices.append("cuda")
    else:
        lines.append("CUDA device: none visible to torch")
    if triton_interpreting():
        lines.append("TRITON_INTERPRET=1: the triton backend runs on CPU tensors through the interpreter")
    for device in devices:
        lines.append(f"backends for {device} tensors:")
        lines += [_backend_line(name, device, problems) for name in BACKENDS]
    lines.append("sign ops: every backend; noise ops (the meters): " + ", ".join(
        name for name, b in BACKENDS.items() if "noise" in b.families))
    return "\n".join(lines)


def main() -> None:
    print(report())


if __name__ == "__main__":
    main()
