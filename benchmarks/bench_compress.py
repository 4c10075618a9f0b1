"""Compressing whole models and VGG layers with Algorithm 1: stabkern against materialized signs.

Baseline (what users get without stabkern): materialize the signs with `torch.randint` in row
chunks and use matmuls (coefficients = S a, A_hat = S^T c / k), same shapes and k, timed in the
same run. Ceiling: the sign ops alone (`sign_project` then `sign_reconstruct` on the same
shapes, no model handling): compress_model cannot beat the kernels it calls. Rates are
sign-MACs per second, 2 k m per sketched vector (projection plus reconstruction); times are
medians. Every case gives three rows (compress_model, baseline, ceiling) in
benchmarks/results/compress-<date>.json (see conftest.py); a shape is (layers, weights) for a
whole model and the weight's shape for one layer.

    PYTHONPATH=. python -m pytest benchmarks/bench_compress.py -s   (GPU cases skip without CUDA)
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

import stabkern
from stabkern.compress import compress_model, sketchable_layers
from stabkern.zoo.digits import trained_digits_net
from stabkern.zoo.cifar import vgg19_cifar


def materialized_sketch(rows: torch.Tensor, k: int, chunk_elems: int = 1 << 26) -> torch.Tensor:
    """Baseline Algorithm 1 on rows (r, m): +-1 chunks from torch.randint, then matmuls.

    Without a counter-based RNG the signs cannot be regenerated piecewise, so they are drawn
    twice from the same generator state: once to project, once to reconstruct.
    """
    r, m = rows.shape
    step = max(1, chunk_elems // m)

    def sign_chunks():
        gen = torch.Generator(device=rows.device).manual_seed(0)
        for t0 in range(0, k, step):
            S = torch.randint(0, 2, (min(step, k - t0), m), generator=gen, device=rows.device, dtype=torch.int8)
            yield S.to(rows.dtype).mul_(2).sub_(1)

    coeffs = torch.cat([rows @ S.T for S in sign_chunks()], dim=1)  # (r, k)
    out = torch.zeros_like(rows)
    t0 = 0
    for S in sign_chunks():
        out.addmm_(coeffs[:, t0:t0 + len(S)], S)
        t0 += len(S)
    return out / k


def sign_ops_only(rows: torch.Tensor, k: int, stream: int, backend: str) -> torch.Tensor:
    c = stabkern.sign_project(rows, k, seed=0, stream=stream, backend=backend)
    return stabkern.sign_reconstruct(c, rows.shape[1], seed=0, stream=stream, backend=backend)


def report(benchmark, label: str, sign_macs: float, t_stabkern: float, t_ceiling: float, t_baseline: float | None):
    rate = sign_macs / t_stabkern
    info = {"case": label, "sign_macs": sign_macs, "stabkern_s": t_stabkern, "stabkern_G_per_s": rate / 1e9,
            "ops_only_s": t_ceiling, "fraction_of_ops_only": t_ceiling / t_stabkern}
    line = (f"\n{label}: {sign_macs / 1e9:.2f} G sign-MAC, compress_model {t_stabkern * 1e3:.1f} ms "
            f"({rate / 1e9:.2f} G/s), sign ops alone (ceiling) {t_ceiling * 1e3:.1f} ms "
            f"(compressor at {t_ceiling / t_stabkern:.0%} of the ops-only rate)")
    if t_baseline is not None:
        info.update({"baseline_s": t_baseline, "speedup_vs_baseline": t_baseline / t_stabkern})
        line += f", materialized baseline {t_baseline * 1e3:.1f} ms: speed-up {t_baseline / t_stabkern:.2f}x"
    benchmark.extra_info.update(info)
    print(line)


def _layer_rows(model, ks, mode):
    """(stream, rows (r, m), k) of each layer compressed, as compress_model sketches them."""
    out = []
    for stream, name, m in sketchable_layers(model):
        if name in ks:
            w = m.weight.detach()
            out.append((stream, w.reshape(1 if mode == "tensor" else w.shape[0], -1), ks[name]))
    return out


def _sign_macs(layers) -> float:
    return sum(2.0 * rows.shape[0] * rows.shape[1] * k for _, rows, k in layers)


def _model_case(benchmark, bench_report, bench_time, label, model, ks, mode, device, backend, rounds,
                baseline_layers=None):
    """Rows for compress_model(model, ks) on `backend`, the sign ops alone and the materialized baseline.

    baseline_layers: indices (into the compressed layers) the baseline is timed on, when the whole
    model would take too long; its rate per sign-MAC is then that of those layers. The baseline does
    not depend on the backend, so a case timed for one backend is not timed again for the next.
    """
    model = model.to(device)
    layers = _layer_rows(model, ks, mode)
    weights = [m.weight for _, name, m in sketchable_layers(model) if name in ks]
    shape = weights[0].shape if len(weights) == 1 else (len(weights), sum(w.numel() for w in weights))
    cuda = device.type == "cuda"
    # k > n on the smallest layers, by design: sketch them anyway so every case times the same work
    t_stabkern = bench_time(lambda: compress_model(model, ks, mode=mode, seed=0, backend=backend,
                                                   allow_no_compression=True),
                            rounds=rounds, warmup=1, cuda=cuda, benchmark=benchmark)
    if t_stabkern is None:
        return
    report = bench_report("compress")
    common = dict(shape=shape, dtype=torch.float32, device=device.type, unit="sign-MAC/s", mode=mode,
                  baseline=f"{label}: materialized", ceiling=f"{label}: sign ops [{backend}]")
    t_ops = bench_time(lambda: [sign_ops_only(r, k, s, backend) for s, r, k in layers], rounds=rounds, warmup=0,
                       cuda=cuda)
    report.add(label, backend=f"sign ops only [{backend}]", median_s=t_ops, work=_sign_macs(layers),
               key=common["ceiling"], **common)
    if report.row(common["baseline"]) is None:
        base = layers if baseline_layers is None else [layers[i] for i in baseline_layers]
        t_base = bench_time(lambda: [materialized_sketch(r, k) for _, r, k in base], rounds=rounds, warmup=0,
                            cuda=cuda)
        on = {} if baseline_layers is None else {"baseline_on_layers": baseline_layers}
        report.add(label, backend="torch materialized", median_s=t_base, work=_sign_macs(base),
                   key=common["baseline"], **on, **common)
    report.add(label, backend=f"compress_model [{backend}]", median_s=t_stabkern, work=_sign_macs(layers), **common)


# --------------------------------------------------------------------------- CPU


@pytest.mark.parametrize("mode,fraction", [("tensor", 0.25), ("filter", 0.25)])
def test_cpu_digits_net(benchmark, bench_report, bench_time, mode, fraction):
    """Every layer of the trained digits net, k = f m per layer, m the numbers sketched together (about 4x fewer)."""
    model = trained_digits_net()
    ks = {name: max(1, round(fraction * (m.weight.numel() if mode == "tensor" else m.weight[0].numel())))
          for _, name, m in sketchable_layers(model)}
    _model_case(benchmark, bench_report, bench_time, f"digits net {mode} k={fraction}m", model, ks, mode,
                torch.device("cpu"), "auto", 3)


@pytest.mark.parametrize("mode,k", [("tensor", 1024), ("filter", 256)])
def test_cpu_vgg_layer(benchmark, bench_report, bench_time, mode, k):
    """One VGG-19 conv (128 -> 256 channels, 3x3; n = 294,912) from a seeded random init."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(128, 256, 3, padding=1))
    _model_case(benchmark, bench_report, bench_time, f"VGG conv 128->256 {mode} k={k}", model, {"0": k}, mode,
                torch.device("cpu"), "auto", 3)


_PEAK_CODE = textwrap.dedent("""
    import sys, time, torch, stabkern
    def status_mib(key):
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) / 1024 for l in f if l.startswith(key + ":"))
    rows, cols, k = (int(v) for v in sys.argv[1:4])
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(cols, rows))
    stabkern.compress_model(torch.nn.Sequential(torch.nn.Linear(300, 300)), 8, seed=0)  # load the machinery
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM := VmRSS
    before = status_mib("VmHWM")
    t = time.perf_counter()
    comp, report = stabkern.compress_model(model, k, seed=1)
    print(time.perf_counter() - t, status_mib("VmHWM") - before)
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the peak RSS from /proc")
def test_cpu_peak_memory_vgg19_head(benchmark, bench_report):
    """compress_model on VGG-19's first classifier Linear (25088 -> 4096, 411 MB fp32), tensor mode, k = 64.

    Prints the peak-memory ratio: peak RSS growth during the call (VmHWM, reset first) over the
    weight's bytes (issue target <= 2: the compressed copy no longer copies the replaced weight).
    One fresh process, one call: RSS peaks are per process.
    """
    rows, cols, k = 4096, 25088, 64
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    res = subprocess.run([sys.executable, "-c", _PEAK_CODE, str(rows), str(cols), str(k)], capture_output=True,
                         text=True, env=env, timeout=600)
    if res.returncode != 0:
        pytest.skip(f"peak RSS not measurable here: {res.stderr.strip().splitlines()[-1]}")
    seconds, growth_mib = (float(v) for v in res.stdout.split())
    weight_mib = rows * cols * 4 / 2**20
    ratio = growth_mib / weight_mib
    benchmark.extra_info.update({"peak_growth_mib": growth_mib, "weight_mib": weight_mib, "peak_ratio": ratio})
    bench_report("compress").add("VGG-19 head Linear peak memory", shape=(rows, cols), dtype=torch.float32,
                                 device="cpu", backend="compress_model [auto]", median_s=seconds,
                                 work=2 * k * rows * cols, unit="sign-MAC/s", peak_growth_mib=growth_mib,
                                 weight_mib=weight_mib, peak_ratio=ratio)
    print(f"\nVGG-19 head Linear {rows}x{cols} k={k}: peak growth {growth_mib:.0f} MiB over a {weight_mib:.0f} MiB "
          f"weight: peak-memory ratio {ratio:.3f} (target <= 2), {seconds:.1f} s")


# --------------------------------------------------------------------------- GPU


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_gpu_vgg19_tensor_k1e5(benchmark, bench_report, bench_time, backend):
    """Every conv and Linear of VGG-19 (CIFAR shape, 20.0 M weights), tensor mode, k = 10^5 per layer."""
    device = torch.device("cuda")
    try:
        stabkern.sign_project(torch.ones(1, 128, device=device), 1, seed=0, backend=backend)
    except stabkern.BackendUnavailableError as err:
        pytest.skip(str(err))
    torch.manual_seed(0)
    model = vgg19_cifar().eval()
    ks = {name: 100_000 for _, name, _ in sketchable_layers(model)}
    # the materialized baseline on one 512 x 512 x 3 x 3 layer (the whole net would take minutes)
    last_conv = [i for i, (_, name, m) in enumerate(sketchable_layers(model)) if isinstance(m, torch.nn.Conv2d)][-1]
    _model_case(benchmark, bench_report, bench_time, "VGG-19 tensor k=1e5", model, ks, "tensor", device, backend, 3,
                baseline_layers=[last_conv])
