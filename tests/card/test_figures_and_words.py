"""Issue 17, section 6: the card's figures carry their references (alpha, the 95% bands, chance, the k = cap
point), its words are a reader's (no "ours", the margin and mu_{i->}'s identity term in words, each warning
once), and every per-layer number is in layers.csv and in the reports' to_dataframe()."""

import copy
import csv
import math
import re

import matplotlib
import numpy as np
import pytest
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import stabkern  # noqa: E402
from stabkern.card import build_card, figures, markdown, summary_table, write_card  # noqa: E402
from stabkern.zoo.digits import DigitsNet  # noqa: E402


@pytest.fixture(scope="module")
def card():
    """A random digits net on 16 inputs, labelled wrong on purpose (argmax + 1): every margin is negative, so
    gamma is undefined and measure both warns and notes it."""
    torch.manual_seed(0)
    net = DigitsNet().eval()
    x = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        y = (net(x).argmax(1) + 1) % 10
    return net, x, build_card(net, x, y, trials=2, probes=2, fractions=(0.1, 1.0))


def drawn(draw, doc, rows=1):
    fig, axes = plt.subplots(rows, 1)
    draw(doc, axes)
    fig.canvas.draw()
    return fig, axes


def test_attenuation_has_alpha_line_bands_and_log_ticks(card):
    doc = card[2].doc
    att = doc["measure"]["attenuation"]
    fig, ax = drawn(figures.attenuation, doc)
    alpha = [ln for ln in ax.get_lines() if list(ln.get_ydata()) == [att["alpha"], att["alpha"]]]
    assert len(alpha) == 1 and "alpha = 0.1" in alpha[0].get_label()
    # one band per injection layer, its top edge the report's ci_high
    bands = ax.collections
    assert len(bands) == len(att["layers"])
    for i, band in enumerate(bands):
        tops = np.array([v for v in att["ci_high"][i][i:] if v is not None])
        ys = band.get_paths()[0].vertices[:, 1]
        assert np.all(np.isclose(tops[:, None], ys[None, :], rtol=1e-12).any(axis=1))
    assert "95% interval" in " ".join(t.get_text() for t in ax.get_legend().get_texts())
    low, high = ax.get_ylim()
    labelled = [t for t in ax.yaxis.get_major_ticks() if low <= t.get_loc() <= high and t.label1.get_text()]
    assert len(labelled) >= 3  # 1, 2, 5 per decade: numbers beside a curve that spans under a decade
    plt.close(fig)


def test_accuracy_vs_k_has_chance_and_the_k_equals_cap_point(card):
    net, x, c = card
    doc = c.doc
    assert doc["model"]["outputs"] == 10
    fig, ax = drawn(figures.accuracy_vs_k, doc)
    chance = [ln for ln in ax.get_lines() if "chance" in ln.get_label()]
    assert len(chance) == 1 and list(chance[0].get_ydata()) == [0.1, 0.1]
    full = next(p for p in doc["accuracy_vs_k"] if p["fraction"] == 1.0)
    marked = [ln for ln in ax.get_lines() if ln.get_label().startswith("k = cap")]
    assert len(marked) == 1 and list(marked[0].get_ydata()) == [full["accuracy"]]
    plt.close(fig)
    page = markdown(doc)
    assert "sqrt((m - 1) / m)" in page and "E||A_hat - A||_F^2 = (m - 1) ||A||_F^2 / k" in page
    # the measured weight error at k = m is the one the compression report gives, close to sqrt((m-1)/m)
    errors = full["rel_fro_error"]
    _, rep = stabkern.compress_model(net, full["k"], mode="filter", seed=0, allow_no_compression=True)
    # the card's sweep sums A_hat in another order (card/sweep.py): equal up to the float32 reassociation of
    # k terms, each entry within 2.1 k u of the sum of |terms| (bounded exactly in test_cost_and_sweep)
    k_max = max(full["k"].values())
    assert errors.keys() == {r.name for r in rep.layers}
    for r in rep.layers:
        assert errors[r.name] == pytest.approx(r.rel_fro_error, rel=2.1 * k_max * 2.0**-24, abs=1e-12)
    assert f"from {min(errors.values()):.2f} to {max(errors.values()):.2f}" in page


def test_words_not_jargon(card):
    doc = card[2].doc
    page = markdown(doc)
    assert not re.search(r"\bours\b", page, re.IGNORECASE)
    assert "Arora et al. 2018 bound (chain)" in page
    fig, ax = drawn(figures.bounds, doc)
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    assert "Arora et al. 2018 bound (chain)" in ticks and not any(re.search(r"\bours\b", t) for t in ticks)
    plt.close(fig)
    # the margin is undefined here (every label wrong): said in words, no nan / None / "-"
    assert doc["measure"]["bound"]["gamma"] is None
    line = next(ln for ln in page.splitlines() if ln.startswith("Margin gamma"))
    assert line.startswith("Margin gamma = undefined: the chosen quantile of the margins is not positive")
    assert not re.search(r"\b(nan|None)\b", line) and "within it: undefined" in line
    table = summary_table([("random", doc)])
    assert "min median mu_i: the smallest over layers of the median (over samples) layer cushion mu_i" in table
    assert "min med mu" not in table and "ours" not in table


def test_one_warning_appears_once(card):
    notes = card[2].doc["notes"]
    margin = [n for n in notes if "quantile of the margins" in n]
    assert len(margin) == 1, notes


def test_identity_term_of_the_interlayer_cushion(card):
    """mu_{i,i} = 1/sqrt(h_i), h_i = the size of layer i's output; mu_{i->} <= it, equal at the last layer."""
    net, x, c = card
    doc = c.doc
    sizes = {}
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: sizes.update({n: o[0].numel()}))
             for n, m in net.named_modules() if n in doc["measure"]["layers"]]
    with torch.no_grad():
        net(x[:1])
    for h in hooks:
        h.remove()
    ident = figures.identity_terms(doc)
    assert set(ident) == set(doc["measure"]["layers"])
    for name, t in ident.items():
        assert t["value"] == pytest.approx(1 / math.sqrt(sizes[name]), rel=1e-12)
        assert doc["measure"]["interlayer_cushion"][name]["max"] <= t["value"] * (1 + 1e-12)
    last = doc["measure"]["layers"][-1]
    assert ident[last]["where"] == "all"
    fig, axes = drawn(figures.cushions, doc, rows=2)
    marks = [ln for ln in axes[1].get_lines() if "identity term" in ln.get_label()]
    assert len(marks) == 1 and list(marks[0].get_ydata()) == [ident[n]["value"] for n in doc["measure"]["layers"]]
    plt.close(fig)
    page = markdown(doc)
    assert "its j = i term is the identity's (J = I): 1/sqrt(h_i)" in page
    every = [n for n, t in ident.items() if t["where"] == "all"]
    assert f"on every sample at {len(every)} of {len(ident)} layers (" + ", ".join(every) + ")" in page


def test_layers_csv_holds_every_per_layer_meter(card, tmp_path):
    c = copy.deepcopy(card[2])
    folder = write_card(c, tmp_path / "card")
    assert c.doc["tables"] == {"layers": "layers.csv"}
    with open(folder / "layers.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    m = c.doc["measure"]
    assert [r["layer"] for r in rows] == m["layers"]
    cell = lambda v: "" if v is None else repr(v) if isinstance(v, float) else str(v)  # noqa: E731
    for r, name in zip(rows, m["layers"]):
        assert r["layer_cushion_min"] == cell(m["layer_cushion"][name]["min"])
        assert r["interlayer_cushion_median"] == cell(m["interlayer_cushion"][name]["median"])
        assert r["noise_sensitivity_max"] == cell(m["noise_sensitivity"][name]["max"])
        assert r["spectral_norm"] == cell(m["bound"]["operator_norms"][name]["spectral"])
        comp = next(x for x in c.doc["compressibility"]["layers"] if x["name"] == name)
        assert r["compress_k_rule"] == cell(comp["k_rule"]) and r["cap"] == cell(comp["cap"])
    # the last layer has no later layer: its smoothness is undefined, an empty cell
    assert rows[-1]["interlayer_smoothness_min"] == ""
    assert float(rows[0]["attenuation_to_output"]) == m["attenuation"]["mean"][0][-1]
    assert "layers.csv" in (folder / "card.md").read_text()


def test_to_dataframe_equals_the_reports(card):
    pd = pytest.importorskip("pandas")
    net, x, c = card
    report = c.report
    df = report.to_dataframe()
    assert list(df.index) == report.layers
    for row in report.layer_rows():
        for key, value in row.items():
            if key != "layer":
                got = df.loc[row["layer"], key]
                assert (value is None and pd.isna(got)) or got == value, key
    att = report.attenuation.to_dataframe()
    assert np.array_equal(att.to_numpy(), report.attenuation.mean, equal_nan=True)
    assert list(att.index) == list(att.columns) == report.layers
    _, rep = stabkern.compress_model(net, 4, mode="filter", seed=1, data=x)
    cdf = rep.to_dataframe()
    assert list(cdf["k"]) == [r.k for r in rep.layers]
    assert list(cdf["output_error_mean"]) == [r.output_error.mean for r in rep.layers]
    kc = stabkern.choose_k(net, x, 0.5, check=False)
    kdf = kc.to_dataframe()
    assert list(kdf.index) == [r.name for r in kc.layers] and list(kdf["cap"]) == [r.cap for r in kc.layers]


def test_to_dataframe_without_pandas_says_so(card, monkeypatch):
    import builtins

    real = builtins.__import__

    def no_pandas(name, *a, **kw):
        if name == "pandas" or name.startswith("pandas."):
            raise ImportError("No module named 'pandas'")
        return real(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_pandas)
    with pytest.raises(ImportError, match=r"StabilityReport.to_dataframe\(\) needs pandas.*pip install pandas"):
        card[2].report.to_dataframe()
