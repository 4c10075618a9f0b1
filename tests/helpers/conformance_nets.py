"""The conformance nets (tests/conformance/): one representative of every zoo family, small and seeded (issue 17 section 1).

Family members that share their code (VGG-11/13/16/19 with or without BatchNorm; ResNet-18/34 with basic
blocks, 50/101/152 with bottlenecks) are represented by one member; the GroupNorm ResNet and every modern
net by itself. `test_zoo_coverage.py` fails when a zoo architecture has no representative here.

Each net: stabkern's own definition (`prefer_torchvision=False`: the same modules whether torchvision
imports or not), random weights from a fixed seed, 10 classes, BatchNorm running statistics drawn away
from (0, 1) so that the norms are not the identity, eval mode; inputs (2, 3, 32, 32), the smallest size
every family takes (DenseNet and ConvNeXt downsample 32x).
"""

from __future__ import annotations

import functools
import os

import torch
from torch import nn

import numpy as np

from helpers.stability_reference import attenuation_reference, rounding_tolerance
from stabkern import zoo

# family -> its representative architecture in stabkern.zoo
REPRESENTATIVES = {
    "vgg": "vgg11_bn",
    "resnet-basic": "resnet18",
    "resnet-bottleneck": "resnet50",
    "resnet-groupnorm": "resnet18_gn",
    "densenet": "densenet121",
    "mobilenet_v2": "mobilenet_v2",
    "mobilenet_v3": "mobilenet_v3_large",
    "efficientnet": "efficientnet_b0",
    "convnext": "convnext_tiny",
    "regnet": "regnet_y_400mf",
    "shufflenet": "shufflenet_v2_x1_0",
    "squeezenet": "squeezenet1_1",
}
ALL_ARCHS = list(REPRESENTATIVES.values())
# CI's 2-core budget takes four nets that between them carry every module kind the others add to VGG and
# ResNet (concatenation, GroupNorm, SE gates with Hardswish / Hardsigmoid, depthwise convs, LayerNorm and a
# Linear on (N, H, W, C) inputs, stochastic depth in eval); STABKERN_CONFORMANCE=all runs every family (about
# half an hour on 2 cores: DenseNet-121's 120 layers, ResNet-50 and VGG-11-BN's 103M-parameter classifier).
CI_ARCHS = ["squeezenet1_1", "resnet18_gn", "mobilenet_v3_large", "convnext_tiny"]
ARCHS = ALL_ARCHS if os.environ.get("STABKERN_CONFORMANCE") == "all" else CI_ARCHS
SAMPLES, SIZE, CLASSES = 2, 32, 10


@functools.lru_cache(maxsize=None)
def net_of(arch: str) -> nn.Module:
    torch.manual_seed(0)
    model = zoo.build(arch, CLASSES, prefer_torchvision=False)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=gen))
    return model.eval()


def inputs_of() -> torch.Tensor:
    """(SAMPLES, 3, SIZE, SIZE) standard normal, seeded."""
    return torch.randn(SAMPLES, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))


# the attenuation settings every conformance check shares (the reference is computed once per net)
ALPHA, TRIALS, SEED = 0.2, 2, 11


@functools.lru_cache(maxsize=None)
def reference_of(arch: str) -> torch.Tensor:
    """The hook-loop reference r (TRIALS, SAMPLES, L, L) of `arch` on inputs_of(), with the noise the fast
    path draws (stabkern-noise-v1 of (SEED, layer i, sample b, trial t))."""
    return attenuation_reference(net_of(arch), inputs_of(), alpha=ALPHA, trials=TRIALS, seed=SEED, spec_noise=True)


def assert_matches_reference(model, x, rep, r):
    """rep (an AttenuationReport) equals the reference ratios r (T, N, L, L) per sample: the NaN
    pattern exactly (undefined: j before i, j not downstream of i, where the reference sees r = 0, except an
    entry the fast path keeps whose value is 0 within rounding: a dependence the reference rounded away),
    the values within rounding_tolerance, and their squares within d (2 r + d)."""
    want, want_sq = r.mean(0).numpy(), (r ** 2).mean(0).numpy()
    defined = ~np.isnan(rep.per_sample)
    d = np.broadcast_to(rounding_tolerance(model, x, rep), want.shape)
    # r = 0 in the reference also when layer j depends on i but the noise's effect fell below x^j's float32
    # rounding on the way (EfficientNet-B0, sample 1, layer 10 -> 62: saturated SE gates): there the fast path
    # may keep the entry, as long as its value is zero within the same rounding tolerance
    vanished = defined & (want == 0) & (np.abs(np.nan_to_num(rep.per_sample)) <= d)
    np.testing.assert_array_equal(defined & ~vanished, ~np.isnan(want) & (want != 0))
    err = np.abs(rep.per_sample - want)
    assert np.all(err[defined] <= d[defined]), f"worst |r - r_ref| / tol = {np.max(err[defined] / d[defined]):.3g}"
    d_sq = d * (2 * np.nan_to_num(rep.mean) + d)
    assert np.all(np.abs(rep.per_sample_sq - want_sq)[defined] <= d_sq[defined])


def forward_with_pre_hooks(model: nn.Module, x: torch.Tensor, modules: dict, record) -> None:
    """model(x) without grad, calling record(name, input) as each of `modules` ({name: module}) starts its forward;
    the hooks are removed even when the forward raises, and x is not written (a clone goes in)."""
    handles = [m.register_forward_pre_hook(lambda m, a, name=name: record(name, a[0])) for name, m in modules.items()]
    try:
        with torch.no_grad():
            model(x.clone())
    finally:
        for h in handles:
            h.remove()
