"""stabkern's DenseNet / MobileNet / EfficientNet / ConvNeXt / RegNet / ShuffleNet / SqueezeNet against
torchvision 0.28, and the GroupNorm ResNet-18.

The expected facts are torchvision's own, pinned in torchvision_pinned.json (see torchvision_pinned.py):
every state_dict key in order with its shape and the parameter count (1000 classes), and the eval logits
for `pinned_input()` with `deterministic_state_dict` weights (10 classes), computed in float32 by
torchvision. torchvision itself is not imported here (it does not import beside a CPU torch).
"""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision_pinned import ARCHITECTURES as PINNED_NAMES
from torchvision_pinned import LOGIT_CLASSES, deterministic_state_dict, load, pinned_input

from helpers.resnet_reference import resnet18_reference
from stabkern import zoo
from stabkern.zoo._blocks import StochasticDepth
from stabkern.zoo.resnet import ResNet

PINNED = load()["architectures"]
EPS32 = torch.finfo(torch.float32).eps
RUNNING_STATS = ("running_mean", "running_var", "num_batches_tracked")


def _weight_layers(model):
    return sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in model.modules())


def _float32_error_bound(model, logits):
    """Bound on |float32 forward - exact forward| for these logits: 8 eps32 sqrt(L) max|logit|, L the
    number of conv / Linear layers.

    Why this form: each layer rounds its output to a relative error of a few units of roundoff (blocked
    float32 dot products), the layers' errors are independent and, with weights ~ N(0, 1/fan_in) and the
    norms, pass on with gain about 1, so they add in quadrature: ~ eps32 sqrt(L) relative to the logits'
    scale. Measured on an AMD Zen 3 (AVX2, 1 and 2 threads) against the same nets run in float64, the
    error of our forward and of torchvision's pinned one is at most 0.77 eps32 sqrt(L) max|logit| over
    the eight nets, so 8 leaves a 10x margin for other summation orders (AVX-512 kernels, other thread
    splits). (At one thread ours and torchvision's are bitwise equal: the same ops in the same order.)
    Real differences are far larger than the two-sided 16 units the test allows: a 100x wrong BatchNorm
    eps moves the logits by 600+ such units, a 10x wrong one by ~150, tanh-approximated GELU in ConvNeXt
    by 230. (A 10x wrong LayerNorm eps in ConvNeXt moves them by 10, 1e-6 relative: below resolution.)
    """
    return 8 * EPS32 * math.sqrt(_weight_layers(model)) * logits.abs().max().item()


def _with_deterministic_weights(name, num_classes):
    """Our `name` in eval mode holding deterministic_state_dict's weights. Built on the meta device and
    then filled: the random init of a full trunk (28M parameters for ConvNeXt-Tiny) would only be
    overwritten, and it costs seconds."""
    with torch.device("meta"):
        model = zoo.build(name, num_classes, prefer_torchvision=False)
    state = deterministic_state_dict(model)  # reads keys and shapes only
    # ... except that its zeros_like of the integer buffers (num_batches_tracked) stays on meta
    state = {k: torch.zeros(v.shape, dtype=v.dtype) if v.is_meta else v for k, v in state.items()}
    model = model.to_empty(device="cpu")
    model.load_state_dict(state, strict=True)  # every parameter and buffer is in the state_dict
    return model.eval(), state


def _shapes(model):
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def test_pinned_file_covers_the_architectures():
    assert tuple(PINNED) == PINNED_NAMES
    assert set(PINNED_NAMES) <= set(zoo.ARCHITECTURES)


@pytest.mark.parametrize("name", PINNED_NAMES)
def test_keys_shapes_and_parameter_count_equal_torchvision(name):
    with torch.device("meta"):  # shapes only: no memory, no init cost
        model = zoo.build(name, prefer_torchvision=False)
    expected = PINNED[name]["state_dict"]
    assert list(model.state_dict()) == list(expected)  # same keys in torchvision's order
    assert _shapes(model) == expected
    assert sum(p.numel() for p in model.parameters()) == PINNED[name]["params"]


@pytest.mark.parametrize("name", PINNED_NAMES)
def test_eval_logits_equal_torchvision(name):
    model, _ = _with_deterministic_weights(name, LOGIT_CLASSES)
    pinned = torch.tensor(PINNED[name]["logits"], dtype=torch.float64)
    with torch.no_grad():
        out = model(pinned_input()).double()
    assert out.shape == pinned.shape == (2, LOGIT_CLASSES)
    # Both are float32 forwards of the same net: each within one error bound of the exact logits.
    torch.testing.assert_close(out, pinned, rtol=0, atol=2 * _float32_error_bound(model, pinned))

    # 32x32, the smallest input build() promises, in eval mode and in train mode (dropout, stochastic
    # depth, batch statistics): logits of the right shape, finite.
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        for out in (model(x), model.train()(x)):
            assert out.shape == (2, LOGIT_CLASSES) and torch.isfinite(out).all()


def test_stochastic_depth_drops_whole_samples_in_training_only():
    drop = StochasticDepth(0.5)
    x = torch.ones(4000, 3, 2, 2)
    assert drop.eval()(x) is x
    torch.manual_seed(0)
    out = drop.train()(x)
    per_sample = out.flatten(1)
    kept = per_sample[:, 0] != 0
    # each sample all 0 or all 1 / (1 - p) = 2; expectation 1, so the kept fraction ~ Binomial(4000, 0.5)
    assert torch.equal(per_sample, kept[:, None].float().expand_as(per_sample) * 2)
    assert abs(kept.float().mean().item() - 0.5) < 4 * math.sqrt(0.25 / 4000)  # 4 standard deviations
    assert torch.equal(StochasticDepth(0.0).train()(x), x)


# ------------------------------------------------------------------------------------ resnet18_gn


def _resnet18_gn_reference(s, x):
    """torchvision's ResNet-18 forward with norm_layer = GroupNorm(32, c), written with F on a state_dict."""
    def gn(p, t):
        return F.group_norm(t, 32, s[p + ".weight"], s[p + ".bias"], 1e-5)

    return resnet18_reference(s, x, gn)


def test_resnet18_gn_has_group_norm_and_resnet18_keys_without_running_stats():
    with torch.device("meta"):
        gn = zoo.build("resnet18_gn", prefer_torchvision=False)
        bn = zoo.build("resnet18", prefer_torchvision=False)
    norms = [m for m in gn.modules() if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm))]
    assert len(norms) == 20 and all(isinstance(m, nn.GroupNorm) and m.num_groups == 32 for m in norms)
    expected = {k: v for k, v in _shapes(bn).items() if not k.endswith(RUNNING_STATS)}
    assert list(gn.state_dict()) == list(expected) and _shapes(gn) == expected
    assert sum(p.numel() for p in gn.parameters()) == sum(p.numel() for p in bn.parameters())


def test_resnet18_gn_loads_a_resnet18_state_without_running_stats_and_computes_group_norm():
    torch.manual_seed(0)
    resnet18 = zoo.build("resnet18", 10, prefer_torchvision=False)
    state = {k: v for k, v in deterministic_state_dict(resnet18).items() if not k.endswith(RUNNING_STATS)}
    model = zoo.build("resnet18_gn", 10, prefer_torchvision=False)
    model.load_state_dict(state, strict=True)
    x = pinned_input()
    with torch.no_grad():
        ref = _resnet18_gn_reference(state, x)
        out_eval = model.eval()(x)
        out_train = model.train()(x)  # GroupNorm uses no batch statistics: train == eval
    # Same float32 ops as the reference up to summation order inside each conv: the bound above.
    bound = 2 * _float32_error_bound(model, ref)
    torch.testing.assert_close(out_eval, ref, rtol=0, atol=bound)
    torch.testing.assert_close(out_train, out_eval, rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="running_mean"):
        model.load_state_dict(deterministic_state_dict(resnet18), strict=True)  # a BatchNorm file


def test_resnet18_gn_is_ours_even_when_torchvision_imports(monkeypatch):
    class FakeModels:  # torchvision.models: no resnet18_gn constructor
        @staticmethod
        def resnet18(weights, num_classes):
            return nn.Identity()

    monkeypatch.setattr(zoo, "_torchvision_models", lambda: FakeModels)
    assert isinstance(zoo.build("resnet18", 5), nn.Identity)
    model = zoo.build("resnet18_gn", 5)
    assert isinstance(model, ResNet) and isinstance(model.bn1, nn.GroupNorm)
