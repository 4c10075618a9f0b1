"""load_model: every spec kind written into tmp_path and loaded back (same outputs); every bad input an InputError."""

import pickle

import pytest
import torch
from torch import nn

from stabkern import zoo
from stabkern.io import IMAGENET, InputError, LoadedModel, load_model


class TinyNet(nn.Module):
    """A small conv net; module-level so a pickled instance can be unpickled."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 5)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


@pytest.fixture(scope="module")
def resnet18_10():
    torch.manual_seed(0)
    return zoo.build("resnet18", 10, prefer_torchvision=False).eval()


@pytest.fixture
def x32():
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _same_outputs(a, b, x):
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)


def test_architecture_with_state_dict(tmp_path, resnet18_10, x32):
    torch.save(resnet18_10.state_dict(), tmp_path / "w.pt")
    loaded = load_model(f"resnet18:{tmp_path / 'w.pt'}")  # num_classes read from fc.weight
    assert isinstance(loaded, LoadedModel)
    assert loaded.source == "architecture" and loaded.name == "resnet18:w.pt"
    assert loaded.model.fc.out_features == 10 and not loaded.model.training
    assert loaded.normalization is None and loaded.input_size is None  # a 10-class head: not ImageNet
    _same_outputs(loaded.model, resnet18_10, x32)
    assert load_model(f"resnet18:{tmp_path / 'w.pt'}", num_classes=10).model.fc.out_features == 10


def test_checkpoint_wrappers_and_dataparallel_prefix(tmp_path, resnet18_10, x32):
    state = {f"module.{k}": v for k, v in resnet18_10.state_dict().items()}
    torch.save({"epoch": 3, "state_dict": state}, tmp_path / "ckpt.pt")
    _same_outputs(load_model(f"resnet18:{tmp_path / 'ckpt.pt'}").model, resnet18_10, x32)


def test_imagenet_head_and_random_weights():
    loaded = load_model("resnet18")
    assert loaded.source == "architecture" and "random weights" in loaded.name
    assert loaded.model.fc.out_features == 1000
    assert loaded.normalization == IMAGENET and loaded.input_size == (224, 224)
    assert load_model("resnet18", num_classes=7).model.fc.out_features == 7


def test_vgg_state_dict_infers_classes_from_the_last_linear(tmp_path):
    model = zoo.build("vgg11", 3, prefer_torchvision=False)
    torch.save(model.state_dict(), tmp_path / "v.pt")
    loaded = load_model(f"vgg11:{tmp_path / 'v.pt'}")
    assert loaded.model.classifier[6].out_features == 3
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[k], v)


@pytest.mark.parametrize("arch, head", [("squeezenet1_1", "classifier.1.weight"), ("resnet18_gn", "fc.weight")])
def test_zoo_state_dict_infers_classes_from_the_head(tmp_path, arch, head):
    """SqueezeNet scores classes with a 1x1 conv (no Linear at all); resnet18_gn has no running stats."""
    torch.manual_seed(0)
    model = zoo.build(arch, 3, prefer_torchvision=False)
    torch.save(model.state_dict(), tmp_path / "w.pt")
    loaded = load_model(f"{arch}:{tmp_path / 'w.pt'}")
    assert loaded.model.state_dict()[head].shape[0] == 3
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[k], v)


def test_torchscript(tmp_path, x32):
    model = TinyNet().eval()
    torch.jit.trace(model, x32).save(str(tmp_path / "m.ts"))
    loaded = load_model(str(tmp_path / "m.ts"))
    assert loaded.source == "torchscript" and loaded.name == "m.ts"
    _same_outputs(loaded.model, model, x32)


def test_torch_export(tmp_path, x32):
    model = TinyNet().eval()
    batch = ({0: torch.export.Dim("batch")},)  # the meters run batches of every size
    torch.export.save(torch.export.export(model, (x32,), dynamic_shapes=batch), str(tmp_path / "m.pt2"))
    with pytest.raises(InputError, match="torch.export program.*--trust-pickle"):
        load_model(str(tmp_path / "m.pt2"))  # torch.export.load can run code from the file
    loaded = load_model(str(tmp_path / "m.pt2"), trust_pickle=True)
    assert loaded.source == "export" and loaded.input_size == (32, 32)
    loaded.model.eval()  # torch's exported modules refuse eval(); the loader makes it a flag
    _same_outputs(loaded.model, model, x32)


def test_pickled_module_only_when_trusted(tmp_path, x32):
    model = TinyNet().eval()
    torch.save(model, tmp_path / "whole.pt")
    with pytest.raises(InputError, match="--trust-pickle"):
        load_model(str(tmp_path / "whole.pt"))
    loaded = load_model(str(tmp_path / "whole.pt"), trust_pickle=True)
    assert loaded.source == "pickle"
    _same_outputs(loaded.model, model, x32)
    # as the weights of an architecture, a whole pickled model is refused with the same advice
    with pytest.raises(InputError, match="not a plain state_dict.*--trust-pickle"):
        load_model(f"resnet18:{tmp_path / 'whole.pt'}")


def test_digits():
    loaded = load_model("digits")
    assert loaded.source == "digits" and loaded.input_size == (8, 8)
    (mean,), (std,) = loaded.normalization
    assert 0.25 < mean < 0.35 and 0.3 < std < 0.45  # pixel / 16 of scikit-learn's digits
    assert loaded.model(torch.zeros(1, 1, 8, 8)).shape == (1, 10)


def test_errors_name_the_problem(tmp_path, resnet18_10):
    torch.save(resnet18_10.state_dict(), tmp_path / "w.pt")
    cases = [
        ("resnet19", {}, "unknown architecture 'resnet19'.*resnet18"),
        ("resnet19:w.pt", {}, "unknown architecture 'resnet19'"),
        (f"resnet18:{tmp_path / 'missing.pt'}", {}, "weights file not found"),
        (str(tmp_path / "missing.pt"), {}, "no such model file"),
        (f"resnet18:{tmp_path}", {}, "is a folder"),
        (f"resnet18:{tmp_path / 'w.pt'}", {"num_classes": 100}, r"fc.weight is \(10, 512\).*--num-classes"),
        (f"resnet34:{tmp_path / 'w.pt'}", {}, "does not match resnet34: missing keys layer1.2"),
        (f"vgg11:{tmp_path / 'w.pt'}", {}, "another architecture"),
        (str(tmp_path / "w.pt"), {}, "holds a state_dict, which needs its architecture"),
        ("resnet18", {"num_classes": 0}, "num_classes"),
        ("resnet18", {"device": "tpu"}, "unknown device|not supported"),
    ]
    for spec, kwargs, match in cases:
        with pytest.raises(InputError, match=match):
            load_model(spec, **kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_unavailable_cuda():
    with pytest.raises(InputError, match="CUDA is not available.*--device cpu"):
        load_model("digits", device="cuda")


def test_corrupt_files(tmp_path, resnet18_10):
    torch.save(resnet18_10.state_dict(), tmp_path / "w.pt")
    raw = (tmp_path / "w.pt").read_bytes()
    (tmp_path / "truncated.pt").write_bytes(raw[: len(raw) // 2])
    (tmp_path / "garbage.pt").write_bytes(b"\x80\x02not really a pickle")
    (tmp_path / "text.pt").write_text("hello")
    (tmp_path / "bad.pt2").write_bytes(b"not a zip")
    for name in ("truncated.pt", "garbage.pt", "text.pt"):
        with pytest.raises(InputError, match="corrupt"):
            load_model(f"resnet18:{tmp_path / name}")
        with pytest.raises(InputError, match="corrupt"):
            load_model(str(tmp_path / name))
    with pytest.raises(InputError, match="not a torch.export archive"):
        load_model(str(tmp_path / "bad.pt2"))
    torch.save({"weights": [1, 2]}, tmp_path / "not_tensors.pt")
    with pytest.raises(InputError, match="does not hold a state_dict"):
        load_model(f"resnet18:{tmp_path / 'not_tensors.pt'}")
    torch.save([torch.zeros(2)], tmp_path / "list.pt")
    with pytest.raises(InputError, match="not an nn.Module"):
        load_model(str(tmp_path / "list.pt"))


def test_untrusted_pickle_is_never_unpickled(tmp_path):
    """Without trust_pickle a file whose unpickling would run code is refused before it runs."""
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump(Payload(), f)
    for spec in (str(tmp_path / "evil.pt"), f"resnet18:{tmp_path / 'evil.pt'}"):
        with pytest.raises(InputError):
            load_model(spec)
    assert not marker.exists()


def test_non_finite_weights_refused_by_name(tmp_path, resnet18_10):
    """NaN or Inf in any parameter or buffer is refused at load, naming it (every kind of model file)."""
    state = resnet18_10.state_dict()
    state["layer1.0.conv2.weight"] = state["layer1.0.conv2.weight"].clone()
    state["layer1.0.conv2.weight"][0, 0, 0, 0] = float("nan")
    torch.save(state, tmp_path / "nan.pt")
    with pytest.raises(InputError, match=r"layer1\.0\.conv2\.weight holds 1 NaN or Inf"):
        load_model(f"resnet18:{tmp_path / 'nan.pt'}")
    net = TinyNet().eval()
    net.bn.running_var[1] = float("inf")
    torch.jit.save(torch.jit.script(net), str(tmp_path / "inf.ts"))
    with pytest.raises(InputError, match=r"bn\.running_var holds 1 NaN or Inf"):
        load_model(str(tmp_path / "inf.ts"))


def _rewrite_export(src, dst, member_suffix, data):
    """Copy the torch.export archive src to dst with the member ending in member_suffix replaced by data
    (or dropped when data is None)."""
    import zipfile

    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            if not info.filename.endswith(member_suffix):
                zout.writestr(info, zin.read(info))
            elif data is not None:
                zout.writestr(info, data)


def test_crafted_torch_export_never_runs_code(tmp_path, x32):
    """torch.export.load falls back to full unpickling of the sample inputs when the safe load fails:
    untrusted, a .pt2 is refused before torch reads it."""
    import io

    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.export.save(torch.export.export(TinyNet().eval(), (x32,)), str(tmp_path / "m.pt2"))
    buf = io.BytesIO()
    torch.save(Payload(), buf)
    _rewrite_export(tmp_path / "m.pt2", tmp_path / "evil.pt2", "sample_inputs/model.pt", buf.getvalue())
    with pytest.raises(InputError, match="--trust-pickle"):
        load_model(str(tmp_path / "evil.pt2"))
    assert not marker.exists()
