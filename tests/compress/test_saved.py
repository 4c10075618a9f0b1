"""save_compressed / load_compressed: a compressed model written to one file reloads, in this process and in a
fresh one, with outputs equal bit for bit to the compressed model's (the same coefficients, seed and stream
regenerate the same weights); a user's own class is filled from a copy of the dense model, which is left
alone; bad files and mismatched models are refused with errors naming the fix."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import stabkern
from helpers.model_state import assert_unchanged, snapshot
from stabkern import compress_model, load_compressed, save_compressed
from stabkern.compress.saved import FORMAT
from stabkern.sketched import SketchedConv2d, SketchedLinear
from stabkern.zoo import DigitsNet, build

ROOT = Path(__file__).resolve().parents[2]


class UserNet(nn.Module):
    """A user's own class: convs with stride, dilation, groups, 'same' and reflect padding, BatchNorm, two Linear."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, padding_mode="reflect")
        self.bn = nn.BatchNorm2d(8)
        self.grouped = nn.Conv2d(8, 8, 3, stride=2, padding=2, dilation=2, groups=4)
        self.same = nn.Conv2d(8, 6, 3, padding="same", bias=False)
        self.fc = nn.Linear(6 * 4 * 4, 12)
        self.head = nn.Linear(12, 5)

    def forward(self, x):
        x = torch.relu(self.bn(self.stem(x)))
        x = torch.relu(self.same(torch.relu(self.grouped(x))))
        return self.head(torch.relu(self.fc(x.flatten(1))))


def user_net(seed: int) -> UserNet:
    torch.manual_seed(seed)
    net = UserNet().eval()
    with torch.no_grad():  # running statistics that are not the defaults, so the state is really restored
        net.bn.running_mean.uniform_(-0.5, 0.5)
        net.bn.running_var.uniform_(0.5, 2.0)
    return net


def outputs(model, x):
    with torch.no_grad():
        return model(x)


def sketch_ids(model):
    return {n: (type(m).__name__, m.k, m.mode, m.seed_value, m.stream_value, m.weight_shape)
            for n, m in model.named_modules() if isinstance(m, (SketchedConv2d, SketchedLinear))}


@pytest.mark.parametrize("mode", ["tensor", "filter"])
def test_user_class_round_trip_is_bitwise_and_leaves_the_dense_model_alone(tmp_path, mode):
    net = user_net(0)
    k = {"stem": 5, "grouped": 4, "same": 6, "fc": 7, "head": None}  # head stays dense: in the file's state
    small, _ = compress_model(net, k, mode=mode, seed=2**64 - 1)  # a seed above int64's range
    path = tmp_path / "compressed.pt"
    save_compressed(small, path)

    other = user_net(1).train()  # the same class with other weights and flags: only its structure is used
    snap = snapshot(other)
    loaded = load_compressed(path, other)
    assert_unchanged(other, snap)
    assert not loaded.training and not any(m.training for m in loaded.modules())
    assert sketch_ids(loaded) == sketch_ids(small) and len(sketch_ids(small)) == 4
    assert {id(p) for p in loaded.parameters()}.isdisjoint(id(p) for p in other.parameters())
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    assert torch.equal(outputs(loaded, x), outputs(small, x))
    assert torch.equal(loaded.head.weight, net.head.weight) and torch.equal(loaded.bn.running_var, net.bn.running_var)


def test_zoo_architecture_reloads_with_no_model(tmp_path):
    torch.manual_seed(0)
    net = build("resnet18", 10).eval()
    ks = {"conv1": 16, "layer1.0.conv2": 8, "layer2.0.downsample.0": 4, "fc": 8}  # the rest stays dense
    small, _ = compress_model(net, ks, mode="filter", seed=7)
    path = tmp_path / "resnet.pt"
    save_compressed(small, path, architecture="resnet18")
    doc = torch.load(path, weights_only=True)
    assert doc["format"] == FORMAT and doc["spec"] == stabkern.SPEC
    assert doc["architecture"] == {"name": "resnet18", "num_classes": 10}  # read from the fc
    assert [(r["name"], r["k"], r["mode"], r["seed"], r["stream"]) for r in doc["sketches"]] == [
        (n, k, "filter", 7, m.stream_value) for n, k in ks.items() for m in [small.get_submodule(n)]]
    loaded = load_compressed(path)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    assert torch.equal(outputs(loaded, x), outputs(small, x))


def test_digits_net_reloads_by_name(tmp_path):
    torch.manual_seed(0)
    small, _ = compress_model(DigitsNet().eval(), 4, mode="tensor", seed=1)
    save_compressed(small, tmp_path / "d.pt", architecture="digits")
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    assert torch.equal(outputs(load_compressed(tmp_path / "d.pt"), x), outputs(small, x))


def test_tied_sketches_folded_batchnorm_and_float64_reload_as_saved(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(16, 16),
                        nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3)).double().eval()
    net[6].weight = net[4].weight  # tied: compress_model gives both layers one sketch
    with torch.no_grad():
        net[1].running_mean.uniform_(-1, 1)
    small, _ = compress_model(net, {"0": 6, "4": 9, "6": 9}, mode="tensor", seed=3, fold_bn=True)  # "8" dense
    assert isinstance(small[1], nn.Identity) and small[6].coefficients is small[4].coefficients
    save_compressed(small, tmp_path / "t.pt")
    fresh = nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(16, 16),
                          nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))  # float32, BatchNorm, no tie
    loaded = load_compressed(tmp_path / "t.pt", fresh)
    assert isinstance(loaded[1], nn.Identity) and loaded[6].coefficients is loaded[4].coefficients
    assert all(p.dtype == torch.float64 for p in loaded.parameters())
    x = torch.randn(3, 2, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    assert torch.equal(outputs(loaded, x), outputs(small, x))


@pytest.fixture
def saved_user(tmp_path):
    small, _ = compress_model(user_net(0), 4, mode="filter", seed=0)
    save_compressed(small, tmp_path / "c.pt")
    return tmp_path / "c.pt"


def test_a_file_of_the_users_class_needs_the_dense_model(saved_user):
    with pytest.raises(ValueError, match=r"user's own class .* pass the dense model .*load_compressed\(path, model\)"):
        load_compressed(saved_user)


def test_a_model_that_does_not_match_is_refused_and_left_alone(saved_user):
    wrong = nn.Sequential(nn.Conv2d(3, 8, 3))
    snap = snapshot(wrong)
    with pytest.raises(ValueError, match=r"does not fit the given Sequential: it has no layer 'stem'"):
        load_compressed(saved_user, wrong)
    assert_unchanged(wrong, snap)
    other = user_net(0)
    other.fc = nn.Linear(6 * 4 * 4, 13)  # another width
    snap = snapshot(other)
    with pytest.raises(ValueError, match=r"fc: weight \(13, 96\) in the given UserNet, \(12, 96\) in the file"):
        load_compressed(saved_user, other)
    assert_unchanged(other, snap)
    other = user_net(0)
    other.extra = nn.Linear(2, 2)  # a module the file has no entries for
    with pytest.raises(ValueError, match=r"missing entries extra.weight, extra.bias"):
        load_compressed(saved_user, other)


def test_files_that_are_not_stabkern_compressed_models_are_refused(tmp_path, saved_user):
    net = user_net(0)
    torch.save(net.state_dict(), tmp_path / "plain.pt")
    with pytest.raises(ValueError, match=r"not a stabkern compressed model .*plain state_dict"):
        load_compressed(tmp_path / "plain.pt", net)
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="not a readable torch file"):
        load_compressed(tmp_path / "junk.pt", net)
    torch.save(net, tmp_path / "whole.pt")  # a pickled module: weights_only=True refuses it, nothing runs
    with pytest.raises(ValueError, match=r"pickles Python objects .* not a stabkern compressed model"):
        load_compressed(tmp_path / "whole.pt", net)
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_compressed(tmp_path / "absent.pt", net)
    doc = torch.load(saved_user, weights_only=True)
    for change, message in (({"version": 2}, "version 2; this stabkern reads version 1"),
                            ({"spec": "stabkern-sign-v2"}, "sign spec 'stabkern-sign-v2'; this stabkern generates")):
        torch.save({**doc, **change}, tmp_path / "other.pt")
        with pytest.raises(ValueError, match=message):
            load_compressed(tmp_path / "other.pt", net)
    for key, value, message in (("stream", -1, "stem: stream must be in"),
                                ("tied_to", "head", "stem: tied_to 'head' is not an earlier sketched layer")):
        damaged = {**doc, "sketches": [{**doc["sketches"][0], key: value}, *doc["sketches"][1:]]}
        torch.save(damaged, tmp_path / "damaged.pt")
        with pytest.raises(ValueError, match=rf"damaged stabkern compressed model \({message}"):
            load_compressed(tmp_path / "damaged.pt", net)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available here"):
            load_compressed(saved_user, net, device="cuda")


def test_save_checks_the_architecture_name_against_the_model(tmp_path):
    small, _ = compress_model(user_net(0), 4, mode="filter", seed=0)
    with pytest.raises(ValueError, match=r"architecture must be one of .*'digits'"):
        save_compressed(small, tmp_path / "x.pt", architecture="UserNet")
    with pytest.raises(ValueError, match=r"does not fit architecture 'resnet18': it has no layer 'stem'"):
        save_compressed(small, tmp_path / "x.pt", architecture="resnet18")
    assert not (tmp_path / "x.pt").exists()


def test_compress_on_the_command_line_reloads_in_a_fresh_process(tmp_path):
    """`stabkern compress digits:W --data D --out OUT`, then a fresh Python process calls
    stabkern.load_compressed(OUT/compressed.pt) alone: its outputs equal compress_model's on the same net."""
    from stabkern.cli.main import main

    torch.manual_seed(0)
    net = DigitsNet().eval()
    torch.save(net.state_dict(), tmp_path / "net.pt")
    x = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    np.savez(tmp_path / "data.npz", x=x.numpy(), y=outputs(net, x).argmax(1).numpy())
    assert main(["compress", f"digits:{tmp_path / 'net.pt'}", "--data", str(tmp_path / "data.npz"), "--k", "4",
                 "--out", str(tmp_path / "out"), "--quiet"]) == 0
    torch.save(x, tmp_path / "x.pt")
    code = ("import sys, torch, stabkern; m = stabkern.load_compressed(sys.argv[1]); "
            "x = torch.load(sys.argv[2], weights_only=True)\nwith torch.no_grad(): torch.save(m(x), sys.argv[3])")
    run = subprocess.run([sys.executable, "-c", code, str(tmp_path / "out" / "compressed.pt"), str(tmp_path / "x.pt"),
                          str(tmp_path / "y.pt")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    reference, _ = compress_model(net, 4, mode="filter", seed=0)  # the command's defaults: filter mode, seed 0
    assert torch.equal(torch.load(tmp_path / "y.pt", weights_only=True), outputs(reference, x))
