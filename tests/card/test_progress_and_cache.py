"""The progress protocol (silent by default, tqdm only on a terminal) and where the digits weights are cached."""

import io
import pathlib

import torch

from stabkern import progress
from stabkern.zoo import digits

ROOT = pathlib.Path(__file__).resolve().parents[2]


class Tty(io.StringIO):
    def isatty(self):
        return True


def test_bars_silent_off_a_terminal_or_quiet():
    assert progress.bars(stream=io.StringIO()) is progress.silent
    assert progress.bars(quiet=True, stream=Tty()) is progress.silent


def test_bars_draw_on_a_terminal_and_close():
    stream = Tty()
    bar = progress.bars(stream=stream)
    assert isinstance(bar, progress.TqdmBars)
    for i in progress.steps(bar, "compress", ["a", "b", "c"]):
        pass
    assert "compress:" in stream.getvalue() and "/3 " in stream.getvalue()  # tqdm throttles redraws
    assert bar._bars == {}


def test_steps_reports_every_item():
    seen = []
    assert list(progress.steps(lambda *a: seen.append(a), "s", "xy")) == ["x", "y"]
    assert seen == [("s", 0, 2), ("s", 1, 2), ("s", 2, 2)]


def test_cache_dir_is_the_users_not_the_repository(monkeypatch, tmp_path):
    monkeypatch.delenv("STABKERN_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert digits.cache_dir() == pathlib.Path.home() / ".cache" / "stabkern"
    assert ROOT not in digits.cache_dir().parents
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert digits.cache_dir() == tmp_path / "stabkern"


def test_cached_weights_are_loaded_not_retrained(monkeypatch, tmp_path):
    """A weights file in the cache is what trained_digits_net returns (no training: this test is fast)."""
    monkeypatch.setenv("STABKERN_CACHE", str(tmp_path))
    torch.manual_seed(5)
    state = digits.DigitsNet().state_dict()
    path = tmp_path / f"digits-net-shuffled-seed7-epochs3-width16-torch{torch.__version__}.pt"
    torch.save(state, path)
    try:
        net = digits.trained_digits_net(seed=7, epochs=3, labels="shuffled")
    finally:
        digits._trained_state.cache_clear()
    assert all(torch.equal(net.state_dict()[k], v) for k, v in state.items())
    assert list(tmp_path.iterdir()) == [path]


def test_shuffled_training_set_is_a_fixed_permutation():
    x, y = digits.training_set("shuffled")
    x2, y2 = digits.training_set("shuffled")
    xt, yt = digits.training_set("true")
    assert len(x) == digits.SHUFFLED_SAMPLES and torch.equal(y, y2) and torch.equal(x, xt[:len(x)])
    assert torch.equal(y.sort().values, yt[:len(x)].sort().values) and not torch.equal(y, yt[:len(x)])
