"""Bad input on the command line: one line on stderr naming the problem and the fix, exit status 2,
nothing written; --debug shows the traceback."""

import os

import numpy as np
import pytest
import torch

from stabkern.cli.main import main


def fails(capsys, *argv):
    code = main(list(argv))
    err = capsys.readouterr().err
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("stabkern "), err
    return lines[0]


def test_unknown_architecture(capsys, small):
    line = fails(capsys, "meter", "resnet999:w.pt", "--data", small["data"])
    assert "resnet999" in line


def test_missing_weights(capsys, small, tmp_path):
    line = fails(capsys, "meter", f"digits:{tmp_path / 'absent.pt'}", "--data", small["data"])
    assert "absent.pt" in line


def test_corrupt_weights(capsys, small, tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a zip file at all")
    line = fails(capsys, "meter", f"digits:{bad}", "--data", small["data"])
    assert "bad.pt" in line


def test_wrong_data_shape(capsys, small, tmp_path):
    path = tmp_path / "rgb.npz"
    np.savez(path, x=np.zeros((4, 3, 32, 32), np.float32), y=np.zeros(4, np.int64))
    line = fails(capsys, "meter", small["model"], "--data", str(path))
    assert "(3, 32, 32)" in line


def test_wrong_data_dtype(capsys, small, tmp_path):
    path = tmp_path / "complex.npz"
    np.savez(path, x=np.zeros((4, 1, 8, 8), np.complex64))
    line = fails(capsys, "meter", small["model"], "--data", str(path))
    assert "complex64" in line


def test_labels_out_of_range(capsys, small, tmp_path):
    path = tmp_path / "labels.npz"
    np.savez(path, x=small["x"].numpy(), y=np.full(len(small["x"]), 10, np.int64))
    line = fails(capsys, "card", small["model"], "--data", str(path), "--out", str(tmp_path / "o"))
    assert "[0, 10)" in line
    assert not any((tmp_path / "o").iterdir())


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_unavailable_device(capsys, small):
    line = fails(capsys, "meter", small["model"], "--data", small["data"], "--device", "cuda")
    assert "--device cpu" in line


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_unwritable_out_folder(capsys, small, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    line = fails(capsys, "card", small["model"], "--data", small["data"], "--out", str(locked / "x"))
    assert "--out" in line


def test_out_is_a_file(capsys, small, tmp_path):
    f = tmp_path / "file"
    f.write_text("")
    line = fails(capsys, "card", small["model"], "--data", small["data"], "--out", str(f))
    assert "--out" in line


def test_bad_seed(capsys, small):
    line = fails(capsys, "meter", small["model"], "--data", small["data"], "--seed", "-1")
    assert "seed" in line


def test_debug_shows_traceback(capsys, small):
    assert main(["meter", "resnet999:w.pt", "--data", small["data"], "--debug"]) == 2
    assert "Traceback" in capsys.readouterr().err


def _flip_last_data_byte(path, member):
    """Flip one bit in the last stored byte of `member` of a stored (uncompressed) zip: its CRC no longer matches."""
    import zipfile

    info = zipfile.ZipFile(path).getinfo(member)
    raw = bytearray(path.read_bytes())
    local = info.header_offset
    name_len = int.from_bytes(raw[local + 26:local + 28], "little")
    extra_len = int.from_bytes(raw[local + 28:local + 30], "little")
    raw[local + 30 + name_len + extra_len + info.compress_size - 1] ^= 1
    path.write_bytes(bytes(raw))


def test_npz_member_with_bad_crc(capsys, small, tmp_path):
    path = tmp_path / "flipped.npz"
    np.savez(path, x=small["x"].numpy(), y=small["y"].numpy())
    _flip_last_data_byte(path, "x.npy")
    line = fails(capsys, "meter", small["model"], "--data", str(path))
    assert "flipped.npz" in line and "'x'" in line and "CRC" in line


def test_uint64_labels_named_as_stored(capsys, small, tmp_path):
    """2^64 - 1 in a uint64 array is not -1: the error names the value the file holds."""
    path = tmp_path / "u64.npz"
    y = small["y"].numpy().astype(np.uint64)
    y[-1] = 2 ** 64 - 1
    np.savez(path, x=small["x"].numpy(), y=y)
    line = fails(capsys, "meter", small["model"], "--data", str(path))
    assert f"..{2 ** 64 - 1}" in line and "[-1" not in line


def test_nan_weights_named(capsys, small, tmp_path):
    from stabkern.zoo.digits import DigitsNet

    state = DigitsNet().state_dict()
    state["features.0.weight"][0, 0, 0, 0] = float("nan")
    torch.save(state, tmp_path / "nan.pt")
    line = fails(capsys, "meter", f"digits:{tmp_path / 'nan.pt'}", "--data", small["data"])
    assert "features.0.weight" in line and "NaN" in line


def test_overflow_on_the_data_is_one_line(capsys, small, tmp_path):
    """Finite weights and finite inputs whose conv output overflows float32: one line, not a traceback."""
    path = tmp_path / "huge.npz"
    np.savez(path, x=np.full((4, 1, 8, 8), 3e38, np.float32), y=np.zeros(4, np.int64))
    line = fails(capsys, "meter", small["model"], "--data", str(path))
    assert "NaN or Inf" in line and "features.0" in line


def test_broken_torch_export_is_one_line_without_torch_logs(capsys, recwarn, monkeypatch, small, tmp_path):
    """A .pt2 that torch.export.load cannot read, loaded trusted: torch logs a traceback (through its own
    handlers, on the stderr of import time) and falls back before it raises; the user sees only the
    one-line error. Every log record that reaches any handler is collected, whatever the logger."""
    import logging
    import zipfile

    from stabkern.zoo.digits import DigitsNet

    torch.export.save(torch.export.export(DigitsNet().eval(), (small["x"][:2],)), str(tmp_path / "m.pt2"))
    with zipfile.ZipFile(tmp_path / "m.pt2") as zin, zipfile.ZipFile(tmp_path / "broken.pt2", "w") as zout:
        for info in zin.infolist():
            if not info.filename.endswith("weights/weight_0"):  # a weight payload the config names, missing
                zout.writestr(info, zin.read(info))
    records = []
    monkeypatch.setattr(logging.Logger, "callHandlers", lambda self, record: records.append(record))
    recwarn.clear()
    line = fails(capsys, "meter", str(tmp_path / "broken.pt2"), "--data", small["data"], "--trust-pickle")
    monkeypatch.undo()
    assert "broken.pt2" in line
    assert records == [] and len(recwarn) == 0, [r.getMessage() for r in records] + [str(w.message) for w in recwarn]


@pytest.mark.parametrize("taken", ["file", "link-to-folder", "dangling-link", "folder-with-other-files"])
def test_card_name_taken_is_refused_before_any_work(capsys, small, tmp_path, taken):
    """OUT/NAME that is not a card folder: one line, nothing written in OUT or through a link, no hidden file."""
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("mine")
    target = out / "tiny"
    if taken == "file":
        target.write_text("mine")
    elif taken == "link-to-folder":
        target.symlink_to(elsewhere, target_is_directory=True)
    elif taken == "dangling-link":
        target.symlink_to(tmp_path / "absent")
    else:
        target.mkdir()
        (target / "notes.txt").write_text("mine")
    before = {p: (p.is_symlink(), p.read_bytes() if p.is_file() else None) for p in tmp_path.rglob("*")}
    line = fails(capsys, "card", small["model"], "--data", small["data"], "--out", str(out), "--name", "tiny",
                 "--limit", "8", "--trials", "1")
    assert "tiny" in line
    assert {p: (p.is_symlink(), p.read_bytes() if p.is_file() else None) for p in tmp_path.rglob("*")} == before


def test_card_name_must_not_leave_out(capsys, small, tmp_path):
    line = fails(capsys, "card", small["model"], "--data", small["data"], "--out", str(tmp_path / "out"),
                 "--name", "../escaped", "--limit", "8", "--trials", "1")
    assert "--name" in line
    assert not (tmp_path / "escaped").exists()


def test_abbreviated_options_are_not_taken(capsys):
    """"--lim" used to be read as "--limit" (argparse's prefix matching): a typo must not pick an option."""
    with pytest.raises(SystemExit) as exit_info:
        main(["meter", "digits", "--data", "digits", "--lim", "5"])
    assert exit_info.value.code == 2
    assert "unrecognized arguments: --lim" in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--limit", "--batch-size", "--trials"])
def test_a_range_error_names_its_flag(flag, capsys):
    assert main(["meter", "digits", "--data", "digits", flag, "0"]) == 2
    assert f"error: {flag} must be in [1, inf), got 0" in capsys.readouterr().err
