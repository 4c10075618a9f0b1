"""Issue 17, section 7: `stabkern card MODEL` without --data writes what the weights alone say (spectra,
stable rank, noise ratio, norms, the capacities' weight factors) and what needs data; with data the same
section sits beside the meters."""

import copy
import json
import math

import numpy as np
import pytest
import torch

from stabkern.card import build_card, markdown
from stabkern.cli.main import main
from stabkern.schemas import validate
from stabkern.zoo.digits import DigitsNet


@pytest.fixture(scope="module")
def net_file(tmp_path_factory):
    torch.manual_seed(3)
    net = DigitsNet().eval()
    path = tmp_path_factory.mktemp("free") / "net.pt"
    torch.save(net.state_dict(), path)
    return net, path


def test_card_without_data_from_the_command_line(net_file, tmp_path, capsys):
    net, path = net_file
    assert main(["card", f"digits:{path}", "--out", str(tmp_path), "--name", "free", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    folder = tmp_path / "free"
    assert json.loads((folder / "card.json").read_text()) == doc
    validate(doc)
    assert doc["data"] is None and doc["measure"] is None and doc["accuracy_vs_k"] is None
    assert doc["figures"] == {"spectra": "spectra.png"} and (folder / "spectra.png").read_bytes()[:4] == b"\x89PNG"
    rows = {r["name"]: r for r in doc["weights"]["layers"]}
    assert list(rows) == [n for n, m in net.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    for name, module in net.named_modules():
        if name not in rows:
            continue
        w = module.weight.detach().double().reshape(module.weight.shape[0], -1)
        s = torch.linalg.svdvals(w)
        r = rows[name]
        got = np.array(r["singular_values"])
        # two LAPACK runs on the same float64 matrix: equal to float64 rounding of the largest value
        assert np.allclose(got, s.numpy(), rtol=0, atol=64 * np.finfo(np.float64).eps * float(s[0]))
        n = w.shape[1]  # the matrix's input dimension: C_in kh kw for a conv, in_features for a Linear
        assert r["n"] == n and r["matrix"] == list(w.shape)
        assert r["spectral"] == pytest.approx(float(s[0]), rel=1e-12)
        assert r["frobenius"] == pytest.approx(float(w.norm()), rel=1e-12)
        assert r["l1"] == pytest.approx(float(w.abs().sum()), rel=1e-12)
        assert r["stable_rank"] == pytest.approx(float((s ** 2).sum() / s[0] ** 2), rel=1e-12)
        assert r["noise_ratio"] == pytest.approx(float(w.norm()) / (math.sqrt(n) * float(s[0])), rel=1e-12)
    page = (folder / "card.md").read_text()
    assert "## What needs data" in page and "## What the weights alone say" in page
    assert "## Noise attenuation" not in page and "not of the convolution's operator" in page
    csv_lines = (folder / "layers.csv").read_text().splitlines()
    assert len(csv_lines) == 1 + len(rows) and "weight_stable_rank" in csv_lines[0]


def test_capacities_without_data_are_the_weight_factors(net_file):
    """Each norm bound's capacity = weights' factor x (data scale / gamma)^2: with scale and gamma 1 the
    formulas of stability/bound.py, here recomputed from the matrices directly."""
    net, _ = net_file
    doc = build_card(net, None).doc
    mats = [m.weight.detach().double().reshape(m.weight.shape[0], -1) for m in net.modules()
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    spec = [float(torch.linalg.matrix_norm(w, 2)) for w in mats]
    l21 = [float(w.norm(dim=1).sum()) for w in mats]
    frob = [float(w.norm()) for w in mats]
    d, h = len(mats), max(max(w.shape) for w in mats)
    caps = doc["weights"]["capacities_log10"]
    assert caps["spectral_bartlett2017"] == pytest.approx(
        math.log10(math.prod(s ** 2 for s in spec) * sum((a / s) ** (2 / 3) for a, s in zip(l21, spec)) ** 3),
        rel=1e-9)
    assert caps["pac_bayes_neyshabur2018"] == pytest.approx(
        math.log10(d ** 2 * h * math.prod(s ** 2 for s in spec) * sum((f / s) ** 2 for f, s in zip(frob, spec))),
        rel=1e-9)
    l1inf = [float(w.abs().sum(1).max()) for w in mats]
    assert caps["l1_bartlett_mendelson2002"] == pytest.approx(math.log10(math.prod((2 * v) ** 2 for v in l1inf)),
                                                              rel=1e-9)
    with pytest.raises(ValueError, match="labels y were given without inputs x"):
        build_card(net, None, torch.zeros(4, dtype=torch.long))


def test_with_data_the_weights_section_sits_beside_the_meters(net_file):
    net, _ = net_file
    x = torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    doc = build_card(net, x, None, trials=2, probes=2).doc
    validate(doc)
    assert doc["weights"] == build_card(net, None).doc["weights"]
    page = markdown(doc)
    assert "## What the weights alone say" in page and "## What needs data" not in page
    ops = doc["measure"]["bound"]["operator_norms"]
    row = next(line for line in page.splitlines() if line.startswith("| features.2 | 32 x 144"))
    assert row.endswith(f" {ops['features.2']['spectral']:.3g} |")  # the conv operator's ||A||_2, measured


def test_old_cards_still_validate(net_file):
    """The schema gained optional keys (weights, tables, model.outputs) and null sections: a card written
    before them still validates."""
    net, _ = net_file
    x = torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    old = copy.deepcopy(build_card(net, x, None, trials=2, probes=2).doc)
    for key in ("weights", "tables"):
        old.pop(key, None)
    old["model"].pop("outputs")
    del old["provenance"]["wall_time_s"]["weights"]
    validate(old)


def test_large_layers_take_the_spectrum_from_the_gram_matrix(monkeypatch):
    """Above SVD_LIMIT entries the spectrum is sqrt(eigvalsh(W W^T)) accumulated in float64 over chunks: each
    s_i^2 within the Gram's rounding, at most about (sum length + size) eps s_max^2 (weights.singular_values)."""
    from stabkern.stability import weights

    gen = torch.Generator().manual_seed(5)
    for shape in ((30, 700), (700, 30)):
        w = torch.randn(*shape, generator=gen)
        exact = torch.linalg.svdvals(w.double())
        gram = weights.singular_values(w, gram=True)
        length, size = max(shape), min(shape)
        eps = torch.finfo(torch.float64).eps
        assert gram.shape == exact.shape and torch.all(gram[:-1] >= gram[1:])
        assert float((gram ** 2 - exact ** 2).abs().max()) <= 2 * (length + size) * eps * float(exact[0]) ** 2
    # chunks of 100 entries (several rows or columns each, and a ragged last one) give the same numbers
    monkeypatch.setattr(weights, "CHUNK", 100)
    monkeypatch.setattr(weights, "SVD_LIMIT", 100)
    layer = torch.nn.Linear(37, 11)
    got = weights.layer_weights("fc", layer)
    w = layer.weight.detach().double()
    assert got["l1"] == pytest.approx(float(w.abs().sum()), rel=1e-13)
    assert got["l21"] == pytest.approx(float(w.norm(dim=1).sum()), rel=1e-13)
    assert got["l1inf"] == pytest.approx(float(w.abs().sum(1).max()), rel=1e-13)
    assert got["spectral"] == pytest.approx(float(torch.linalg.matrix_norm(w, 2)), rel=1e-12)


def test_meter_text_names_the_bounds_in_words(net_file, tmp_path, capsys):
    net, path = net_file
    x = torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        y = net(x).argmax(1)
    np.savez(tmp_path / "d.npz", x=x.numpy(), y=y.numpy())
    assert main(["meter", f"digits:{path}", "--data", str(tmp_path / "d.npz"), "--trials", "2", "--quiet"]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("log10 capacity"))
    assert "Arora et al. 2018 bound (chain)" in line and "ours" not in line


def test_weight_report_to_dataframe(net_file):
    pytest.importorskip("pandas")
    from stabkern.stability import weight_report

    report = weight_report(net_file[0])
    df = report.to_dataframe()
    rows = report.layer_rows()
    assert list(df.index) == [r["layer"] for r in rows] and "singular_values" not in df.columns
    for r in rows:
        for key in ("spectral", "frobenius", "l1", "stable_rank", "noise_ratio", "n"):
            assert df.loc[r["layer"], key] == r[key]
