"""The files a command writes into --out, published as one set: all of them or none, never mixed.

`write_set(folder, {name: write})` writes every file into a fresh private folder inside `folder` (same
filesystem), then, holding an exclusive lock on `folder` and with SIGINT held back, renames each into
place and removes the set's files this run does not write (`remove`). So an interruption before the
publish leaves the previous set whole (or nothing); two runs into one folder publish one after the
other, and the last complete set wins whole (compression.json's k always matches compressed.pt's).
The set's files sit in the user's folder beside others (one cannot rename the folder itself), so a
reader that looks during the microseconds of a publish may see two sets mixed; once it is done, never.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
import signal
import tempfile
import threading

from ..card.render import publish_mode


def write_set(folder: pathlib.Path, files: dict, remove=()) -> None:
    """Write folder/name for each name, write in `files` (write(path) creates the file at path) as one set,
    and delete folder/name for each name in `remove` (stale members of an earlier set) in the same step."""
    stage = pathlib.Path(tempfile.mkdtemp(dir=folder, prefix=".stabkern-set-"))
    try:
        for name, write in files.items():
            write(stage / name)
            publish_mode(stage / name)
        with _locked(folder), _sigint_held():
            for name in files:
                os.replace(stage / name, folder / name)
            for name in remove:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(folder / name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def json_writer(doc: dict):
    """A `write_set` writer of `doc` as indented JSON (NaN refused: the formats have null for undefined)."""
    def write(path):
        with open(path, "w") as f:
            json.dump(doc, f, indent=1, allow_nan=False)
    return write


@contextlib.contextmanager
def _locked(folder: pathlib.Path):
    """An exclusive flock on the folder itself (no lock file left behind); none where fcntl is missing."""
    try:
        import fcntl
    except ImportError:  # Windows: publishes are not serialized between processes
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


@contextlib.contextmanager
def _sigint_held():
    """Ctrl-C during the block takes effect after it (the main thread only: signals are delivered there)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(frame))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if received and callable(previous):
            previous(signal.SIGINT, received[0])
