"""`stabkern demo --quick` (what CI runs): the three cards written and valid, the summary printed."""

import json

import torch

from stabkern.cli.main import main
from stabkern.schemas import validate


def test_demo_quick(capsys, tmp_path):
    assert main(["demo", "--quick", "--out", str(tmp_path), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "digits-shuffled" in out and "contrast" in out
    docs = {}
    for name in ("digits", "digits-control", "digits-shuffled"):
        docs[name] = json.loads((tmp_path / name / "card.json").read_text())
        validate(docs[name])
        assert (tmp_path / name / "attenuation.png").is_file()
    # each net is measured on the data it was trained on; the shuffled-label net must have fit its labels
    # for the contrast to mean anything (it is trained to memorize them)
    assert docs["digits-shuffled"]["data"]["accuracy"] >= 0.9
    # the matched control (issue 16): true labels on the shuffled net's digits, as many samples and epochs
    control, shuffled = docs["digits-control"], docs["digits-shuffled"]
    assert control["data"]["n_samples"] == shuffled["data"]["n_samples"] and "control" in control["model"]["name"]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary["cards"]) == {"digits", "digits-control", "digits-shuffled"}
    assert isinstance(summary["contrast"]["shows"], bool) and isinstance(summary["contrast_full_data"]["shows"], bool)
    assert "digits-control" in out and "matched: true labels, same 256 digits" in out


def test_control_is_the_shuffled_nets_digits_with_their_true_labels():
    from stabkern.zoo.digits import SHUFFLED_SAMPLES, training_set

    (x, y), (xc, yc), (xs, ys) = (training_set(labels) for labels in ("true", "control", "shuffled"))
    assert len(xc) == len(xs) == SHUFFLED_SAMPLES
    assert torch.equal(xc, xs) and torch.equal(xc, x[:SHUFFLED_SAMPLES]) and torch.equal(yc, y[:SHUFFLED_SAMPLES])
    assert not torch.equal(yc, ys) and torch.equal(yc.sort().values, ys.sort().values)  # permuted, same counts
