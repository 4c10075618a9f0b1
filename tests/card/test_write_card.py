"""write_card's folder handling: a card replaces its folder as a whole; anything else there is refused
before a byte is written; a failed write leaves the previous card and no hidden file. The drawing and
the Markdown are stubbed: only the writing is under test."""

import json

import pytest

from stabkern.card import render


class FakeCard:
    def __init__(self, label):
        self.doc = {"label": label}


@pytest.fixture(autouse=True)
def quick_rendering(monkeypatch):
    def draw_all(doc, folder):
        (folder / "attenuation.png").write_bytes(b"\x89PNG" + doc["label"].encode())
        return {"attenuation": "attenuation.png"}

    monkeypatch.setattr(render.figures, "draw_all", draw_all)
    monkeypatch.setattr(render, "markdown", lambda doc: f"# {doc['label']}\n")


def listing(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_replaces_a_card_whole_and_leaves_nothing_else(tmp_path):
    render.write_card(FakeCard("first"), tmp_path / "c")
    render.write_card(FakeCard("second"), tmp_path / "c")
    assert json.loads((tmp_path / "c" / "card.json").read_text())["label"] == "second"
    assert listing(tmp_path) == ["c", "c/attenuation.png", "c/card.json", "c/card.md", "c/layers.csv"]


def test_failed_write_keeps_the_previous_card(tmp_path, monkeypatch):
    render.write_card(FakeCard("first"), tmp_path / "c")
    before = {p: p.read_bytes() for p in (tmp_path / "c").iterdir()}

    def interrupted(doc):
        raise KeyboardInterrupt

    monkeypatch.setattr(render, "markdown", interrupted)
    with pytest.raises(KeyboardInterrupt):
        render.write_card(FakeCard("second"), tmp_path / "c")
    assert {p: p.read_bytes() for p in (tmp_path / "c").iterdir()} == before
    assert listing(tmp_path) == ["c", "c/attenuation.png", "c/card.json", "c/card.md", "c/layers.csv"]


def test_refuses_what_is_not_a_card_folder(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "file").write_text("mine")
    (tmp_path / "link").symlink_to(elsewhere, target_is_directory=True)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("mine")
    before = listing(tmp_path)
    for name, match in (("file", "not a folder"), ("link", "symbolic link"), ("mine", "'thesis.tex'")):
        with pytest.raises(ValueError, match=match):
            render.write_card(FakeCard("x"), tmp_path / name)
    assert listing(tmp_path) == before and (tmp_path / "file").read_text() == "mine"
