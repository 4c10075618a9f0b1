"""Noise attenuation (`stabkern.stability.noise_attenuation`) against the hook loop, and its fused kernels.

Rates: attenuation cases in noise injections per second, one injection being one (sample, trial,
layer) whose noisy activations are carried to the output (samples x trials x layers per call);
kernel cases in bytes per second (bytes a kernel must move: the clean rows read once and the T B
noisy rows written or read once). Times are medians; results in
benchmarks/results/stability-<date>.json (see conftest.py).

Baseline of the attenuation cases: `attenuation_reference` from tests/stability_reference.py, the
obvious meter: for every layer and trial a full forward with hooks (torch.randn noise), fp32, same
run, same data. Ceiling: the suffix forwards alone, sum over layers i of the time to run the model
from layer i to its output on T B rows (each module timed alone, channels_last, in the case's
precision): the fast path runs exactly these plus noise and error kernels, so it cannot beat them.
Each fast-path run is also checked against the reference within Monte Carlo error (5 sigma, see
tests/test_stability_attenuation.py), so a speed-up is only reported for equal results.

Baseline of the kernel cases: plain torch (randn + norm + scale; subtract + square + sum).
Ceiling: torch clone of the same output bytes (effective bandwidth = bytes read + written).

CPU cases (always): the trained digits net (5 layers, `trained_digits_net()`), 8 trials, alpha 0.1, on the
449 test digits and on 64 of them, with 1 thread and with torch's default. The fast path runs the model
in channels_last (its default); "hook loop channels_last" is the hook loop given the model and data in
channels_last too, to show how much of the speed-up is the memory format and how much the method. The
notes give the suffix work ratio: the hook loop runs L full forwards per trial where the fast path runs
one suffix per layer, so at equal cost per row the saving is L t(full) / sum_i t(suffix_i) (module
times measured here at T B rows, contiguous); the rest of the speed-up comes from cost per row
(cache-sized chunks, fused kernels, fewer calls). Kernels: `sphere_noise` and `sq_error` (backend cpu)
on rows the size of the digits net's largest layer input (449 rows of 1024 = 16 x 8 x 8, 8 trials).

CPU cases at scale (issue 11, items 1 and 2), each measured side by side in one run:
- attenuation floor: for `vgg19_cifar()` and a torchvision-style VGG-19 head (`VGG(hidden=4096)`), B images
  (STABKERN_BENCH_FLOOR_IMAGES, default 16), 8 trials: noise_attenuation (defaults, fp32) against its floor,
  the suffix forwards alone (sum over injection layers i of the modules from layer i on, each timed at B T
  rows, channels_last), with the default memory budget and with all samples in one chunk; the notes give
  the ratios and the top ops of a torch.profiler run (on 4 images) by self CPU time: what takes the rest.
- measure vs attenuation: `measure` (defaults, and probes=16, draws=4, the defaults before the reverse
  sweeps) and noise_attenuation with the same images (STABKERN_BENCH_MEASURE_IMAGES, default 64) and
  trials, each once, with measure's phases timed, the work each phase does per sample and the median
  relative standard error of mu_{i,j} each setting gives (what fewer probes cost in precision) in the notes.

GPU cases (skipped without CUDA): VGG-19 CIFAR shape (`vgg19_cifar()`), batch 256, 8 trials, all 19
layers, fp32 (TF32 off), tf32 and bf16 (targets <= 120 ms fp32/TF32, <= 50 ms bf16; H100 anchors:
hook loop 806 ms, batched torch 197 ms fp32 / 112 ms bf16, FLOP floor ~26 ms), the same engine with
the fused kernels replaced by plain torch ops (what the kernels save), the kernels on (256, 64, 32, 32)
rows (target >= 80% of the clone), and a VGG-19 at 224x224 (16 images, 8 trials; one run each, cuDNN
autotuning included) to show the memory budget keeps it on one GPU (peak memory reported).

    PYTHONPATH=. python -m pytest benchmarks/bench_stability.py -q -s
"""

from __future__ import annotations

import copy
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from helpers import stability_reference as ref  # noqa: E402
from stabkern.zoo.digits import load_digits_tensors, trained_digits_net  # noqa: E402
from stabkern.zoo.cifar import VGG, vgg19_cifar  # noqa: E402
from stabkern import ops as kernels  # noqa: E402
from stabkern.backends import BACKENDS  # noqa: E402
from stabkern.stability import measure, noise_attenuation  # noqa: E402
from stabkern.stability.context import precision_mode  # noqa: E402
from stabkern.stability.propagate import repeat_trials  # noqa: E402

CUDA = torch.cuda.is_available()
TRIALS = 8
INJECTIONS = "injection/s"
BYTES = "B/s"


def _agree(rep, r) -> bool:
    """The fast report's means within 5 sigma (Monte Carlo) of the reference ratios r (T, N, L, L)."""
    t, n = r.shape[:2]
    mean = r.mean(dim=(0, 1)).numpy()
    se = (r.var(dim=0).mean(dim=0) / (t * n)).sqrt().numpy()
    upper = np.triu(np.ones_like(mean, dtype=bool))
    return bool(np.all(np.abs(rep.mean - mean)[upper] <= 5 * np.sqrt(rep.mc_se ** 2 + se ** 2)[upper]))


def _module_times(bench_time, model, x, trials, *, channels_last, precision="fp32"):
    """(modules, seconds each) of model.features + model.classifier run one by one at trials * B rows."""
    if channels_last:
        model = copy.deepcopy(model).to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    mods = list(model.features) + list(model.classifier)
    times = []
    with torch.no_grad(), precision_mode(precision, x.device):
        h = repeat_trials(x, trials)
        for mod in mods:
            times.append(bench_time(lambda mod=mod, h=h: mod(h), rounds=3, warmup=1, cuda=x.is_cuda))
            h = mod(h)
    return mods, times


def _layer_positions(mods) -> list[int]:
    return [k for k, m in enumerate(mods) if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]


def _add_suffix_ceiling(report, bench_time, key, case, model, x, precision, **extra):
    """The ceiling row: sum_i t(suffix from layer i) at TRIALS * B rows, channels_last, in `precision`."""
    mods, times = _module_times(bench_time, model, x, TRIALS, channels_last=True, precision=precision)
    pos = _layer_positions(mods)
    report.add(case, shape=x.shape, dtype=x.dtype, device=x.device.type, backend="suffix forwards only",
               median_s=sum(sum(times[p:]) for p in pos), work=len(x) * TRIALS * len(pos), unit=INJECTIONS,
               key=key, ceiling=key, precision=precision, **extra)


# --------------------------------------------------------------------------- CPU: digits net


@pytest.fixture(scope="module")
def digits():
    _, (x, _) = load_digits_tensors()
    return trained_digits_net(), x


@pytest.fixture(params=[1, 0], ids=["1thread", "allthreads"])
def threads(request):
    """torch threads for a case (0: torch's default); restored after."""
    saved = torch.get_num_threads()
    if request.param:
        torch.set_num_threads(request.param)
    yield torch.get_num_threads()
    torch.set_num_threads(saved)


DIGITS_BACKENDS = {"reference": "hook loop", "reference-cl": "hook loop channels_last", "fast": "stabkern graph",
                   "fast-hooks": "stabkern hooks"}


def _digits_keys(samples, threads):
    return f"digits {samples} {threads}t: hook loop", f"digits {samples} {threads}t: suffix forwards"


@pytest.mark.parametrize("samples", [449, 64])
@pytest.mark.parametrize("path", list(DIGITS_BACKENDS))
def test_cpu_digits(benchmark, bench_report, bench_time, digits, samples, path, threads):
    model, x = digits
    x = x[:samples]
    if path == "reference":
        fn = lambda: ref.attenuation_reference(model, x, alpha=0.1, trials=TRIALS, seed=1)  # noqa: E731
    elif path == "reference-cl":  # the hook loop with the model and data in channels_last, as the fast path runs
        cl_model = copy.deepcopy(model).to(memory_format=torch.channels_last)
        cl_x = x.contiguous(memory_format=torch.channels_last)
        fn = lambda: ref.attenuation_reference(cl_model, cl_x, alpha=0.1, trials=TRIALS, seed=1)  # noqa: E731
    else:
        method = "graph" if path == "fast" else "hooks"
        fn = lambda: noise_attenuation(model, x, alpha=0.1, trials=TRIALS, seed=2, method=method)  # noqa: E731
    median = bench_time(fn, rounds=5 if path.startswith("reference") else 9, warmup=1, benchmark=benchmark)
    extra = {}
    if not path.startswith("reference"):
        extra["agrees_with_reference"] = _agree(fn(), ref.attenuation_reference(model, x, alpha=0.1, trials=TRIALS,
                                                                                  seed=1))
    baseline, ceiling = _digits_keys(samples, threads)
    bench_report("stability").add("digits attenuation", shape=x.shape, dtype=x.dtype, device="cpu",
                                  backend=DIGITS_BACKENDS[path], median_s=median, work=samples * TRIALS * 5,
                                  unit=INJECTIONS, key=baseline if path == "reference" else None, baseline=baseline,
                                  ceiling=ceiling, threads=threads, **extra)


@pytest.mark.parametrize("samples", [449, 64])
def test_cpu_digits_ceiling(bench_report, bench_time, digits, samples, threads):
    """The suffix forwards of the digits cases (their ceiling)."""
    model, x = digits
    baseline, ceiling = _digits_keys(samples, threads)
    _add_suffix_ceiling(bench_report("stability"), bench_time, ceiling, "digits attenuation", model, x[:samples],
                        "fp32", baseline=baseline, threads=threads)


def test_cpu_suffix_work_ratio(bench_report, bench_time, digits):
    """L t(full forward) / sum_i t(suffix from layer i), module times at T B rows (see the module note)."""
    model, x = digits
    mods, times = _module_times(bench_time, model, x, TRIALS, channels_last=False)
    pos = _layer_positions(mods)
    ratio = len(pos) * sum(times) / sum(sum(times[p:]) for p in pos)
    bench_report("stability").notes[f"digits suffix work ratio ({len(x)} samples, {TRIALS} trials, "
                                    f"{torch.get_num_threads()} threads)"] = round(ratio, 3)


# --------------------------------------------------------------------------- CPU: VGG-19 at scale

CPU_VGGS = {"vgg19_cifar": vgg19_cifar, "vgg19 4096 head": lambda: VGG(hidden=4096)}
FLOOR_IMAGES = int(os.environ.get("STABKERN_BENCH_FLOOR_IMAGES", "16"))
MEASURE_IMAGES = int(os.environ.get("STABKERN_BENCH_MEASURE_IMAGES", "64"))
ONE_CHUNK = 1 << 30  # bytes: memory_budget that holds all the floor case's samples in one chunk


def _top_ops(fn, count: int = 8) -> dict:
    """{op: share of self CPU time} of the `count` costliest ops of one profiled call of fn."""
    from torch.profiler import profile

    with profile() as prof:
        fn()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    return {e.key: round(e.self_cpu_time_total / total, 3) for e in events[:count]}


@pytest.mark.parametrize("name", list(CPU_VGGS))
def test_cpu_vgg19_attenuation_floor(bench_report, bench_time, name):
    """noise_attenuation / its floor (the suffix forwards alone at B T rows), same machine, same run."""
    torch.manual_seed(0)
    model = CPU_VGGS[name]().eval()
    x = torch.randn(FLOOR_IMAGES, 3, 32, 32)
    noise_attenuation(model, x[:2], trials=TRIALS)  # warm-up (oneDNN primitives), untimed
    median = bench_time(lambda: noise_attenuation(model, x, trials=TRIALS), rounds=1, warmup=0)
    report = bench_report("stability")
    floor_key = f"{name} cpu: suffix forwards"
    _add_suffix_ceiling(report, bench_time, floor_key, f"{name} attenuation", model, x, "fp32")
    layers = len(_layer_positions(list(model.features) + list(model.classifier)))
    report.add(f"{name} attenuation", shape=x.shape, dtype=x.dtype, device="cpu", backend="stabkern",
               median_s=median, work=len(x) * TRIALS * layers, unit=INJECTIONS, ceiling=floor_key, threads=torch.get_num_threads())
    # the same call in one chunk of samples: each conv call pays a fixed cost (oneDNN reorders the weight),
    # so the default cache-sized chunks (context.CPU_DEFAULT_BUDGET) pay it once per chunk
    one_chunk = bench_time(lambda: noise_attenuation(model, x, trials=TRIALS, memory_budget=ONE_CHUNK), rounds=1,
                           warmup=0)
    report.add(f"{name} attenuation", shape=x.shape, dtype=x.dtype, device="cpu", backend="stabkern, one chunk",
               median_s=one_chunk, work=len(x) * TRIALS * layers, unit=INJECTIONS, ceiling=floor_key,
               threads=torch.get_num_threads(), memory_budget=ONE_CHUNK)
    floor = report.row(floor_key)["median_s"]
    report.notes[f"{name}: attenuation / floor ({len(x)} images, {TRIALS} trials, cpu)"] = round(median / floor, 3)
    report.notes[f"{name}: attenuation in one chunk / floor"] = round(one_chunk / floor, 3)
    report.notes[f"{name}: top ops of noise_attenuation (4 images, self CPU share)"] = _top_ops(
        lambda: noise_attenuation(model, x[:4], trials=TRIALS))


MEASURE_PHASES = {"stabkern.stability.measure": ("clean_meters", "attenuation_sums", "jacobian_meters", "bounds"),
                  "stabkern.stability.meters": ("forward_meters", "reverse_sweeps")}
OLD_DEFAULTS = dict(probes=16, draws=4)  # measure's defaults before the reverse sweeps (for comparison)


def _median_rse(report) -> float:
    """The median over layer pairs i < j of each pair's median relative standard error of mu_{i,j}."""
    d = report.to_dict()["interlayer_cushion"]
    names = list(d)
    values = [d[a]["to"][b]["rel_se_median"] for k, a in enumerate(names) for b in names[k + 1:]]
    return float(np.nanmedian([v for v in values if v is not None]))


def test_cpu_vgg19_measure_vs_attenuation(bench_report, bench_time, monkeypatch):
    """measure (defaults, and the old defaults) against noise_attenuation with the same images and trials,
    side by side in one run."""
    import importlib
    import inspect

    torch.manual_seed(0)
    model = vgg19_cifar().eval()
    x = torch.randn(MEASURE_IMAGES, 3, 32, 32)
    noise_attenuation(model, x[:2], trials=TRIALS)  # warm-up, untimed
    t_att = bench_time(lambda: noise_attenuation(model, x, trials=TRIALS), rounds=1, warmup=0)
    phases = {}
    for module_name, names in MEASURE_PHASES.items():
        module = importlib.import_module(module_name)
        for phase in names:
            def timed(*args, _fn=getattr(module, phase), _phase=phase, **kwargs):
                start = time.perf_counter()
                out = _fn(*args, **kwargs)
                phases[_phase] = phases.get(_phase, 0.0) + time.perf_counter() - start
                return out
            monkeypatch.setattr(module, phase, timed)
    found = {}

    def run(key, **kwargs):
        phases.clear()
        fresh = copy.deepcopy(model)  # new weights for the spectral-norm cache: each run pays its own Lanczos
        found[key] = measure(fresh, x, trials=TRIALS, **kwargs)
        found[key + " phases"] = dict(phases)

    t_measure = bench_time(lambda: run("defaults"), rounds=1, warmup=0)
    t_old = bench_time(lambda: run("old", **OLD_DEFAULTS), rounds=1, warmup=0)
    report = bench_report("stability")
    key = "vgg19_cifar cpu: noise_attenuation (measure's trials)"
    layers = len(found["defaults"].layers)
    old = ", ".join(f"{k}={v}" for k, v in OLD_DEFAULTS.items())
    for backend, median, k in (("noise_attenuation", t_att, key), ("measure (defaults)", t_measure, None),
                               (f"measure ({old})", t_old, None)):
        report.add("vgg19_cifar measure", shape=x.shape, dtype=x.dtype, device="cpu", backend=backend,
                   median_s=median, work=len(x) * TRIALS * layers, unit=INJECTIONS, key=k, baseline=key)
    signature = inspect.signature(measure).parameters
    probes, draws = signature["probes"].default, signature["draws"].default
    tag = f"vgg19_cifar ({len(x)} images, cpu)"
    report.notes[f"{tag}: measure (probes={probes}, draws={draws}: defaults) / noise_attenuation"] = \
        round(t_measure / t_att, 3)
    report.notes[f"{tag}: measure ({old}) / noise_attenuation"] = round(t_old / t_att, 3)
    report.notes[f"{tag}: measure seconds (defaults; {old})"] = (round(t_measure, 1), round(t_old, 1))
    for label, k in (("defaults", "defaults"), (old, "old")):
        report.notes[f"{tag}: measure phases, {label} (s)"] = {p: round(v, 2) for p, v in found[k + " phases"].items()}
        report.notes[f"{tag}: median relative standard error of mu_ij, {label}"] = round(_median_rse(found[k]), 4)
    norms = found["defaults"].bound["operator_norms"]
    report.notes[f"{tag}: spectral norms, Lanczos iterations (sum over {layers} layers, all converged to 1e-3)"] = \
        (sum(v["spectral_iterations"] for v in norms.values()), all(v["spectral_converged"] for v in norms.values()))
    report.notes["measure work per sample (defaults)"] = (
        f"attenuation: {TRIALS} rows through the suffix after each layer; forward_meters: 1 + draws = {1 + draws} "
        f"forward-mode rows (a primal and a tangent: two products per conv) and {draws} plain rows through each "
        f"suffix; reverse_sweeps: one forward of the net on probes = {probes} rows and one backward of {probes} rows "
        f"from every layer j to the first (all pairs i < j at once)")


# --------------------------------------------------------------------------- kernels


def _kernel_case(benchmark, bench_report, bench_time, kernel, impl, x, dtype, rounds, inner):
    """One row for `kernel` by `impl` ("stabkern", "torch" or "clone") on rows x (B, ...) with TRIALS trials."""
    b, cuda = len(x), x.is_cuda
    radius = 0.1 * x.flatten(1).double().norm(dim=1)
    noisy = kernels.sphere_noise(x, radius, trials=TRIALS, seed=1, stream=0, out_dtype=dtype)

    def torch_noise():
        eta = torch.randn(TRIALS * b, x[0].numel(), device=x.device)
        eta *= (radius.repeat(TRIALS) / eta.double().norm(dim=1)).float()[:, None]
        return (x.flatten(1).repeat(TRIALS, 1) + eta).to(dtype)

    backend = "auto" if cuda else "cpu"
    fns = {
        ("sphere_noise", "stabkern"): lambda: kernels.sphere_noise(x, radius, trials=TRIALS, seed=1, stream=0,
                                                                   out_dtype=dtype, backend=backend),
        ("sphere_noise", "torch"): torch_noise,
        ("sq_error", "stabkern"): lambda: kernels.sq_error(noisy, x, backend=backend),
        ("sq_error", "torch"): lambda: (noisy.unflatten(0, (TRIALS, b)).float() - x).square().sum(
            dim=tuple(range(2, x.dim() + 1))),  # no view across dims: the noise may be channels_last
        ("sphere_noise", "clone"): noisy.clone,
        ("sq_error", "clone"): noisy.clone,
    }
    size = noisy.element_size()
    # bytes a kernel must move: the clean rows once and the T B noisy rows once (written or read); a clone
    # reads and writes the noisy rows
    nbytes = 2 * size * noisy.numel() if impl == "clone" else x.element_size() * x.numel() + size * noisy.numel()
    median = bench_time(fns[(kernel, impl)], rounds=rounds, inner=inner, warmup=1, cuda=cuda, benchmark=benchmark)
    key = f"{kernel} {x.device.type} {noisy.dtype}"
    name = {"stabkern": f"stabkern {backend}", "torch": "torch", "clone": "torch clone (copy)"}[impl]
    bench_report("stability").add(kernel, shape=(TRIALS * b, *x.shape[1:]), dtype=noisy.dtype, device=x.device.type,
                                  backend=name, median_s=median, work=nbytes, unit=BYTES,
                                  key=f"{key} {impl}" if impl != "stabkern" else None, baseline=f"{key} torch",
                                  ceiling=f"{key} clone")


@pytest.mark.parametrize("kernel", ["sphere_noise", "sq_error"])
@pytest.mark.parametrize("impl", ["stabkern", "torch", "clone"])
def test_cpu_kernels(benchmark, bench_report, bench_time, kernel, impl):
    if impl == "stabkern" and BACKENDS["cpu"].missing("noise") is not None:
        pytest.skip("stabkern._noise is not built")
    x = torch.randn(449, 1024)  # rows of the digits net's largest layer input (16 x 8 x 8)
    _kernel_case(benchmark, bench_report, bench_time, kernel, impl, x, torch.float32, rounds=15, inner=1)


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("kernel", ["sphere_noise", "sq_error"])
@pytest.mark.parametrize("impl", ["stabkern", "torch", "clone"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_gpu_kernels(benchmark, bench_report, bench_time, kernel, impl, dtype):
    x = torch.randn(256, 64, 32, 32, device="cuda")
    _kernel_case(benchmark, bench_report, bench_time, kernel, impl, x, dtype, rounds=10, inner=10)


# --------------------------------------------------------------------------- GPU: VGG-19


@pytest.fixture(scope="module")
def vgg():
    if not CUDA:
        pytest.skip("needs a CUDA GPU")
    torch.manual_seed(0)
    model = vgg19_cifar().cuda().eval()
    x = torch.randn(256, 3, 32, 32, device="cuda")
    return model, x


VGG_HOOK_LOOP = "vgg19: hook loop fp32"


def _vgg_row(bench_report, backend, x, median, precision, **extra):
    return bench_report("stability").add("vgg19 attenuation", shape=x.shape, dtype=x.dtype, device="cuda",
                                         backend=backend, median_s=median, work=len(x) * TRIALS * 19,
                                         unit=INJECTIONS, baseline=VGG_HOOK_LOOP,
                                         ceiling=f"vgg19: suffix forwards {precision}", precision=precision, **extra)


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_gpu_vgg19_hook_loop(bench_report, bench_time, vgg):
    model, x = vgg
    median = bench_time(lambda: ref.attenuation_reference(model, x, alpha=0.1, trials=TRIALS), rounds=3, warmup=1,
                        cuda=True)
    _vgg_row(bench_report, "hook loop", x, median, "fp32", key=VGG_HOOK_LOOP)


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("precision", ["fp32", "tf32", "bf16"])
def test_gpu_vgg19_ceiling(bench_report, bench_time, vgg, precision):
    model, x = vgg
    _add_suffix_ceiling(bench_report("stability"), bench_time, f"vgg19: suffix forwards {precision}",
                        "vgg19 attenuation", model, x, precision, baseline=VGG_HOOK_LOOP)


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("precision", ["fp32", "tf32", "bf16"])
def test_gpu_vgg19(benchmark, bench_report, bench_time, vgg, precision):
    model, x = vgg
    fn = lambda: noise_attenuation(model, x, trials=TRIALS, precision=precision, floor=False)  # noqa: E731
    median = bench_time(fn, rounds=10, warmup=1, cuda=True, benchmark=benchmark)
    _vgg_row(bench_report, "stabkern", x, median, precision, target_ms=50 if precision == "bf16" else 120)


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_gpu_vgg19_unfused_kernels(bench_report, bench_time, vgg, monkeypatch, precision):
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
    median = bench_time(lambda: noise_attenuation(model, x, trials=TRIALS, precision=precision, floor=False),
                        rounds=5, warmup=1, cuda=True)
    _vgg_row(bench_report, "stabkern, torch noise and error ops", x, median, precision)


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_gpu_vgg19_224_fits(bench_report, bench_time):
    """One bf16 run at 224x224 (peak memory reported), the hook loop and the suffix forwards once each."""
    torch.manual_seed(0)
    model = vgg19_cifar()
    model.classifier[1] = torch.nn.Linear(512 * 7 * 7, 512)
    model = model.cuda().eval()
    x = torch.randn(16, 3, 224, 224)
    torch.cuda.reset_peak_memory_stats()
    fits = {}

    def run():
        fits["layers"] = len(noise_attenuation(model, x, trials=TRIALS, precision="bf16", floor=False).layers)

    median = bench_time(run, rounds=1, warmup=0, cuda=True)
    peak = torch.cuda.max_memory_allocated() / 2 ** 30
    report = bench_report("stability")
    base, ceiling = "vgg19 224: hook loop fp32", "vgg19 224: suffix forwards bf16"
    x_gpu = x.cuda()
    report.add("vgg19-224 attenuation", shape=x.shape, dtype=x.dtype, device="cuda", backend="hook loop",
               median_s=bench_time(lambda: ref.attenuation_reference(model, x_gpu, alpha=0.1, trials=TRIALS),
                                   rounds=1, warmup=0, cuda=True),
               work=len(x) * TRIALS * fits["layers"], unit=INJECTIONS, key=base, baseline=base, ceiling=ceiling,
               precision="fp32")
    _add_suffix_ceiling(report, bench_time, ceiling, "vgg19-224 attenuation", model, x_gpu, "bf16", baseline=base)
    report.add("vgg19-224 attenuation", shape=x.shape, dtype=x.dtype, device="cuda", backend="stabkern",
               median_s=median, work=len(x) * TRIALS * fits["layers"], unit=INJECTIONS, baseline=base,
               ceiling=ceiling, precision="bf16", peak_gib=peak,
               total_gib=torch.cuda.get_device_properties(0).total_memory / 2 ** 30)
