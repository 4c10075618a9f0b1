"""DATA's normalization and size on the command line (--normalize, --mean/--std, --size), the default taken
from MODEL, the normalization written to the JSON and the card, and --limit above the data's size."""

import json

import numpy as np
import pytest
import torch

from stabkern.cli.inputs import CLIError, Model, load_data, normalization_flags, size_flag
from stabkern.cli.main import main
from stabkern.io import IMAGENET
from stabkern.io.data import digits_normalization


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def pixels(tmp_path_factory):
    """uint8 images (raw pixels): 8x8 gray for the digits net, and 3-channel ones."""
    root = tmp_path_factory.mktemp("pixels")
    gen = np.random.default_rng(0)
    gray = gen.integers(0, 256, size=(20, 1, 8, 8), dtype=np.uint8)
    rgb = gen.integers(0, 256, size=(6, 3, 8, 8), dtype=np.uint8)
    np.savez(root / "gray.npz", x=gray, y=np.arange(20) % 10)
    np.savez(root / "rgb.npz", x=rgb)
    return {"gray": str(root / "gray.npz"), "rgb": str(root / "rgb.npz"), "gray_x": gray, "rgb_x": rgb}


def scaled(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(x).float() / 255


def test_raw_pixels_take_the_models_normalization(pixels):
    (mean,), (std,) = digits_normalization()
    model = Model(torch.nn.Identity(), "m", digits_normalization(), (8, 8))
    d = load_data(pixels["gray"], model=model)
    assert torch.allclose(d.x, (scaled(pixels["gray_x"]) - mean) / std)
    assert d.info["normalization"] == {"name": "digits", "source": "model", "mean": [mean], "std": [std]}
    imagenet = Model(torch.nn.Identity(), "vgg", IMAGENET, (224, 224))
    d = load_data(pixels["rgb"], model=imagenet)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in IMAGENET)
    assert torch.allclose(d.x, (scaled(pixels["rgb_x"]) - mean) / std)
    assert d.info["normalization"]["name"] == "imagenet"
    assert any("224x224" in n and "--size 224 224" in n for n in d.notes)  # the size the model expects


def test_flags_override_the_model(pixels):
    model = Model(torch.nn.Identity(), "m", digits_normalization(), (8, 8))
    d = load_data(pixels["gray"], model=model, normalization=normalization_flags("none"))
    assert torch.equal(d.x, scaled(pixels["gray_x"]))
    assert d.info["normalization"] == {"name": "none", "source": "flags"}
    d = load_data(pixels["gray"], model=model, normalization=normalization_flags(None, [0.5], [0.25]))
    assert torch.allclose(d.x, (scaled(pixels["gray_x"]) - 0.5) / 0.25)
    assert d.info["normalization"]["name"] == "custom"
    d = load_data(pixels["rgb"], normalization=normalization_flags("cifar"))
    assert d.info["normalization"]["name"] == "cifar10"
    assert d.info["normalization"]["mean"] == pytest.approx([0.4914, 0.4822, 0.4465])


def test_unknown_normalization_is_said(pixels):
    d = load_data(pixels["rgb"], model=Model(torch.nn.Identity(), "mine"))
    assert torch.equal(d.x, scaled(pixels["rgb_x"]))
    assert d.info["normalization"]["source"] == "none"
    assert any("unnormalized" in n and "--normalize" in n for n in d.notes)


def test_size_resizes(pixels):
    assert size_flag([4]) == (4, 4) and size_flag([4, 6]) == (4, 6) and size_flag(None) is None
    d = load_data(pixels["gray"], size=size_flag([4, 6]), normalization="none")
    assert d.x.shape == (20, 1, 4, 6) and d.info["size"] == [4, 6] and d.info["resized"]


@pytest.mark.parametrize("normalize, mean, std, says", [
    ("imagenet", [0.5], [0.2], "--normalize imagenet and --mean/--std both given"),
    (None, [0.5], None, "--mean without --std"),
    (None, None, [0.2], "--std without --mean"),
    (None, [0.5, 0.4], [0.2], "--mean has 2 values and --std 1"),
    (None, [0.5], [0.0], "--std must be positive"),
    (None, [float("nan")], [0.2], "must be finite"),
])
def test_normalization_flag_errors(normalize, mean, std, says):
    with pytest.raises(CLIError, match=says.replace("(", r"\(").replace(")", r"\)")):
        normalization_flags(normalize, mean, std)


@pytest.mark.parametrize("size", [[0], [4, 4, 4]])
def test_size_flag_errors(size):
    with pytest.raises(CLIError, match="--size"):
        size_flag(size)


def test_wrong_mean_length_for_the_data_is_one_line(capsys, small):
    code, _, err = run(capsys, "meter", small["model"], "--data", small["data"], "--mean", "0.1", "0.2", "0.3",
                       "--std", "0.2", "0.2", "0.2")
    assert code == 2
    assert "--mean/--std have 3 values" in err and "1 channel" in err and len(err.strip().splitlines()) == 1
    code, _, err = run(capsys, "meter", small["model"], "--data", small["data"], "--normalize", "imagenet")
    assert code == 2 and "--normalize imagenet: its statistics have 3 channels" in err


def test_meter_json_says_normalization_and_the_limit_note(capsys, small, pixels):
    code, out, err = run(capsys, "meter", small["model"], "--data", pixels["gray"], "--limit", "100",
                         "--trials", "1", "--json")
    assert code == 0
    data = json.loads(out)["data"]
    assert data["n_samples"] == 20 and data["size"] == [8, 8]
    assert data["normalization"]["name"] == "digits" and data["normalization"]["source"] == "model"
    note = "--limit 100 is above the 20 samples of DATA"
    assert any(note in n for n in data["notes"]) and f"note: {note}" in err


def test_digits_training_sets_refuse_normalization_flags(capsys):
    code, _, err = run(capsys, "meter", "digits", "--data", "digits-train", "--normalize", "none")
    assert code == 2 and "already standardized" in err


def test_meter_progress_moves_per_layer(capsys, small, monkeypatch):
    """stabkern meter hands its progress to measure: one step per chunk and layer of each meter, not 0/1, 1/1."""
    from stabkern.cli import commands

    calls = []
    monkeypatch.setattr(commands, "_progress", lambda args: lambda *a: calls.append(a))
    code, _, _ = run(capsys, "meter", small["model"], "--data", small["data"], "--trials", "1", "--json")
    assert code == 0
    measure = [c for c in calls if c[0] == "measure"]
    assert len(measure) > 5 and measure[-1][1] == measure[-1][2] > 5  # the digits net has 5 metered layers
