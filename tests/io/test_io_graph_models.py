"""TorchScript (scripted, traced) and torch.export files as eager modules (io/torchscript.py, io/exported.py):
the file's layer names, outputs bitwise the eager model's, and every meter's result the eager model's."""

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from stabkern import compress_model, measure, noise_attenuation
from stabkern.io import InputError, load_model
from stabkern.io.torchscript import TorchScriptModel
from stabkern.stability.layers import match_layers

KINDS = ("scripted", "traced", "exported")


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.fc1 = nn.Linear(channels, channels // 4)
        self.fc2 = nn.Linear(channels // 4, channels)

    def forward(self, x):
        s = torch.sigmoid(self.fc2(F.silu(self.fc1(x.mean((2, 3))))))
        return x * s[:, :, None, None]


class UserNet(nn.Module):
    """The issue's custom net: a depthwise-separable conv, GroupNorm, SiLU, an SE gate and a residual add."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
        self.pointwise = nn.Conv2d(8, 8, 1)
        self.norm = nn.GroupNorm(2, 8)
        self.se = SqueezeExcite(8)
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        x = F.silu(self.stem(x))
        x = x + self.se(F.silu(self.norm(self.pointwise(self.depthwise(x)))))
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def _x(n, seed=1):
    return torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def save(model, kind, path):
    """`model` saved as `kind` at path; exported with a dynamic batch, as the loader requires."""
    sample = _x(2)
    if kind == "scripted":
        torch.jit.save(torch.jit.script(model), str(path))
    elif kind == "traced":
        torch.jit.save(torch.jit.trace(model, sample), str(path))
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.export.export(model, (sample,), dynamic_shapes=({0: torch.export.Dim("batch")},))
        torch.export.save(program, str(path))
    return path


@pytest.fixture(scope="module")
def user_net():
    torch.manual_seed(0)
    return UserNet().eval()


@pytest.fixture(scope="module")
def files(user_net, tmp_path_factory):
    root = tmp_path_factory.mktemp("graph-models")
    return {kind: save(user_net, kind, root / f"net-{kind}.{'pt2' if kind == 'exported' else 'pt'}")
            for kind in KINDS}


def _layers(model):
    return [(name, type(m).__name__) for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


@pytest.mark.parametrize("kind", KINDS)
def test_layers_named_as_the_file_and_outputs_bitwise(user_net, files, kind):
    loaded = load_model(str(files[kind]), trust_pickle=kind == "exported")
    model = loaded.model
    assert loaded.source == ("export" if kind == "exported" else "torchscript")
    assert _layers(model) == _layers(user_net)
    assert [n for n, _ in model.named_parameters()] == [n for n, _ in user_net.named_parameters()]
    for n in (1, 3):  # any batch size: nothing was specialized to the sample's
        with torch.no_grad():
            assert torch.equal(model(_x(n)), user_net(_x(n)))


def _attenuation(model, method):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "auto" on a TorchScript model says it meters with hooks
        return noise_attenuation(model, _x(4), trials=2, seed=3, method=method)


@pytest.fixture(scope="module")
def eager_attenuation(user_net):
    return {method: _attenuation(user_net, method) for method in ("graph", "hooks")}


@pytest.mark.parametrize("kind", KINDS)
def test_attenuation_equals_the_eager_models(files, eager_attenuation, kind):
    """Same layers, same noise (seed), same operators: the eager model's attenuation, bit for bit, by the same
    method (TorchScript runs op by op in Python, which fx cannot trace: hooks; an exported graph: fx)."""
    model = load_model(str(files[kind]), trust_pickle=kind == "exported").model
    ours = _attenuation(model, "auto")
    assert ours.method == ("graph" if kind == "exported" else "hooks")
    eager = eager_attenuation[ours.method]
    assert ours.layers == eager.layers
    np.testing.assert_array_equal(ours.mean, eager.mean)


def test_measure_equals_the_eager_models(user_net, files):
    """Every meter of `measure` on the scripted file (the interpreted path) equals the eager model's."""
    model = load_model(str(files["scripted"])).model
    ours, eager = (measure(m, _x(4), trials=2, probes=2, seed=3, method="hooks").to_dict() for m in (model, user_net))
    assert ours["layers"] == eager["layers"]
    for doc in (ours, eager):
        doc.pop("settings")  # the device, timings...
    assert ours == eager


@pytest.mark.parametrize("kind", ["scripted", "exported"])
def test_compress_and_layer_patterns(user_net, files, kind):
    """compress_model swaps the file's layers by name; match_layers picks them by glob."""
    model = load_model(str(files[kind]), trust_pickle=kind == "exported").model
    names = match_layers(model, ["se.*", "head"])
    assert names == ["se.fc1", "se.fc2", "head"]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    small, report = compress_model(model, 4, mode="tensor", seed=2, layers=names)
    eager_small, eager_report = compress_model(user_net, 4, mode="tensor", seed=2, layers=names)
    assert [r.name for r in report.layers] == names
    with torch.no_grad():
        assert torch.equal(small(_x(3)), eager_small(_x(3)))
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # the loaded model untouched
    with pytest.raises(ValueError, match=r"'features\.\*' matches no Conv2d or Linear layer; the model's are stem"):
        match_layers(model, ["features.*"])


def test_export_with_a_fixed_batch_is_refused(user_net, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.export.save(torch.export.export(user_net, (_x(2),)), str(tmp_path / "fixed.pt2"))
    with pytest.raises(InputError, match="exported for batches of exactly 2 samples.*Dim\\('batch'\\)"):
        load_model(str(tmp_path / "fixed.pt2"), trust_pickle=True)


def test_torchscript_runs_control_flow_per_call(tmp_path):
    """A scripted forward that branches and loops on the input's shape runs the branch of each call."""

    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            y = self.conv(x)
            for _ in range(x.shape[0]):
                y = y * 0.5
            if x.shape[-1] > 8:
                y = F.max_pool2d(y, 2)
            return self.fc(y.mean((2, 3)))

    torch.manual_seed(0)
    net = Branchy().eval()
    torch.jit.save(torch.jit.script(net), str(tmp_path / "branchy.pt"))
    model = load_model(str(tmp_path / "branchy.pt")).model
    assert isinstance(model, TorchScriptModel) and _layers(model) == [("conv", "Conv2d"), ("fc", "Linear")]
    for x in (_x(1)[..., :8, :8], _x(3)):
        with torch.no_grad():
            assert torch.equal(model(x), net(x))


def test_torchscript_list_item_assignment(tmp_path):
    """A scripted forward that assigns into a list (aten::_set_item) runs, and the builtin returns the list as
    the op's schema does (t[](a!) -> t[](a!)), so a graph reading that output sees the list."""
    from stabkern.io.torchscript import _PYTHON_BUILTINS

    class Reshaper(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            shape = [0, 0]
            shape[0] = x.shape[0]
            shape[1] = -1
            return self.conv(x).reshape(shape)

    torch.manual_seed(0)
    net = Reshaper().eval()
    torch.jit.save(torch.jit.script(net), str(tmp_path / "reshaper.pt"))
    model = load_model(str(tmp_path / "reshaper.pt")).model
    with torch.no_grad():
        assert torch.equal(model(_x(2)), net(_x(2)))
    seq = [1, 2]
    assert _PYTHON_BUILTINS["_set_item"](seq, 0, 5) is seq and seq == [5, 2]


@pytest.fixture(scope="module")
def resnet_files(tmp_path_factory):
    from stabkern import zoo

    torch.manual_seed(0)
    net = zoo.build("resnet18_gn", 10, prefer_torchvision=False).eval()
    root = tmp_path_factory.mktemp("resnet18-gn")
    return net, {kind: save(net, kind, root / f"r.{'pt2' if kind == 'exported' else 'pt'}")
                 for kind in ("scripted", "exported")}  # traced runs the same interpreter: the custom net covers it


@pytest.mark.parametrize("kind", ["scripted", "exported"])
def test_zoo_resnet18_gn_each_way(resnet_files, kind):
    """A zoo net (residual adds in place, GroupNorm, max-pool) scripted and exported: its 21 layers named as
    torchvision names them, outputs bitwise, attenuation bitwise the eager net's by the same method. In the
    model's own layout (channels_last=False): channels_last runs torch.export's decomposed ops (its
    adaptive pool is a mean) in another summation order than the eager net's, a float rounding difference."""
    net, files = resnet_files
    model = load_model(str(files[kind]), trust_pickle=kind == "exported").model
    assert _layers(model) == _layers(net) and len(_layers(net)) == 21
    with torch.no_grad():
        assert torch.equal(model(_x(2)), net(_x(2)))
    layers = ["conv1", "layer2.0.downsample.0", "layer4.1.conv2", "fc"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = noise_attenuation(model, _x(2), trials=2, seed=3, layers=layers, channels_last=False)
        eager = noise_attenuation(net, _x(2), trials=2, seed=3, layers=layers, channels_last=False,
                                  method=ours.method)
    np.testing.assert_array_equal(ours.mean, eager.mean)
