"""Every report stabkern writes validates against its shipped JSON Schema; broken ones do not."""

import copy

import jsonschema
import pytest
import torch

import stabkern
from stabkern.card import build_card, markdown
from stabkern.schemas import FORMATS, load, tagged, validate
from stabkern.zoo.digits import DigitsNet


@pytest.fixture(scope="module")
def net_and_data():
    torch.manual_seed(0)
    net = DigitsNet().eval()
    x = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        y = net(x).argmax(1)
    return net, x, y


def test_every_schema_ships_and_names_its_format():
    for fmt in FORMATS:
        schema = load(fmt)
        assert schema["properties"]["format"]["const"] == fmt
        jsonschema.Draft202012Validator.check_schema(schema)


def test_attenuation_report(net_and_data):
    net, x, _ = net_and_data
    doc = stabkern.noise_attenuation(net, x, trials=2).to_dict()
    assert doc["format"] == "stabkern-attenuation-report-v1" and doc["schema_version"] == 1
    validate(doc)
    bad = copy.deepcopy(doc)
    bad["alpha"] = -1.0
    with pytest.raises(jsonschema.ValidationError):
        validate(bad)


def test_measure_report(net_and_data):
    net, x, y = net_and_data
    doc = stabkern.measure(net, x, y, trials=2).to_dict()
    validate(doc)
    bad = copy.deepcopy(doc)
    del bad["layer_cushion"][doc["layers"][0]]["median"]
    with pytest.raises(jsonschema.ValidationError):
        validate(bad)


def test_compression_and_choose_k_reports(net_and_data):
    net, x, _ = net_and_data
    _, report = stabkern.compress_model(net, 8, mode="filter", seed=1, data=x, eps=0.5)
    validate(report.to_dict())
    kc = stabkern.choose_k(net, x, 0.9, check=True)
    validate(tagged(kc.to_dict(), "stabkern-choose-k-v1"))
    bad = tagged(kc.to_dict(), "stabkern-choose-k-v1")
    bad["mode"] = "rows"
    with pytest.raises(jsonschema.ValidationError):
        validate(bad)


def test_card_without_labels(net_and_data):
    net, x, _ = net_and_data
    card = build_card(net, x, None, trials=2)
    validate(card.doc)
    assert card.doc["accuracy_vs_k"] is None and card.doc["data"]["accuracy"] is None
    assert "## Accuracy vs k" not in markdown(card.doc)
    assert set(card.doc["provenance"]["wall_time_s"]) == {"weights", "measure", "choose_k", "compress"}


def test_repeated_warnings_become_one_line():
    import warnings

    from stabkern.card.build import summarized_warnings

    notes = []
    with summarized_warnings(notes):
        for i in range(7):
            warnings.warn(f"layer {i}: k >= n", UserWarning)
        warnings.warn("deprecated inside torch", DeprecationWarning)
    assert notes == ["UserWarning x7, e.g.: layer 0: k >= n"]


def test_card_says_beside_each_bound_whether_its_hypotheses_hold(net_and_data):
    """Issue 16, 3: each capacity term carries its hypotheses in the JSON and in words on the page; the conv
    bound is labelled unverified in the JSON, the table and the figure's labels; the run's own relative standard
    error of mu_(i,j) is on the page."""
    from stabkern.card.figures import bound_items

    net, x, y = net_and_data
    card = build_card(net, x, y, trials=2, fractions=(1.0,))
    validate(card.doc)
    b = card.doc["measure"]["bound"]
    assert set(b["hypotheses"]) == set(b["log10"]) - {"parameters"}
    page = markdown(card.doc)
    rows = {line.split(" | ")[0][2:]: line for line in page.splitlines() if line.startswith("| ") and " | " in line}
    for key, label, _ in bound_items(card.doc):
        if key == "parameters":
            continue
        h = b["hypotheses"][key]
        assert h["text"] in rows[label], key
        assert ("FAIL" in rows[label]) == (h["holds"] is False)
    # a random net: rho far below 3d = 15 and the bound far above its parameter count
    assert b["hypotheses"]["ours"]["checks"]["rho_at_least_3d"]["holds"] is False
    assert "rho = " in rows[bound_items(card.doc)[0][1]] and "(vacuous)" in rows[bound_items(card.doc)[0][1]]
    conv = next(label for key, label, _ in bound_items(card.doc) if key == "ours_conv")
    assert "UNVERIFIED" in conv and "unverified" in rows[conv] and f"{conv}: unverified" in page
    assert b["mu_rse"]["probes"] == 8 and b["mu_rse"]["t_quantile"] == pytest.approx(2.3646242510102993)  # t_{.975, 7}
    assert f"median {100 * b['mu_rse']['median']:.2g}%" in page and "t = 2.36" in page
