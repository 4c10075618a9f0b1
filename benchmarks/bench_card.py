"""The stability card's wall time on a VGG-11-BN: issue 17's target, <= 5 minutes on a quiet 2-core machine.

Case: stabkern.zoo.build("vgg11_bn", 1000) (torchvision's layout: classifier 25088 -> 4096 -> 4096 -> 1000,
132.9M parameters; random weights, seeded), 32 images of 3x32x32 (seeded Gaussian inputs, random labels),
`build_card` with its defaults (8 noise trials, 8 probes, the accuracy-vs-k sweep 0.05 .. 1). One round:
the card takes minutes. Printed: the total, each stage's time beside the card's own estimate made before it
started, the process's CPU time (all threads; on a busy machine the wall time stretches, the CPU time
much less) and the load average at the start and the end.
Results in benchmarks/results/card-<date>.json.

    PYTHONPATH=. python -m pytest benchmarks/bench_card.py -q -s
"""

from __future__ import annotations

import os
import time

import torch

from stabkern.card import build_card
from stabkern.zoo import build

TARGET_S = 300.0
SAMPLES = 32


def test_card_vgg11_bn_32px(benchmark, bench_report):
    torch.manual_seed(0)
    model = build("vgg11_bn", 1000).eval()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(SAMPLES, 3, 32, 32, generator=gen)
    y = torch.randint(0, 1000, (SAMPLES,), generator=gen)
    load_start = os.getloadavg()
    cpu_start = time.process_time()
    start = time.perf_counter()
    card = benchmark.pedantic(build_card, args=(model, x, y), kwargs={"title": "vgg11_bn 32x32"}, rounds=1,
                              iterations=1)
    total = time.perf_counter() - start
    cpu = time.process_time() - cpu_start
    load_end = os.getloadavg()
    prov = card.doc["provenance"]
    report = bench_report("card")
    report.add("card vgg11_bn 32x32, 32 images, defaults", shape=(SAMPLES, 3, 32, 32), dtype=torch.float32,
               device="cpu", backend="auto", median_s=total, work=1, unit="cards/s", key="card", target_s=TARGET_S,
               stages_s=prov["wall_time_s"], estimated_s=prov["estimated_time_s"], cpu_s=cpu, load_start=load_start,
               load_end=load_end)
    report.notes["card vgg11_bn 32x32 32 images: wall time s (target 300 on a quiet 2-core machine)"] = round(total, 1)
    report.notes["load average (1, 5, 15 min) at start / end"] = [load_start, load_end]
    benchmark.extra_info.update({"stages_s": prov["wall_time_s"], "estimated_s": prov["estimated_time_s"]})
    print(f"\ncard of vgg11_bn at 32x32, {SAMPLES} images: {total:.0f} s (target {TARGET_S:.0f} s), {cpu:.0f} s of CPU "
          f"time; load average {load_start[0]:.1f} at the start, {load_end[0]:.1f} at the end")
    for stage, seconds in prov["wall_time_s"].items():
        print(f"  {stage:<14} {seconds:7.1f} s   estimated {prov['estimated_time_s'].get(stage, float('nan')):7.1f} s")
