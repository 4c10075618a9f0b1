"""Noise attenuation (`stabkern.stability.noise_attenuation`) against the hook loop, and its fused kernels.

Baseline: `attenuation_reference` from tests/stability_reference.py, the obvious meter: for every layer
and trial a full forward with hooks (torch.randn noise). Same run, same data, medians of several rounds.
Each fast-path run is also checked against the reference within Monte Carlo error (5 sigma, see
tests/test_stability_attenuation.py), so a speed-up is only reported for equal results.

CPU cases (always): the trained digits net (5 layers, `trained_digits_net()`), 8 trials, alpha 0.1, on the
449 test digits and on 64 of them, with 1 thread and with torch's default. The fast path runs the model
in channels_last (its default); "reference-cl" is the hook loop given the model and data in channels_last
too, to show how much of the speed-up is the memory format and how much the method. The table also gives the
suffix work ratio: the hook loop runs L full forwards per trial where the fast path runs one suffix
per layer, so at equal cost per row the saving is L t(full) / sum_i t(suffix_i) (module times measured
here at T B rows); the rest of the speed-up comes from cost per row (cache-sized chunks, fused kernels,
fewer calls).

CPU kernel cases: `sphere_noise` and `sq_error` (backend cpu) on rows the size of the digits net's
largest layer input (449 rows of 1024 = 16 x 8 x 8, 8 trials), against plain torch (randn + norm + scale; subtract + square + sum) and
the copy ceiling (torch clone of the same output bytes: effective bandwidth = bytes read + written).

GPU cases (skipped without CUDA): VGG-19 CIFAR shape (`vgg19_cifar()`), batch 256, 8 trials, all 19
layers, fp32 (TF32 off), tf32 and bf16 (targets <= 120 ms fp32/TF32, <= 50 ms bf16; DESIGN.md s6 anchors:
hook loop 806 ms, batched torch 197 ms fp32 / 112 ms bf16, FLOP floor ~26 ms), the same engine with
the fused kernels replaced by plain torch ops (what the kernels save), the kernels' bandwidth against a
clone of the same bytes (target >= 80%), and a VGG-19 at 224x224 (16 images, 8 trials) to show the
memory budget keeps it on one GPU (peak memory reported).

    PYTHONPATH=. python -m pytest benchmarks/bench_stability.py -q -s
"""

from __future__ import annotations

import copy
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import stability_reference as ref  # noqa: E402
from stabkern.digits import load_digits_tensors, trained_digits_net  # noqa: E402
from stabkern.models import vgg19_cifar  # noqa: E402
from stabkern.stability import kernels, noise_attenuation  # noqa: E402
from stabkern.stability.graph import repeat_trials  # noqa: E402

RESULTS: list[dict] = []
CUDA = torch.cuda.is_available()


def _median(benchmark, fn, rounds):
    benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=1)
    return benchmark.stats.stats.median


def _row(case, **kw):
    row = dict(case=case, **kw)
    RESULTS.append(row)
    return row


def _agree(rep, r) -> bool:
    """The fast report's means within 5 sigma (Monte Carlo) of the reference ratios r (T, N, L, L)."""
    t, n = r.shape[:2]
    mean = r.mean(dim=(0, 1)).numpy()
    se = (r.var(dim=0).mean(dim=0) / (t * n)).sqrt().numpy()
    upper = np.triu(np.ones_like(mean, dtype=bool))
    return bool(np.all(np.abs(rep.mean - mean)[upper] <= 5 * np.sqrt(rep.mc_se ** 2 + se ** 2)[upper]))


@pytest.fixture(scope="module")
def digits():
    _, (x, _) = load_digits_tensors()
    return trained_digits_net(), x


def _module_time(model, x, rows_per_trial, trials):
    """Per-module forward times (s) at trials * rows rows: the clean-pass module list of the digits net."""
    mods = list(model.features) + list(model.classifier)
    times = []
    with torch.no_grad():
        h = repeat_trials(x, trials)
        for mod in mods:
            mod(h)
            t0 = time.perf_counter()
            for _ in range(3):
                out = mod(h)
            times.append((time.perf_counter() - t0) / 3)
            h = out
    return mods, times


@pytest.fixture(params=[1, 0], ids=["1thread", "allthreads"])
def threads(request):
    """torch threads for a case (0: torch's default); restored after."""
    saved = torch.get_num_threads()
    if request.param:
        torch.set_num_threads(request.param)
    yield torch.get_num_threads()
    torch.set_num_threads(saved)


@pytest.mark.parametrize("samples", [449, 64])
@pytest.mark.parametrize("path", ["reference", "reference-cl", "fast", "fast-hooks"])
def test_cpu_digits(benchmark, digits, samples, path, threads):
    model, x = digits
    x = x[:samples]
    trials = 8
    if path == "reference":
        fn = lambda: ref.attenuation_reference(model, x, alpha=0.1, trials=trials, seed=1)  # noqa: E731
    elif path == "reference-cl":  # the hook loop with the model and data in channels_last, as the fast path runs
        cl_model = copy.deepcopy(model).to(memory_format=torch.channels_last)
        cl_x = x.contiguous(memory_format=torch.channels_last)
        fn = lambda: ref.attenuation_reference(cl_model, cl_x, alpha=0.1, trials=trials, seed=1)  # noqa: E731
    else:
        method = "graph" if path == "fast" else "hooks"
        fn = lambda: noise_attenuation(model, x, alpha=0.1, trials=trials, seed=2, method=method)  # noqa: E731
    median = _median(benchmark, fn, rounds=5 if path.startswith("reference") else 9)
    extra = {}
    if not path.startswith("reference"):
        extra["agrees_with_reference"] = _agree(fn(), ref.attenuation_reference(model, x, alpha=0.1, trials=trials,
                                                                                  seed=1))
    _row(f"digits-{path}", device="cpu", samples=samples, trials=trials, layers=5, median_ms=1e3 * median,
         threads=threads, **extra)


def test_cpu_suffix_work_ratio(digits):
    """L t(full forward) / sum_i t(suffix from layer i), module times at T B rows (see the module note)."""
    model, x = digits
    mods, times = _module_time(model, x, len(x), 8)
    layer_pos = [k for k, m in enumerate(mods) if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    full = sum(times)
    suffix = sum(sum(times[p:]) for p in layer_pos)
    _row("digits-suffix-work-ratio", device="cpu", samples=len(x), trials=8,
         ratio=len(layer_pos) * full / suffix, threads=torch.get_num_threads())


@pytest.mark.parametrize("kernel", ["sphere_noise", "sq_error"])
@pytest.mark.parametrize("impl", ["cpu", "torch", "clone"])
def test_cpu_kernels(benchmark, kernel, impl):
    if impl == "cpu" and kernels._cpu_module() is None:
        pytest.skip("stabkern._noise is not built")
    b, trials, shape = 449, 8, (1024,)  # rows of the digits net's largest layer input (16 x 8 x 8)
    x = torch.randn(b, *shape)
    radius = 0.1 * x.flatten(1).double().norm(dim=1)
    noisy = kernels.sphere_noise(x, radius, trials=trials, seed=1, stream=0)

    def torch_noise():
        eta = torch.randn(trials * b, x[0].numel())
        eta *= (radius.repeat(trials) / eta.double().norm(dim=1)).float()[:, None]
        return x.flatten(1).repeat(trials, 1) + eta

    impls = {
        ("sphere_noise", "cpu"): lambda: kernels.sphere_noise(x, radius, trials=trials, seed=1, stream=0,
                                                              backend="cpu"),
        ("sphere_noise", "torch"): torch_noise,
        ("sq_error", "cpu"): lambda: kernels.sq_error(noisy, x, backend="cpu"),
        ("sq_error", "torch"): lambda: (noisy.view(trials, b, -1) - x.view(1, b, -1)).square().sum(-1),
    }
    # bytes a kernel must move: the clean rows once and the T B noisy rows once (written or read)
    nbytes = 4 * (x.numel() + noisy.numel())
    if impl == "clone":
        fn, nbytes = noisy.clone, 2 * 4 * noisy.numel()
    else:
        fn = impls[(kernel, impl)]
    median = _median(benchmark, fn, rounds=15)
    _row(f"kernel-{kernel}-{impl}", device="cpu", shape=[trials * b, *shape], median_ms=1e3 * median,
         gb_per_s=nbytes / median / 1e9)


VGG_CASES = ["fp32", "tf32", "bf16"]


@pytest.fixture(scope="module")
def vgg():
    if not CUDA:
        pytest.skip("needs a CUDA GPU")
    torch.manual_seed(0)
    model = vgg19_cifar().cuda().eval()
    x = torch.randn(256, 3, 32, 32, device="cuda")
    return model, x


def _cuda_time(fn, rounds=10):
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(rounds):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return float(np.median(times))


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("precision", VGG_CASES)
def test_gpu_vgg19(benchmark, vgg, precision):
    model, x = vgg
    fn = lambda: noise_attenuation(model, x, trials=8, precision=precision, floor=False)  # noqa: E731
    median = _median(benchmark, lambda: (fn(), torch.cuda.synchronize()), rounds=10)
    target = 50 if precision == "bf16" else 120
    _row(f"vgg19-{precision}", device=torch.cuda.get_device_name(), samples=256, trials=8, layers=19,
         median_ms=1e3 * median, target_ms=target)


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_gpu_vgg19_hook_loop(vgg):
    model, x = vgg
    median = _cuda_time(lambda: ref.attenuation_reference(model, x, alpha=0.1, trials=8), rounds=3)
    _row("vgg19-hook-loop-fp32", device=torch.cuda.get_device_name(), samples=256, trials=8, median_ms=1e3 * median)


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_gpu_vgg19_unfused_kernels(vgg, monkeypatch, precision):
    """The same engine with plain torch noise and error ops: what the fused kernels save."""
    model, x = vgg

    def torch_noise(x, radius, *, trials, seed, stream, sample0=0, trial0=0, out_dtype=None, backend="auto"):
        eta = torch.randn(trials * x.shape[0], *x.shape[1:], device=x.device)
        eta *= (radius.repeat(trials) / eta.flatten(1).double().norm(dim=1)).float().view(-1, *[1] * (x.dim() - 1))
        return (repeat_trials(x, trials) + eta).to(out_dtype or x.dtype)

    def torch_err(y_hat, y, backend="auto"):
        b = y.shape[0]
        return (y_hat.float().reshape(-1, b, y[0].numel()) - y.reshape(1, b, -1)).square().sum(-1).reshape(-1).double()

    monkeypatch.setattr(kernels, "sphere_noise", torch_noise)
    monkeypatch.setattr(kernels, "sq_error", torch_err)
    median = _cuda_time(lambda: noise_attenuation(model, x, trials=8, precision=precision, floor=False), rounds=5)
    _row(f"vgg19-{precision}-unfused", device=torch.cuda.get_device_name(), samples=256, trials=8,
         median_ms=1e3 * median)


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("kernel", ["sphere_noise", "sq_error"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_kernel_bandwidth(kernel, dtype):
    b, trials, shape = 256, 8, (64, 32, 32)
    x = torch.randn(b, *shape, device="cuda")
    radius = 0.1 * x.flatten(1).double().norm(dim=1)
    noisy = kernels.sphere_noise(x, radius, trials=trials, seed=1, stream=0, out_dtype=dtype)
    size = torch.finfo(dtype).bits // 8
    if kernel == "sphere_noise":
        fn = lambda: kernels.sphere_noise(x, radius, trials=trials, seed=1, stream=0, out_dtype=dtype)  # noqa: E731
        nbytes = 4 * x.numel() + size * noisy.numel()
    else:
        fn = lambda: kernels.sq_error(noisy, x)  # noqa: E731
        nbytes = 4 * x.numel() + size * noisy.numel()
    t = _cuda_time(fn)
    clone_src = noisy.clone()
    t_clone = _cuda_time(clone_src.clone)
    copy_bw = 2 * size * noisy.numel() / t_clone
    _row(f"gpu-kernel-{kernel}-{str(dtype)[6:]}", device=torch.cuda.get_device_name(), median_ms=1e3 * t,
         gb_per_s=nbytes / t / 1e9, copy_gb_per_s=copy_bw / 1e9, pct_copy=100 * (nbytes / t) / copy_bw)


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_gpu_vgg19_224_fits():
    torch.manual_seed(0)
    model = vgg19_cifar()
    model.classifier[1] = torch.nn.Linear(512 * 7 * 7, 512)
    model = model.cuda().eval()
    x = torch.randn(16, 3, 224, 224)
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    rep = noise_attenuation(model, x, trials=8, precision="bf16", floor=False)
    torch.cuda.synchronize()
    _row("vgg19-224-bf16", device=torch.cuda.get_device_name(), samples=16, trials=8, layers=len(rep.layers),
         seconds=time.perf_counter() - t0, peak_gib=torch.cuda.max_memory_allocated() / 2 ** 30,
         total_gib=torch.cuda.get_device_properties(0).total_memory / 2 ** 30)


def test_zz_report():
    """Prints the table with the speed-ups measured in this run and writes benchmarks/results/stability-*.json."""
    by = {(r["case"], r.get("samples"), r.get("threads")): r for r in RESULTS}
    for (case, samples, threads), row in by.items():
        ref_row = by.get(("digits-reference", samples, threads))
        if case in ("digits-fast", "digits-fast-hooks", "digits-reference-cl") and ref_row:
            row["speedup_vs_hook_loop"] = ref_row["median_ms"] / row["median_ms"]
    for kernel in ("sphere_noise", "sq_error"):
        clone = next((r for r in RESULTS if r["case"] == f"kernel-{kernel}-clone"), None)
        for impl in ("cpu", "torch"):
            row = next((r for r in RESULTS if r["case"] == f"kernel-{kernel}-{impl}"), None)
            if row and clone:
                row["pct_copy"] = 100 * row["gb_per_s"] / clone["gb_per_s"]
    loop = next((r for r in RESULTS if r["case"] == "vgg19-hook-loop-fp32"), None)
    for r in RESULTS:
        if loop and r["case"].startswith("vgg19-") and r is not loop and "median_ms" in r:
            r["speedup_vs_hook_loop"] = loop["median_ms"] / r["median_ms"]
    print()
    for r in RESULTS:
        print("  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()))
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    device = "cuda" if CUDA else "cpu"
    meta = {"torch": torch.__version__, "threads": torch.get_num_threads(),
            "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
            "gpu": torch.cuda.get_device_name() if CUDA else None}
    (out / f"stability-{device}.json").write_text(json.dumps({"meta": meta, "rows": RESULTS}, indent=1,
                                                             default=lambda v: None if isinstance(v, float)
                                                             and not math.isfinite(v) else str(v)))
