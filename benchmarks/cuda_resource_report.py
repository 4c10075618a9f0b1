"""Write benchmarks/results/cuda-resource-report.txt: per CUDA kernel and architecture, registers,
spills, stack and shared memory (ptxas -v), and the instruction mix of each kernel's innermost hot
loop from its SASS (HMMA vs integer vs float instructions). Needs nvcc; cuobjdump is taken from PATH,
else from Triton's bundled copy (triton/backends/nvidia/bin). No GPU needed.

    python benchmarks/cuda_resource_report.py [--archs 80,90] [--out benchmarks/results/cuda-resource-report.txt]
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCES = sorted((ROOT / "csrc" / "cuda" / "sign").glob("*.cu"))
NVCC_FLAGS = ["-O3", "-std=c++17", "--use_fast_math", "-Icsrc"]  # as setup.py
INT_OPS = {"IMAD", "LOP3", "SHF", "IADD3", "LEA", "PRMT", "SEL", "ISETP", "VIADD", "IABS", "SGXT", "IMNMX"}
FLOAT_OPS = {"FADD", "FFMA", "FMUL", "DADD", "DFMA", "DMUL", "FSEL", "FSETP", "HADD2", "HFMA2"}
MEM_OPS = {"LDG", "STG", "LDS", "STS", "LDL", "STL", "LD", "ST"}


def find_tool(name: str) -> str:
    path = shutil.which(name)
    if path:
        return path
    try:
        import triton

        bundled = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
        if bundled.exists():
            return str(bundled)
    except ImportError:
        pass
    sys.exit(f"{name} not found (PATH or Triton's bundled tools)")


def demangle(names: list[str]) -> dict[str, str]:
    if not names or not shutil.which("c++filt"):
        return {n: n for n in names}
    out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True).stdout.splitlines()
    return dict(zip(names, out))


def short(name: str) -> str:
    """stabkern::cuda::(anonymous namespace)::project_mma_kernel<4, 4, 2, 2, 3>(...) -> project_mma_kernel<4,4,2,2,3>."""
    name = re.sub(r"\(.*$", "", name.replace("(anonymous namespace)::", "")).removeprefix("void ")
    name = name.replace("stabkern::cuda::", "").replace("stabkern::cuda::ReconstructCols", "ReconstructCols")
    name = re.sub(r"stabkern::cuda::|__nv_bfloat16|__half", lambda m: {"__nv_bfloat16": "bf16", "__half": "f16"}.get(
        m.group(0), ""), name)
    return name.replace(" ", "")


def ptxas_report(src: Path, arch: str, nvcc: str) -> list[dict]:
    """[{name, registers, stack, spill_stores, spill_loads, smem}] from `nvcc -Xptxas -v`."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [nvcc, "-c", str(src), "-o", str(Path(tmp) / "k.o"), *NVCC_FLAGS,
               f"-gencode=arch=compute_{arch},code=sm_{arch}", "-Xptxas", "-v"]
        text = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True).stderr
    rows, current = [], None
    for line in text.splitlines():
        m = re.search(r"Compiling entry function '(\w+)'", line)
        if m:
            current = {"mangled": m.group(1)}
            rows.append(current)
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m and current is not None:
            current.update(stack=int(m.group(1)), spill_stores=int(m.group(2)), spill_loads=int(m.group(3)))
        m = re.search(r"Used (\d+) registers", line)
        if m and current is not None:
            current["registers"] = int(m.group(1))
            s = re.search(r"(\d+) bytes smem", line)
            current["smem"] = int(s.group(1)) if s else 0
    return rows


def sass_loops(src: Path, arch: str, nvcc: str, cuobjdump: str) -> dict[str, list[collections.Counter]]:
    """Per mangled kernel: instruction counts of each innermost loop of at least 100 instructions."""
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "k.cubin"
        subprocess.run([nvcc, "-cubin", str(src), "-o", str(cubin), *NVCC_FLAGS, f"-arch=sm_{arch}"], cwd=ROOT,
                       check=True, capture_output=True)
        sass = subprocess.run([cuobjdump, "-sass", str(cubin)], capture_output=True, text=True, check=True).stdout
    pat = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)([^;]*);")
    loops = {}
    for chunk in re.split(r"\n\s*Function : ", sass)[1:]:
        name = chunk.split("\n", 1)[0].strip()
        ins = [(int(m.group(1), 16), m.group(2).split(".")[0], m.group(3)) for m in pat.finditer(chunk)]
        back = []
        for addr, op, rest in ins:
            t = re.search(r"0x([0-9a-f]+)", rest) if op == "BRA" else None
            if t and int(t.group(1), 16) < addr:
                back.append((int(t.group(1), 16), addr))
        inner = [b for b in back if not any(o != b and b[0] <= o[0] and o[1] <= b[1] for o in back)]
        counts = [collections.Counter(op for a, op, _ in ins if lo <= a <= hi) for lo, hi in inner]
        loops[name] = [c for c in counts if sum(c.values()) >= 100]
    return loops


def mix(c: collections.Counter) -> str:
    total = sum(c.values())
    hmma = c["HMMA"]
    ints = sum(v for k, v in c.items() if k in INT_OPS)
    flts = sum(v for k, v in c.items() if k in FLOAT_OPS)
    mem = sum(v for k, v in c.items() if k in MEM_OPS)
    top = ", ".join(f"{k} {v}" for k, v in c.most_common(7))
    ratio = f", {ints / hmma:.2f} int per HMMA" if hmma else ""
    return f"{total} instr: HMMA {hmma}, int {ints}, float {flts}, mem {mem}{ratio} | {top}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--archs", default="80,90")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "cuda-resource-report.txt"))
    args = ap.parse_args()
    nvcc, cuobjdump = find_tool("nvcc"), find_tool("cuobjdump")
    version = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout.strip().splitlines()[-1]
    lines = [f"# CUDA resource report: stabkern csrc/cuda/sign ({version}; flags {' '.join(NVCC_FLAGS)})",
             "# Per kernel and arch: registers, spill stores/loads (bytes), stack (bytes), static shared memory",
             "# (bytes), from ptxas -v; then the innermost hot loop(s) from cuobjdump -sass (project_gemv_kernel:",
             "# first the loop over full groups of 128 columns, then the one over the last, partial group).",
             "# Signs per loop iteration and thread: project_gemv 512 (256 for double), reconstruct_gemv 128;",
             "# each HMMA of the mma kernels consumes a 16 x 8 B fragment of 128 signs. Regenerate with",
             "# python benchmarks/cuda_resource_report.py", ""]
    total_spills = 0
    for arch in args.archs.split(","):
        lines.append(f"## sm_{arch}")
        for src in SOURCES:
            rows = ptxas_report(src, arch, nvcc)
            loops = sass_loops(src, arch, nvcc, cuobjdump)
            names = demangle([r["mangled"] for r in rows])
            lines.append(f"### {src.name}")
            for r in sorted(rows, key=lambda r: short(names[r["mangled"]])):
                spills = r.get("spill_stores", 0) + r.get("spill_loads", 0)
                total_spills += spills
                lines.append(f"{short(names[r['mangled']]):58} regs {r.get('registers', 0):3}  spills "
                             f"{r.get('spill_stores', 0)}/{r.get('spill_loads', 0)}  stack {r.get('stack', 0)}  "
                             f"smem {r.get('smem', 0)}")
                for c in loops.get(r["mangled"], []):
                    lines.append(f"    loop: {mix(c)}")
            lines.append("")
    lines.append(f"total spill bytes (stores + loads) over all kernels and archs: {total_spills}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
