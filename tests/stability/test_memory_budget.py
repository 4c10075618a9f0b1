"""memory_budget is honoured: peak resident memory of noise_attenuation, small budget against large.

tracemalloc does not see torch's CPU allocations, so a subprocess reads its own peak RSS (VmHWM in
/proc/self/status), reset before each call (writing 5 to /proc/self/clear_refs) or, where that is
refused, one process per case. glibc's malloc is run with a fixed mmap threshold (64 KiB): by default
it raises the threshold each time a large block is freed and then keeps freed blocks resident, so peak
RSS would grow with the number of chunks through the allocator's caching (measured here: ~100 MB after
128 one-sample chunks), not through anything the meter holds.

The net: conv 3->8 and 8->8 at 64 x 64, so one image's activation at the second conv is 8 * 64 * 64
float32 = 128 KiB. Bounds, from arithmetic:
- large budget (1 GiB: one chunk of all 64 samples x 4 trials): the second conv's noisy input and its
  output exist at the same time, 2 * 64 * 4 * 128 KiB = 64 MiB, so the peak rises by at least that;
- small budget B = 4 MiB: context.plan_chunks sizes chunks so its estimate of their memory stays under
  B; we allow 4 B for what the estimate leaves out (allocator rounding, the convolutions' scratch),
  which is still a quarter of the large case's lower bound;
- the same small budget on a stream of twice the samples (a generator: the data never held at once) stays
  under the same 4 B: memory does not grow with the data set.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

SCRIPT = r"""
import json, sys, torch
from torch import nn
from stabkern.stability import noise_attenuation

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024

def reset_peak():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False

torch.set_num_threads(1)
torch.manual_seed(0)
model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                      nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 10)).eval()
x = torch.randn(64, 3, 64, 64, generator=torch.Generator().manual_seed(1))
noise_attenuation(model, x[:1], trials=1)  # lazy initialisation happens outside the measurement
out = {}
for case in sys.argv[1:]:
    budget = 4 << 20 if case != "large" else 1 << 30
    if case == "stream":
        data = (torch.randn(8, 3, 64, 64) for _ in range(16))  # 128 samples, 8 at a time
    else:
        data = x
    if not reset_peak() and len(sys.argv) > 2:
        out = {"no_reset": True}
        break
    before = status("VmRSS")
    noise_attenuation(model, data, trials=4, memory_budget=budget)
    out[case] = status("VmHWM") - before
print(json.dumps(out))
"""

MIB = 1 << 20


def _run(*cases) -> dict:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(64 << 10))
    done = subprocess.run([sys.executable, "-c", SCRIPT, *cases], capture_output=True, text=True, timeout=120,
                          check=True, env=env)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_small_budget_bounds_peak_memory():
    rise = _run("small", "stream", "large")  # the large case last: memory it frees may stay resident
    if rise.get("no_reset"):  # peak RSS cannot be reset here: one process per case
        rise = {case: _run(case)[case] for case in ("small", "stream", "large")}
    budget = 4 * MIB
    assert rise["large"] >= 64 * MIB, rise
    assert rise["small"] <= 4 * budget, rise
    assert rise["stream"] <= 4 * budget, rise
