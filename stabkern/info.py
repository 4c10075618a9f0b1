"""`python -m stabkern.info`: versions, what was built, and which backends are usable here."""

from __future__ import annotations

import importlib
import platform

import torch

from . import __version__
from .backends import BACKENDS, triton_interpreting
from .spec import SPEC


def _version(module: str) -> str:
    try:
        return importlib.import_module(module).__version__
    except ImportError:
        return "not installed"


def _extension(name: str) -> str:
    try:
        module = importlib.import_module(f"stabkern.{name}")
    except ImportError as err:
        return f"not built ({err})"
    details = [f"built ({module.__file__})"]
    if hasattr(module, "isa"):
        details.append(f"ISA path: {module.isa()}")
    if hasattr(module, "archs"):
        details.append(f"archs: {module.archs()}")
    return "; ".join(details)


def report() -> str:
    lines = [
        f"stabkern {__version__} (sign spec {SPEC})",
        f"python {platform.python_version()} on {platform.machine()}, torch {torch.__version__}, "
        f"triton {_version('triton')}, numpy {_version('numpy')}",
        f"torch threads: {torch.get_num_threads()}",
        f"stabkern._cpu:  {_extension('_cpu')}",
        f"stabkern._cuda: {_extension('_cuda')}",
    ]
    devices = ["cpu"]
    if torch.cuda.is_available():
        lines.append(f"CUDA device: {torch.cuda.get_device_name()} (torch CUDA {torch.version.cuda})")
        devices.append("cuda")
    else:
        lines.append("CUDA device: none visible to torch")
    if triton_interpreting():
        lines.append("TRITON_INTERPRET=1: the triton backend runs on CPU tensors through the interpreter")
    for device in devices:
        lines.append(f"backends for {device} tensors:")
        for name, backend in BACKENDS.items():
            reason = backend.missing() or backend.refuses(torch.device(device), torch.float32)
            lines.append(f"  {name:<10} {'usable' if reason is None else 'unusable: ' + reason}")
    return "\n".join(lines)


def main() -> None:
    print(report())


if __name__ == "__main__":
    main()
