"""The adapters stay optional: stabkern imports without traker, and the adapter says how to get it."""

import importlib
import subprocess
import sys

import pytest


def test_stabkern_imports_without_loading_traker():
    code = "import sys, stabkern, stabkern.adapters; assert 'trak' not in sys.modules, sorted(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_adapter_without_traker_names_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "trak", None)  # None in sys.modules: "import trak" raises ImportError
    monkeypatch.setitem(sys.modules, "trak.projectors", None)
    monkeypatch.delitem(sys.modules, "stabkern.adapters.traker", raising=False)
    with pytest.raises(ImportError, match="pip install traker"):
        importlib.import_module("stabkern.adapters.traker")
    sys.modules.pop("stabkern.adapters.traker", None)  # a failed import leaves nothing behind to reuse
