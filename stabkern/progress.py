"""The progress protocol: one callable `progress(stage, done, total)` that long work calls as it goes.

What it is: the contract between stabkern's long-running steps (the card's stages, the CLI's per-meter
and per-layer loops) and whoever shows progress. `stage` names the work ("attenuation", "compress
features.0"), `done` counts finished units of it out of `total` (total >= 1; done == total ends the stage).

What it is not: a logger or a timer. The default, `silent`, does nothing, so library calls print
nothing; the command line passes `bars()` (tqdm on stderr), which stays silent when stderr is not a
terminal or with --quiet. `Tally` is how the meters and compress_model count their units (a total known
in advance, or growing with a stream of unknown length).
"""

from __future__ import annotations

import sys
from typing import Protocol


class Progress(Protocol):
    """progress(stage, done, total): `done` of `total` units of `stage` are finished."""

    def __call__(self, stage: str, done: int, total: int) -> None: ...


def silent(stage: str, done: int, total: int) -> None:
    """The library default: report nothing."""


class TqdmBars:
    """One tqdm bar per stage on `stream` (stderr), closed when done reaches total."""

    def __init__(self, stream=None):
        from tqdm import tqdm  # a dependency of the CLI only

        self._tqdm = tqdm
        self._stream = sys.stderr if stream is None else stream
        self._bars: dict = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        bar = self._bars.get(stage)
        if bar is None:
            bar = self._bars[stage] = self._tqdm(total=total, desc=stage, file=self._stream, leave=False,
                                                 dynamic_ncols=True)
        bar.update(done - bar.n)
        if done >= total:
            bar.close()
            del self._bars[stage]

    def close(self) -> None:
        """Close every bar still open (a stage interrupted by an error)."""
        for bar in self._bars.values():
            bar.close()
        self._bars.clear()


def bars(quiet: bool = False, stream=None) -> Progress:
    """tqdm bars on stderr when it is a terminal and not `quiet`, else `silent`."""
    stream = sys.stderr if stream is None else stream
    if quiet or not getattr(stream, "isatty", lambda: False)():
        return silent
    return TqdmBars(stream)


def steps(progress: Progress, stage: str, items):
    """Yield from `items` (a sized iterable), reporting stage progress 0..len(items)."""
    items = list(items)
    total = max(len(items), 1)
    progress(stage, 0, total)
    for i, item in enumerate(items):
        yield item
        progress(stage, i + 1, total)
    if not items:
        progress(stage, 1, 1)


class Tally:
    """Counts finished units of one stage for a `progress(stage, done, total)` callback; None: silent.

    Each meter adds the units it will do (`expect`) before doing them, unless the caller fixed the total
    (`fix`: measure, which knows all its meters' units when the data's length is known). expect(None) (a
    stream of unknown length): each step reports total = done + 1 (more may come) until `finish` reports
    done == total.
    """

    def __init__(self, progress, stage: str):
        if progress is not None and not callable(progress):
            raise TypeError(f"progress must be a callable progress(stage, done, total) or None, got "
                            f"{type(progress).__name__}")
        self.progress, self.stage, self.total, self.known, self.done = progress, stage, 0, True, 0
        self.fixed = False

    def fix(self, total: int) -> None:
        """The stage's whole total, known in advance: later `expect` calls change nothing."""
        self.total, self.fixed = total, True

    def expect(self, units: int | None) -> None:
        if self.fixed:
            return
        if units is None:
            self.known = False
        else:
            self.total += units

    def step(self, units: int = 1) -> None:
        self.done += units
        if self.progress is not None:
            total = self.total if self.known and self.total >= self.done else self.done + 1
            self.progress(self.stage, self.done, max(total, 1))

    def finish(self) -> None:
        """Report the end: done == total (units never stepped, e.g. of an empty stage, count as one)."""
        if self.progress is not None and not (self.known and self.done == self.total and self.done):
            self.progress(self.stage, max(self.done, 1), max(self.done, 1))
