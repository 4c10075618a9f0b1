"""`stabkern meter / card / compress` on TorchScript and torch.export files, and --layers for every kind of model."""

import json
import warnings

import pytest
import torch

from stabkern.cli.main import main
from stabkern.schemas import validate
from stabkern.zoo.digits import DigitsNet


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def fails(capsys, *argv) -> str:
    """The one line a refused command prints (exit status 2)."""
    code, _, err = run(capsys, *argv)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    return lines[0]


@pytest.fixture(scope="module")
def saved(small):
    """The `small` DigitsNet saved scripted and exported (dynamic batch) beside its state_dict."""
    net = DigitsNet().eval()
    net.load_state_dict(torch.load(small["root"] / "net.pt", weights_only=True))
    scripted, exported = small["root"] / "net-scripted.pt", small["root"] / "net.pt2"
    torch.jit.save(torch.jit.script(net), str(scripted))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.export.export(net, (small["x"][:2],), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, str(exported))
    return {"scripted": str(scripted), "exported": str(exported)}


def _meter(capsys, model, data, *extra):
    code, out, _ = run(capsys, "meter", model, "--data", data, "--trials", "2", "--json", "--quiet", *extra)
    assert code == 0
    doc = json.loads(out)
    validate(doc)
    doc.pop("settings")  # the method (hooks for TorchScript), the device
    doc["attenuation"].pop("method")
    return doc


@pytest.mark.parametrize("kind", ["scripted", "exported"])
def test_meter_equals_the_state_dict_models(capsys, small, saved, kind):
    """Same net, three files: the same layer names and the same numbers (the same operators on the same noise)."""
    trust = ["--trust-pickle"] if kind == "exported" else []
    ours = _meter(capsys, saved[kind], small["data"], *trust)
    eager = _meter(capsys, small["model"], small["data"])
    assert ours["layers"] == eager["layers"] == ["features.0", "features.2", "features.5", "classifier.1",
                                                  "classifier.3"]
    assert ours["attenuation"]["mean"] == eager["attenuation"]["mean"]


def test_card_of_a_scripted_model(capsys, small, saved, tmp_path):
    code, out, _ = run(capsys, "card", saved["scripted"], "--data", small["data"], "--trials", "2", "--out",
                       str(tmp_path), "--json", "--quiet")
    assert code == 0
    doc = json.loads(out)
    assert (tmp_path / "net-scripted.pt" / "card.md").is_file()
    assert [r["name"] for r in doc["compressibility"]["layers"]] == doc["measure"]["layers"]
    assert doc["measure"]["layers"][0] == "features.0" and doc["data"]["accuracy"] == 1.0


@pytest.mark.parametrize("kind", ["state_dict", "scripted", "exported"])
def test_layers_picks_by_name_and_pattern(capsys, small, saved, kind):
    model = {"state_dict": small["model"], **saved}[kind]
    trust = ["--trust-pickle"] if kind == "exported" else []
    doc = _meter(capsys, model, small["data"], "--layers", "features.*,classifier.3", *trust)
    assert doc["layers"] == ["features.0", "features.2", "features.5", "classifier.3"]
    code, out, _ = run(capsys, "compress", model, "--data", small["data"], "--k", "4", "--layers", "classifier.?",
                       "--json", "--quiet", *trust)
    assert code == 0
    assert [r["name"] for r in json.loads(out)["compression"]["layers"]] == ["classifier.1", "classifier.3"]


def test_layers_that_match_nothing_are_refused_with_the_names(capsys, small, saved):
    line = fails(capsys, "meter", saved["scripted"], "--data", small["data"], "--layers", "features.0,conv*")
    assert "--layers" in line and "'conv*' matches no Conv2d or Linear layer" in line
    assert "the model's are features.0, features.2" in line
    assert main(["card", small["model"], "--data", small["data"], "--layers", " , "]) == 2
