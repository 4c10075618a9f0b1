"""The files of one command are published as one set: an interrupted run leaves the previous set whole,
concurrent runs into one --out leave one run's set whole (the JSON's k matches the saved weights)."""

import json
import threading

import pytest
import torch

from stabkern.cli.main import main
from stabkern.cli.outputs import json_writer, write_set


def state(out):
    """Every entry under out (hidden ones too) with its bytes."""
    return {p.name: p.read_bytes() if p.is_file() else None for p in out.iterdir()}


def saved_ks(out):
    """(k in compression.json, k of compressed.pt's coefficients), over the layers of each."""
    doc = json.loads((out / "compression.json").read_text())
    saved = torch.load(out / "compressed.pt", weights_only=True)
    return {r["k"] for r in doc["layers"]}, {r["coefficients"].shape[-1] for r in saved["sketches"]}


def compress(small, out, k):
    return main(["compress", small["model"], "--data", small["data"], "--k", str(k), "--out", str(out), "--quiet"])


def test_interrupted_compress_leaves_the_previous_set(small, tmp_path, monkeypatch, capsys):
    assert compress(small, tmp_path, 4) == 0
    before = state(tmp_path)
    assert sorted(before) == ["compressed.pt", "compression.json"]

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted)  # Ctrl-C while the weights are saved
    assert compress(small, tmp_path, 8) == 130
    assert state(tmp_path) == before  # no k = 8 JSON beside k = 4 weights, no hidden leftovers
    assert saved_ks(tmp_path) == ({4}, {4})


def test_concurrent_compress_runs_leave_one_whole_set(small, tmp_path, monkeypatch, capsys):
    """Run "first" (k = 4) reaches the saving of its weights, then run "second" (k = 8) runs whole, then
    "first" saves: file by file, the first run's weights would land beside the second's JSON. As sets,
    the first run's whole set wins."""
    first_saving, second_done = threading.Event(), threading.Event()
    save = torch.save

    def save_after_second(*args, **kwargs):
        if threading.current_thread().name == "first":
            first_saving.set()
            assert second_done.wait(120)
        save(*args, **kwargs)

    monkeypatch.setattr(torch, "save", save_after_second)
    codes = {}

    def run(name, k):
        if name == "second":
            assert first_saving.wait(120)
        codes[name] = compress(small, tmp_path, k)
        if name == "second":
            second_done.set()

    threads = [threading.Thread(target=run, args=a, name=a[0]) for a in (("first", 4), ("second", 8))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert codes == {"first": 0, "second": 0}
    assert saved_ks(tmp_path) == ({4}, {4})
    assert sorted(state(tmp_path)) == ["compressed.pt", "compression.json"]


def test_write_set_removes_stale_members_and_writes_nothing_when_a_writer_fails(tmp_path):
    write_set(tmp_path, {"a.json": json_writer({"run": 1}), "b.json": json_writer({"run": 1})})
    write_set(tmp_path, {"a.json": json_writer({"run": 2})}, remove=["b.json"])
    assert state(tmp_path) == {"a.json": (tmp_path / "a.json").read_bytes()}
    assert json.loads((tmp_path / "a.json").read_text()) == {"run": 2}

    def fails(path):
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_set(tmp_path, {"a.json": json_writer({"run": 3}), "c.json": fails})
    assert json.loads((tmp_path / "a.json").read_text()) == {"run": 2}
    assert sorted(state(tmp_path)) == ["a.json"]
