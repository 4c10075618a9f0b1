"""The progress protocol: one callable `progress(stage, done, total)` that long work calls as it goes.

What it is: the contract between stabkern's long-running steps (the card's stages, the CLI's per-meter
and per-layer loops) and whoever shows progress. `stage` names the work ("attenuation", "compress
features.0"), `done` counts finished units of it out of `total` (total >= 1; done == total ends the stage).

What it is not: a logger or a timer. The default, `silent`, does nothing, so library calls print
nothing; the command line passes `bars()` (tqdm on stderr), which stays silent when stderr is not a
terminal or with --quiet.
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
