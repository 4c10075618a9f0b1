"""zoo.build and stabkern's own VGG / ResNet: torchvision's keys, shapes, parameter counts and forward.

The expected keys are written out from torchvision's definitions (torchvision/models/vgg.py,
resnet.py), not read from our modules, and the parameter counts are the ones torchvision documents
for each architecture (1000 classes). The forward is checked against a functional re-statement of
torchvision's forward on the same state_dict, so a weights file that loads also computes the same.
"""

import pytest
import torch
import torch.nn.functional as F

from torchvision_pinned import ARCHITECTURES as PINNED_NAMES

from helpers.resnet_reference import resnet18_reference
from stabkern import zoo

# torchvision.models.<name>(weights=None).num_params, as documented per architecture.
TORCHVISION_PARAMS = {
    "vgg11": 132_863_336, "vgg11_bn": 132_868_840, "vgg13": 133_047_848, "vgg13_bn": 133_053_736,
    "vgg16": 138_357_544, "vgg16_bn": 138_365_992, "vgg19": 143_667_240, "vgg19_bn": 143_678_248,
    "resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032, "resnet101": 44_549_160,
    "resnet152": 60_192_808,
}
# resnet18 with GroupNorm(32, c): each norm keeps its per-channel weight and bias, so the count is resnet18's.
STABKERN_ONLY_PARAMS = {"resnet18_gn": 11_689_512}


def _bn(prefix, c):
    return {f"{prefix}.weight": (c,), f"{prefix}.bias": (c,), f"{prefix}.running_mean": (c,),
            f"{prefix}.running_var": (c,), f"{prefix}.num_batches_tracked": ()}


def _resnet18_keys(num_classes):
    keys = {"conv1.weight": (64, 3, 7, 7), **_bn("bn1", 64)}
    c_in = 64
    for stage, c in enumerate((64, 128, 256, 512), start=1):
        for b in range(2):
            p = f"layer{stage}.{b}"
            first_in = c_in if b == 0 else c
            keys[f"{p}.conv1.weight"] = (c, first_in, 3, 3)
            keys.update(_bn(f"{p}.bn1", c))
            keys[f"{p}.conv2.weight"] = (c, c, 3, 3)
            keys.update(_bn(f"{p}.bn2", c))
            if b == 0 and stage > 1:
                keys[f"{p}.downsample.0.weight"] = (c, c_in, 1, 1)
                keys.update(_bn(f"{p}.downsample.1", c))
        c_in = c
    keys["fc.weight"] = (num_classes, 512)
    keys["fc.bias"] = (num_classes,)
    return keys


# vgg11 (config "A"): convs at features.0, 3, 6, 8, 11, 13, 16, 18 (ReLU and max-pools between).
VGG11_CONVS = {0: (64, 3), 3: (128, 64), 6: (256, 128), 8: (256, 256), 11: (512, 256), 13: (512, 512),
               16: (512, 512), 18: (512, 512)}


def _vgg11_keys(num_classes):
    keys = {}
    for i, (c_out, c_in) in VGG11_CONVS.items():
        keys[f"features.{i}.weight"] = (c_out, c_in, 3, 3)
        keys[f"features.{i}.bias"] = (c_out,)
    for i, (c_out, c_in) in {0: (4096, 25088), 3: (4096, 4096), 6: (num_classes, 4096)}.items():
        keys[f"classifier.{i}.weight"] = (c_out, c_in)
        keys[f"classifier.{i}.bias"] = (c_out,)
    return keys


def _shapes(model):
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def resnet18():
    torch.manual_seed(0)
    return zoo.build("resnet18", 10, prefer_torchvision=False).eval()


@pytest.fixture(scope="module")
def vgg11():
    torch.manual_seed(0)
    return zoo.build("vgg11", 10, prefer_torchvision=False).eval()


def test_resnet18_keys_and_shapes_equal_torchvision(resnet18):
    expected = _resnet18_keys(10)
    assert list(resnet18.state_dict()) == list(expected)  # same order as torchvision registers them
    assert _shapes(resnet18) == expected


def test_vgg11_keys_and_shapes_equal_torchvision(vgg11):
    expected = _vgg11_keys(10)
    assert list(vgg11.state_dict()) == list(expected)
    assert _shapes(vgg11) == expected


@pytest.mark.parametrize("name", {**TORCHVISION_PARAMS, **STABKERN_ONLY_PARAMS})
def test_parameter_count_equals_torchvision(name):
    with torch.device("meta"):  # shapes only: no memory, no init cost
        model = zoo.build(name, prefer_torchvision=False)
    assert sum(p.numel() for p in model.parameters()) == {**TORCHVISION_PARAMS, **STABKERN_ONLY_PARAMS}[name]


def test_architectures_lists_every_family_member():
    # VGG / ResNet here, the eight families pinned from torchvision (test_zoo_modern.py), resnet18_gn.
    assert set(zoo.ARCHITECTURES) == set(TORCHVISION_PARAMS) | set(PINNED_NAMES) | set(STABKERN_ONLY_PARAMS)


def _with_changed_running_stats(model):
    """The state_dict with BatchNorm statistics moved off their init, so eval mode exercises them."""
    gen = torch.Generator().manual_seed(1)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for k, v in state.items():
        if k.endswith("running_mean"):
            v.copy_(0.1 * torch.randn(v.shape, generator=gen))
        elif k.endswith("running_var"):
            v.copy_(0.5 + torch.rand(v.shape, generator=gen))
    return state


def _resnet18_reference(s, x):
    """torchvision's ResNet-18 in eval mode, with BatchNorm from the state_dict's running statistics."""
    def bn(p, t):
        return F.batch_norm(t, s[p + ".running_mean"], s[p + ".running_var"], s[p + ".weight"], s[p + ".bias"],
                            False, 0.0, 1e-5)

    return resnet18_reference(s, x, bn)


def _vgg11_reference(s, x):
    for i in VGG11_CONVS:
        x = F.relu(F.conv2d(x, s[f"features.{i}.weight"], s[f"features.{i}.bias"], padding=1))
        if i in (0, 3, 8, 13, 18):  # a max-pool follows these convs' ReLU in config "A"
            x = F.max_pool2d(x, 2, 2)
    x = F.adaptive_avg_pool2d(x, 7).flatten(1)
    x = F.relu(F.linear(x, s["classifier.0.weight"], s["classifier.0.bias"]))
    x = F.relu(F.linear(x, s["classifier.3.weight"], s["classifier.3.bias"]))
    return F.linear(x, s["classifier.6.weight"], s["classifier.6.bias"])


def _close(a, b):
    # Same float32 ops in the same order up to summation order inside conv/linear: a few ulps of the
    # largest logit magnitude, times the depth, bounds the difference.
    tol = 64 * torch.finfo(torch.float32).eps * max(1.0, b.abs().max().item())
    torch.testing.assert_close(a, b, rtol=0, atol=tol)


@pytest.mark.parametrize("size", [32, 224])
def test_resnet18_forward_equals_torchvision_forward(resnet18, size):
    torch.manual_seed(2)
    model = zoo.build("resnet18", 10, prefer_torchvision=False).eval()
    state = _with_changed_running_stats(resnet18)
    model.load_state_dict(state, strict=True)  # round trip into a second, differently initialized copy
    x = torch.randn(2 if size == 32 else 1, 3, size, size)
    with torch.no_grad():
        out = model(x)
        ref = _resnet18_reference(state, x)
    assert out.shape == (x.shape[0], 10)
    _close(out, ref)


def test_vgg11_forward_at_32_equals_torchvision_forward(vgg11):
    state = vgg11.state_dict()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        out = vgg11(x)
        ref = _vgg11_reference(state, x)
    assert out.shape == (2, 10)
    _close(out, ref)


def test_strict_load_refuses_a_wrong_head(resnet18):
    other = zoo.build("resnet18", 1000, prefer_torchvision=False)
    with pytest.raises(RuntimeError, match="fc.weight"):
        other.load_state_dict(resnet18.state_dict(), strict=True)


def test_bottleneck_resnet_forward_shape():
    model = zoo.build("resnet50", 7, prefer_torchvision=False).eval()
    assert list(model.state_dict())[-2:] == ["fc.weight", "fc.bias"]
    assert "layer1.0.conv3.weight" in model.state_dict() and "layer1.0.downsample.1.running_var" in model.state_dict()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 7)


def test_unknown_name_lists_architectures():
    with pytest.raises(ValueError, match="resnet18") as err:
        zoo.build("resnet19")
    assert "vgg19_bn" in str(err.value)


def test_bad_num_classes():
    with pytest.raises(TypeError, match="num_classes"):
        zoo.build("resnet18", 10.0)
    with pytest.raises(ValueError, match="num_classes"):
        zoo.build("resnet18", 0)


def test_prefers_torchvision_when_it_imports(monkeypatch):
    calls = []

    class FakeModels:
        @staticmethod
        def resnet18(weights, num_classes):
            calls.append((weights, num_classes))
            return torch.nn.Identity()

    monkeypatch.setattr(zoo, "_torchvision_models", lambda: FakeModels)
    assert isinstance(zoo.build("resnet18", 5), torch.nn.Identity)
    assert calls == [(None, 5)]
    assert not isinstance(zoo.build("resnet18", 5, prefer_torchvision=False), torch.nn.Identity)
