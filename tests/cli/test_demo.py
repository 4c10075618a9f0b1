"""`stabkern demo --quick` (what CI runs): both cards written and valid, the summary printed."""

import json

from stabkern.cli.main import main
from stabkern.schemas import validate


def test_demo_quick(capsys, tmp_path):
    assert main(["demo", "--quick", "--out", str(tmp_path), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "digits-shuffled" in out and "contrast" in out
    docs = {}
    for name in ("digits", "digits-shuffled"):
        docs[name] = json.loads((tmp_path / name / "card.json").read_text())
        validate(docs[name])
        assert (tmp_path / name / "attenuation.png").is_file()
    # each net is measured on the data it was trained on; the shuffled-label net must have fit its labels
    # for the contrast to mean anything (it is trained to memorize them)
    assert docs["digits-shuffled"]["data"]["accuracy"] >= 0.9
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary["cards"]) == {"digits", "digits-shuffled"} and isinstance(summary["contrast"]["shows"], bool)
