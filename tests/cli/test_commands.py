"""Every subcommand runs on the CPU and its JSON validates against the shipped schema with sane values."""

import json
import math

import numpy as np
import pytest

from stabkern.cli.main import main
from stabkern.schemas import validate


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def check_attenuation(att):
    """Finite and positive on and above the diagonal (a chain: every later layer is downstream of the
    injection), undefined (null) below it."""
    mean = att["mean"]
    for i, row in enumerate(mean):
        for j, v in enumerate(row):
            if j >= i:
                assert v is not None and math.isfinite(v) and v > 0, (i, j, v)
            else:
                assert v is None, (i, j, v)


def check_measure(doc):
    validate(doc)
    check_attenuation(doc["attenuation"])
    for name in doc["layers"]:
        d = doc["layer_cushion"][name]
        assert 0 < d["min"] <= d["median"] <= d["max"] <= 1
    for key, v in doc["bound"]["log10"].items():
        assert v is not None and 10 ** v > 0, key


def test_info_json(capsys):
    code, out, _ = run(capsys, "info", "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["backends"]["cpu"]["reference"] is None


def test_bench_small(capsys):
    code, out, _ = run(capsys, "bench", "--shape", "64", "3", "3", "-k", "64", "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["n"] == 576 and doc["backend"] in ("cpu", "reference")
    # E||A_hat - A||^2 / ||A||^2 = (n - 1) / k = 8.98; its sd over sign draws is about sqrt(2) (n - 1) / k / sqrt(k)
    # (Gaussian-like weights), so 5 sd is 5.6: a wrong scale (1/k^2, 1/n) or wrong signs falls far outside.
    assert abs(doc["rel_sq_error"] - doc["expected_rel_sq_error"]) < 5 * math.sqrt(2) * 575 / 64 / 8


def test_meter_json_and_file(capsys, small, tmp_path):
    code, out, _ = run(capsys, "meter", small["model"], "--data", small["data"], "--trials", "2", "--json",
                       "--out", str(tmp_path))
    assert code == 0
    doc = json.loads(out)
    check_measure(doc)
    assert json.loads((tmp_path / "measure.json").read_text()) == doc


def test_compress_k_and_eps(capsys, small, tmp_path):
    code, out, _ = run(capsys, "compress", small["model"], "--data", small["data"], "--k", "8", "--json",
                       "--out", str(tmp_path), "--quiet")
    assert code == 0
    doc = json.loads(out)
    validate(doc["compression"])
    layers = doc["compression"]["layers"]
    assert [r["stream"] for r in layers] == list(range(5)) and all(r["k"] == 8 for r in layers)
    assert all(r["output_error"]["mean"] > 0 for r in layers)
    assert (tmp_path / "compressed.pt").is_file() and not list(tmp_path.glob(".*tmp*"))
    code, out, _ = run(capsys, "compress", small["model"], "--data", small["data"], "--eps", "0.9", "--json")
    assert code == 0
    validate(json.loads(out)["choose_k"])


def test_layer_by_layer_equals_compress_model(small):
    """The CLI's per-layer loop (one progress step per layer) builds the same model and rows as one call."""
    import torch

    from stabkern import compress_model
    from stabkern.card import compress_layer_by_layer
    from stabkern.cli.inputs import load_model

    model = load_model(small["model"], dev=torch.device("cpu")).model
    ks = {"features.0": 4, "features.5": 16, "classifier.3": 8}
    seen = []
    a, ra = compress_layer_by_layer(model, ks, mode="filter", seed=3, data=small["x"],
                                    progress=lambda s, d, t: seen.append((s, d, t)))
    b, rb = compress_model(model, ks, mode="filter", seed=3, data=small["x"])
    assert seen == [("compress", i, 3) for i in range(4)]
    assert ra.to_dict() == rb.to_dict()
    with torch.no_grad():
        assert torch.equal(a(small["x"]), b(small["x"]))


def test_card_writes_folder(capsys, small, tmp_path):
    code, out, _ = run(capsys, "card", small["model"], "--data", small["data"], "--trials", "2", "--out",
                       str(tmp_path), "--name", "tiny", "--json")
    assert code == 0
    doc = json.loads(out)
    folder = tmp_path / "tiny"
    assert json.loads((folder / "card.json").read_text()) == doc
    validate(doc)
    check_measure(doc["measure"])
    assert doc["data"]["accuracy"] == 1.0  # the labels are the net's own predictions
    for name in doc["figures"].values():
        assert (folder / name).read_bytes()[:4] == b"\x89PNG"
    assert set(doc["figures"]) == {"attenuation", "cushions", "contraction", "bounds", "accuracy_vs_k", "spectra"}
    md = (folder / "card.md").read_text()
    assert "## Compressibility" in md and "![attenuation](attenuation.png)" in md
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny"]  # no temporary folder left
    for row in doc["compressibility"]["layers"]:
        assert row["predicted_rms_error"] > 0 and row["measured_mean_error"] > 0


def test_seed_reproduces(capsys, small):
    outs = [json.loads(run(capsys, "meter", small["model"], "--data", small["data"], "--trials", "2", "--json",
                           "--seed", "5")[1]) for _ in range(2)]
    assert outs[0]["attenuation"]["mean"] == outs[1]["attenuation"]["mean"]


def test_help_of_every_subcommand(capsys):
    for cmd in ("demo", "card", "meter", "compress", "bench", "info"):
        with pytest.raises(SystemExit) as e:
            main([cmd, "--help"])
        assert e.value.code == 0
        text = capsys.readouterr().out
        for opt in ("--json", "--device", "--out", "--seed", "--quiet", "--debug"):
            assert opt in text, (cmd, opt)


def test_written_files_have_ordinary_permissions(tmp_path):
    """Files and card folders are written through temporary names (mkstemp/mkdtemp make them private);
    what lands has the mode a plain open()/mkdir() would give under the umask."""
    import os
    import stat

    from stabkern.card.render import publish_mode

    mask = os.umask(0o022)
    try:
        f = tmp_path / "f"
        f.write_text("x")
        os.chmod(f, 0o600)
        publish_mode(f)
        assert stat.S_IMODE(f.stat().st_mode) == 0o644
    finally:
        os.umask(mask)
