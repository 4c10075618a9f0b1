#!/usr/bin/env bash
# GPU check of the sign kernels on a fresh machine (python3 with torch, Triton, nvcc, pybind11,
# pytest, pytest-benchmark; no network), run from the repository root:
#
#     bash benchmarks/gpu_check.sh            # logs and JSON to $OUT, else benchmarks/results/gpu_check/
#
# Steps, each time-boxed so that the whole run ends within STABKERN_CHECK_SECONDS, and
# each run whatever happened to the one before (STABKERN_CHECK_SECONDS default 295):
#   1. env    - GPU, driver, versions
#   2. build  - stabkern._cpu and stabkern._cuda in place for sm_90 (ptxas register/spill report)
#   3. tests  - correctness FIRST: every CUDA and Triton kernel against the reference on the GPU
#   4. bench  - benchmarks/bench_sign_gpu.py (baselines, ceilings, the measured rule for "auto")
#   5. summary - gpu_check.json: each step's exit code and seconds, what failed, test counts, and the
#                benchmark JSON inlined. The last lines printed are the benchmark table and the summary.
set -u -o pipefail
export PYTHONUNBUFFERED=1

OUT_DIR="${OUT:-benchmarks/results/gpu_check}"
mkdir -p "$OUT_DIR"
LOG="$OUT_DIR/gpu_check.log"
: > "$LOG"
STEPS="$OUT_DIR/steps.tsv"
printf 'step\trc\tseconds\n' > "$STEPS"
BUDGET="${STABKERN_CHECK_SECONDS:-295}"
START=$(date +%s)
PY="${PYTHON:-python3}"

remaining() { echo $(( BUDGET - ($(date +%s) - START) )); }

# run NAME CAP_SECONDS COMMAND...: tee output to $OUT_DIR/NAME.log and the main log, record rc and time.
run() {
  local name="$1" cap="$2"; shift 2
  local left; left=$(remaining)
  local limit=$(( cap < left ? cap : left ))
  local t0; t0=$(date +%s)
  if (( limit < 5 )); then
    echo "== $name: skipped, time budget spent" | tee -a "$LOG"
    printf '%s\t%s\t%s\n' "$name" "skipped" 0 >> "$STEPS"
    return
  fi
  echo "== $name (limit ${limit}s): $*" | tee -a "$LOG"
  timeout --kill-after=5 "$limit" "$@" 2>&1 | tee "$OUT_DIR/$name.log" | tee -a "$LOG"
  local rc=$?
  printf '%s\t%s\t%s\n' "$name" "$rc" $(( $(date +%s) - t0 )) >> "$STEPS"
  echo "== $name: exit $rc after $(( $(date +%s) - t0 ))s" | tee -a "$LOG"
}

run env 30 bash -c "nvidia-smi; nvcc --version | tail -2; $PY -c 'import torch, triton, sys; \
print(\"python\", sys.version.split()[0], \"torch\", torch.__version__, \"cuda\", torch.version.cuda, \
\"triton\", triton.__version__, \"gpu\", torch.cuda.get_device_name(0))'; git rev-parse HEAD 2>/dev/null || true"

run build 120 env STABKERN_CUDA_ARCHS=90 STABKERN_PTXAS_VERBOSE=1 "$PY" setup.py build_ext --inplace --force

export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
run tests 150 "$PY" -m pytest -q -p no:cacheprovider -o addopts="" tests/test_cuda_sign.py tests/test_triton_sign.py

run bench 150 env STABKERN_BENCH_OUT="$OUT_DIR" "$PY" -m pytest -q -s -p no:cacheprovider -o addopts="" \
  benchmarks/bench_sign_gpu.py --benchmark-disable-gc --benchmark-columns=median

"$PY" - "$OUT_DIR" <<'EOF' 2>&1 | tee -a "$LOG"
import json, re, sys
from pathlib import Path

out = Path(sys.argv[1])
steps = {}
for line in (out / "steps.tsv").read_text().splitlines()[1:]:
    name, rc, seconds = line.split("\t")
    steps[name] = {"rc": rc if rc == "skipped" else int(rc), "seconds": int(seconds)}
failed = [n for n, s in steps.items() if s["rc"] != 0]
summary = {"steps": steps, "failed": failed}
tests_log = out / "tests.log"
if tests_log.exists():
    text = tests_log.read_text()
    tail = [l for l in text.splitlines() if re.search(r"\d+ (passed|failed|error)", l)]
    summary["tests_summary"] = tail[-1] if tail else None
    summary["tests_failed"] = sorted(set(re.findall(r"^FAILED (\S+)", text, re.M)))
bench = out / "bench_sign_gpu.json"
if bench.exists():
    summary["bench"] = json.loads(bench.read_text())
(out / "gpu_check.json").write_text(json.dumps(summary, indent=1))
print("gpu_check summary:", json.dumps({k: v for k, v in summary.items() if k != "bench"}, indent=1))
if "bench" in summary:  # a compact table last, where the tail of the output shows it
    b = summary["bench"]
    print("meta:", json.dumps(b.get("meta")))
    print(f"{'kind':5} {'op':11} {'backend':7} {'precision':14} {'k':>7} {'ms':>9} {'T/s':>7} {'base T/s':>8} "
          f"{'x base':>7} {'%ceil':>6} ceiling")
    fmt = lambda v, f: format(v, f) if v is not None else "-".rjust(int(f.split(".")[0]))
    for c in b.get("cases", []):
        form = f" [{c['forced_form']}]" if c.get("forced_form") else ""
        print(f"{c['kind']:5} {c['op']:11} {c['backend']:7} {c['precision'] + form:14} {c['shape'][2]:>7} "
              f"{c['time_ms']:9.3f} {c['rate_tmacs']:7.2f} {fmt(c['baseline_tmacs'], '8.3f')} "
              f"{fmt(c['speedup'], '7.1f')} {fmt(c['pct_of_ceiling'], '6.1f')} {c['ceiling'] or '-'}")
    print("auto rule:", json.dumps(b.get("auto_rule")))
print("wrote", out / "gpu_check.json")
EOF
echo "total $(( $(date +%s) - START ))s"
