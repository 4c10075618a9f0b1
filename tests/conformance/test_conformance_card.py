"""`stabkern card ARCH:weights.pt` on the zoo families, from a state_dict file, as a user runs it.

Every family: the command line's loader turns `ARCH:weights.pt` (a saved state_dict) into a net that
computes exactly what the saved one does. The whole card (measure with the card's 8 probes and exact
spectral norms, choose_k, a sketch of every layer at the card's probe k) runs here on the smallest
family only, to stay within CI's time; benchmarks/conformance_table.py runs it on every family.
"""

import json

import numpy as np
import pytest
import torch

from helpers.conformance_nets import CLASSES, inputs_of, net_of
from stabkern.cli.main import main
from stabkern.io.models import load_model
from stabkern.schemas import validate

CARD_ARCHS = ["squeezenet1_1"]


@pytest.fixture
def weights(net, arch, tmp_path):
    path = tmp_path / f"{arch}.pt"
    torch.save(net.state_dict(), path)
    return path


def test_state_dict_file_loads_the_same_net(arch, net, inputs, weights):
    loaded = load_model(f"{arch}:{weights}")
    with torch.no_grad():
        assert torch.equal(loaded.model(inputs.clone()), net(inputs.clone()))


@pytest.mark.parametrize("card_arch", CARD_ARCHS)
def test_card_from_a_state_dict_file(card_arch, tmp_path, capsys):
    path = tmp_path / "weights.pt"
    torch.save(net_of(card_arch).state_dict(), path)
    np.savez(tmp_path / "data.npz", x=inputs_of().numpy())  # no labels: no accuracy-vs-k sweep
    code = main(["card", f"{card_arch}:{path}", "--data", str(tmp_path / "data.npz"), "--trials", "2",
                 "--num-classes", str(CLASSES), "--out", str(tmp_path / "cards"), "--name", "card", "--quiet",
                 "--json"])
    assert code == 0
    doc = json.loads(capsys.readouterr().out)
    folder = tmp_path / "cards" / "card"
    assert json.loads((folder / "card.json").read_text()) == doc
    validate(doc)
    assert doc["model"]["layers"] == sum(1 for _ in doc["measure"]["layers"]) > 0
    assert doc["data"]["n_samples"] == inputs_of().shape[0]
    assert doc["figures"]
    for name in doc["figures"].values():
        assert (folder / name).read_bytes()[:4] == b"\x89PNG"
    assert "card.md" in {p.name for p in folder.iterdir()}
