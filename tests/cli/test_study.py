"""`stabkern study`: the manifest (JSON and CSV, relative paths, what is refused) and a study end to end."""

import json

import numpy as np
import pytest
import torch

from stabkern.cli.inputs import CLIError
from stabkern.cli.main import main
from stabkern.cli.study import read_manifest
from stabkern.schemas import validate
from stabkern.zoo.digits import DigitsNet

# random nets misclassify most samples: measure warns that the bounds are undefined, which is what they are
pytestmark = pytest.mark.filterwarnings("ignore:the 0.1 quantile of the margins")


@pytest.fixture
def two_nets(tmp_path):
    """Two DigitsNets' weights and train/test .npz files beside a JSON and a CSV manifest (relative paths)."""
    g = torch.Generator().manual_seed(3)
    for i in range(2):
        torch.manual_seed(i)
        torch.save(DigitsNet().eval().state_dict(), tmp_path / f"net{i}.pt")
    for name in ("train", "test"):
        np.savez(tmp_path / f"{name}.npz", x=torch.randn(20, 1, 8, 8, generator=g).numpy(),
                 y=torch.randint(0, 10, (20,), generator=g).numpy())
    records = [{"name": f"net{i}", "model": f"digits:net{i}.pt", "train": "train.npz", "test": "test.npz",
                "hyperparameters": {"seed": i}} for i in range(2)]
    (tmp_path / "m.json").write_text(json.dumps({"nets": records}))
    (tmp_path / "m.csv").write_text("name,model,train,test,seed,optimizer\n"
                                    "net0,digits:net0.pt,train.npz,test.npz,0,adam\n"
                                    "net1,digits:net1.pt,train.npz,test.npz,1,sgd\n")
    return tmp_path


def test_json_and_csv_manifests_read_the_same_nets(two_nets):
    from_json, from_csv = read_manifest(two_nets / "m.json"), read_manifest(two_nets / "m.csv")
    assert [r["name"] for r in from_json] == [r["name"] for r in from_csv] == ["net0", "net1"]
    assert from_json[1]["model"] == f"digits:{two_nets / 'net1.pt'}"  # relative to the manifest's folder
    assert from_csv[1]["train"] == str(two_nets / "train.npz")
    assert from_csv[1]["hyperparameters"] == {"seed": 1, "optimizer": "sgd"}  # numbers read as numbers


@pytest.mark.parametrize("text, message", [
    ("[]", "names no nets"),
    ('[{"name": "a", "model": "digits"}]', "missing train, test"),
    ('[{"name": "a", "model": "d", "train": "t", "test": "t"}, {"name": "a", "model": "d", "train": "t", '
     '"test": "t"}]', "used twice"),
    ("{not json", "cannot be read"),
])
def test_bad_manifests_are_refused_by_name(tmp_path, text, message):
    (tmp_path / "bad.json").write_text(text)
    with pytest.raises(CLIError, match=message):
        read_manifest(tmp_path / "bad.json")


def test_study_command_writes_a_valid_report(two_nets, capsys):
    out = two_nets / "out"
    status = main(["study", str(two_nets / "m.json"), "--out", str(out), "--samples", "8", "--probes", "2",
                   "--trials", "2", "--quiet"])
    assert status == 0
    report = json.loads((out / "study.json").read_text())
    validate(report)
    assert [n["name"] for n in report["nets"]] == ["net0", "net1"]
    assert all(n["error"] is None for n in report["nets"])
    assert "| log10_ours |" in capsys.readouterr().out


def test_study_command_needs_a_manifest_or_demo(capsys):
    assert main(["study"]) == 2
    assert "MANIFEST or --demo" in capsys.readouterr().err
