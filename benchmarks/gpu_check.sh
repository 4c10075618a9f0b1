#!/usr/bin/env bash
# GPU check on a fresh machine (python3 with torch, Triton, nvcc, pybind11, pytest, pytest-benchmark;
# no network), run from the repository root:
#
#     bash benchmarks/gpu_check.sh                  # logs and JSON to $OUT, else benchmarks/results/gpu_check/
#     STABKERN_CHECK_DRY=1 OUT=/tmp/gc bash benchmarks/gpu_check.sh   # the same steps without a GPU
#
# Correctness before any timing, sign kernels first (they matter most). Each step is time-boxed so
# that the whole run ends within STABKERN_CHECK_SECONDS (default 285, under 5 minutes with the
# summary), runs whatever happened to the one before, and leaves seconds for the more important
# steps after it (KEEP below). A time box sends SIGINT, then SIGKILL 10 s later; the benchmarks
# write their rows as they measure them, so a step cut short keeps what it measured.
#   env             GPU, driver, versions; fails without a CUDA GPU unless STABKERN_CHECK_DRY=1
#   build           stabkern._cpu, _noise and _cuda in place for sm_90 (ptxas register/spill report)
#   tests-sign      every CUDA and Triton sign kernel against the reference on the GPU
#   tests-meters    GPU tests of the stability meters and compressors (noise kernels, attenuation,
#                   compress_model; -k "cuda or gpu")
#   bench-sign      benchmarks/bench_sign_gpu.py (baselines, ceilings, the measured rule for "auto")
#   bench-stability GPU cases of benchmarks/bench_stability.py (VGG-19 meters, noise kernels)
#   bench-compress  GPU cases of benchmarks/bench_compress.py (VGG-19 compress_model)
#   summary         gpu_check.json: each step's status (ok, failed, timeout, skipped), exit code, seconds
#                   and limit; test counts and failures; every benchmark report inlined. The last lines
#                   printed are the summary and a compact table of every benchmark row.
# Dry mode (STABKERN_CHECK_DRY=1) skips no step; GPU-only tests and cases skip themselves, so a CPU
# machine checks the script end to end.
set -u -o pipefail
export PYTHONUNBUFFERED=1

OUT_DIR="${OUT:-benchmarks/results/gpu_check}"
mkdir -p "$OUT_DIR"
LOG="$OUT_DIR/gpu_check.log"
: > "$LOG"
STEPS="$OUT_DIR/steps.tsv"
printf 'step\trc\tseconds\tlimit\n' > "$STEPS"
BUDGET="${STABKERN_CHECK_SECONDS:-285}"
START=$(date +%s)
export PY="${PYTHON:-python3}"
export STABKERN_CHECK_DRY="${STABKERN_CHECK_DRY:-0}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PYTEST=("$PY" -m pytest -q -rfEs -p no:cacheprovider -o addopts="")
BENCH=(env STABKERN_BENCH_OUT="$OUT_DIR" "${PYTEST[@]}" -s --benchmark-disable-gc --benchmark-columns=median)

remaining() { echo $(( BUDGET - ($(date +%s) - START) )); }

# run NAME CAP KEEP COMMAND...: run COMMAND for at most CAP seconds, and never into the KEEP seconds
# saved for later steps; output to $OUT_DIR/NAME.log and the main log; rc, time and limit to steps.tsv.
run() {
  local name="$1" cap="$2" keep="$3"; shift 3
  local left; left=$(( $(remaining) - keep ))
  local limit=$(( cap < left ? cap : left ))
  local t0; t0=$(date +%s)
  if (( limit < 5 )); then
    echo "== $name: skipped, time budget spent" | tee -a "$LOG"
    printf '%s\t%s\t%s\t%s\n' "$name" "skipped" 0 0 >> "$STEPS"
    return
  fi
  echo "== $name (limit ${limit}s): $*" | tee -a "$LOG"
  timeout --signal=INT --kill-after=10 "$limit" "$@" 2>&1 | tee "$OUT_DIR/$name.log" | tee -a "$LOG"
  local rc=$?
  printf '%s\t%s\t%s\t%s\n' "$name" "$rc" $(( $(date +%s) - t0 )) "$limit" >> "$STEPS"
  echo "== $name: exit $rc after $(( $(date +%s) - t0 ))s" | tee -a "$LOG"
}

check_env() {
  nvidia-smi || echo "nvidia-smi: not available"
  nvcc --version | tail -2
  git rev-parse HEAD 2>/dev/null || true
  "$PY" - <<'EOF'
import os, sys
import torch
try:
    import triton
    triton_version = triton.__version__
except ImportError:
    triton_version = None
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda,
      "triton", triton_version)
if torch.cuda.is_available():
    print("gpu", torch.cuda.get_device_name(0))
elif os.environ["STABKERN_CHECK_DRY"] == "1":
    print("no CUDA GPU: dry run, GPU-only tests and cases skip")
else:
    sys.exit("no CUDA GPU visible to torch (STABKERN_CHECK_DRY=1 runs the steps anyway)")
EOF
}
export -f check_env

#   name            cap keep
run env              20   0 bash -c check_env
run build           120 150 env STABKERN_CUDA_ARCHS=90 STABKERN_PTXAS_VERBOSE=1 \
  "$PY" setup.py build_ext --inplace --force
run tests-sign      110  80 "${PYTEST[@]}" tests/backends/test_cuda.py tests/backends/test_triton_sign.py
run tests-meters     45  70 "${PYTEST[@]}" tests/ops/test_noise_ops.py tests/stability/test_attenuation.py \
  tests/compress/test_choose_k.py tests/compress/test_model.py tests/compress/test_statistics.py \
  tests/test_sketched.py -k "cuda or gpu"
run bench-sign      100  35 "${BENCH[@]}" benchmarks/bench_sign_gpu.py
run bench-stability  45  15 "${BENCH[@]}" benchmarks/bench_stability.py -k gpu
run bench-compress   40   0 "${BENCH[@]}" benchmarks/bench_compress.py -k gpu

"$PY" - "$OUT_DIR" <<'EOF' 2>&1 | tee -a "$LOG"
import json, re, sys
from pathlib import Path

out = Path(sys.argv[1])
steps = {}
for line in (out / "steps.tsv").read_text().splitlines()[1:]:
    name, rc, seconds, limit = line.split("\t")
    status = ("skipped" if rc == "skipped" else "ok" if rc == "0" else "timeout" if rc in ("124", "137")
              else "failed")
    steps[name] = {"status": status, "rc": None if rc == "skipped" else int(rc), "seconds": int(seconds),
                   "limit": int(limit)}
    log = out / f"{name}.log"
    if name.startswith("tests") and log.exists():
        text = log.read_text()
        counts = [l for l in text.splitlines() if re.search(r"\d+ (passed|failed|error|skipped|deselected)", l)]
        steps[name]["tests"] = counts[-1].strip("= ") if counts else None
        steps[name]["failed_tests"] = sorted(set(re.findall(r"^(?:FAILED|ERROR) (\S+)", text, re.M)))
summary = {"steps": steps, "not_ok": [n for n, s in steps.items() if s["status"] != "ok"], "bench": {}}
for path in sorted(out.glob("*-[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9].json")):
    summary["bench"][path.stem.rsplit("-", 3)[0]] = json.loads(path.read_text())
(out / "gpu_check.json").write_text(json.dumps(summary, indent=1, default=str))

print("gpu_check summary:", json.dumps({k: v for k, v in summary.items() if k != "bench"}, indent=1))


def si(v):
    """3 significant digits with an SI prefix, as benchmarks/harness/report.py's tables."""
    if v is None:
        return "-"
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= scale:
            return f"{v / scale:.3g}{prefix}"
    return f"{v:.3g}"


fmt = "{:17} {:16} {:8} {:24} {:8} {:>10} {:>7} {:>8} {:>8} {:>7}"
for prefix, doc in summary["bench"].items():
    print(f"\n{prefix}: {json.dumps(doc['machine'].get('gpu'))}")
    print(fmt.format("case", "shape", "dtype", "backend", "prec", "ms", "rate", "base", "x base", "%ceil"))
    for r in doc["rows"]:
        form = f" [{r['forced_form']}]" if r.get("forced_form") else ""
        print(fmt.format(r["case"][:17], "x".join(map(str, r["shape"]))[:16], r["dtype"][:8],
                         (r["backend"] + form)[:24], (r.get("precision") or "-")[:8], f"{1e3 * r['median_s']:.3f}",
                         si(r["rate"]), si(r["baseline_rate"]), f"{r['speedup']:.2f}" if r["speedup"] else "-",
                         f"{r['pct_ceiling']:.1f}" if r["pct_ceiling"] else "-"))
    for key, value in doc.get("notes", {}).items():
        print(f"{key}: {json.dumps(value)}")
print("\nwrote", out / "gpu_check.json")
EOF
echo "total $(( $(date +%s) - START ))s"
