"""The backend registry (`stabkern.backends`): declared capabilities, one selection rule for both op
families, environment variables, and `python -m stabkern.info` under bad settings."""

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

import stabkern
from stabkern import ops
from stabkern.backends import BACKENDS, BackendUnavailableError, environment_problems, select
from stabkern.backends import base as backends_base

ROOT = Path(__file__).resolve().parents[2]


def test_every_backend_declares_its_capabilities():
    assert set(BACKENDS) == {"reference", "cpu", "triton", "cuda"}
    assert BACKENDS["reference"].families == {"sign", "noise"}
    assert BACKENDS["cpu"].families == {"sign", "noise"}
    assert BACKENDS["triton"].families == {"sign", "noise"}
    assert BACKENDS["cuda"].families == {"sign"}
    assert BACKENDS["cuda"].min_compute_capability == (8, 0)
    for backend in BACKENDS.values():
        assert backend.deterministic is True and backend.native_dtypes


def test_cuda_refuses_a_gpu_older_than_sm80(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    reason = BACKENDS["cuda"].refuses(torch.device("cuda"), torch.float32)
    assert reason is not None and "compute capability 7.5" in reason and "8.0" in reason and "triton" in reason
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert BACKENDS["cuda"].refuses(torch.device("cuda"), torch.float32) is None


def test_unknown_backend_name_is_a_value_error():
    """Regression: select_backend('bogus', ...) raised a bare KeyError."""
    with pytest.raises(ValueError, match="backend must be one of"):
        ops.select_backend("bogus", torch.device("cpu"), torch.float32)
    with pytest.raises(ValueError, match="backend must be one of"):
        select("noise", "bogus", torch.device("cpu"), torch.float32)


def test_a_backend_without_the_family_is_refused_with_its_reason():
    with pytest.raises(BackendUnavailableError, match="backend 'cuda' cannot run: it has no noise ops"):
        select("noise", "cuda", torch.device("cpu"), torch.float32)
    with pytest.raises(BackendUnavailableError, match="no noise ops"):
        ops.sq_error(torch.randn(4, 3), torch.randn(2, 3), backend="cuda")


@pytest.mark.parametrize("family", ["sign", "noise"])
def test_auto_falls_back_to_reference_with_one_warning_for_both_families(family, monkeypatch):
    """The same rule for both families: cpu missing -> reference, one RuntimeWarning saying why."""
    monkeypatch.setattr(backends_base.Backend, "missing", lambda self, family=None: None)
    monkeypatch.setattr(type(BACKENDS["cpu"]), "missing", lambda self, family=None: "not built (test)")
    monkeypatch.setattr(stabkern.backends, "_warned_fallback", set())
    with pytest.warns(RuntimeWarning, match=f"the {family} ops use the slow reference backend because "
                                            "backend 'cpu' cannot run: not built"):
        assert select(family, "auto", torch.device("cpu"), torch.float32).name == "reference"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once only
        assert select(family, "auto", torch.device("cpu"), torch.float32).name == "reference"


def test_env_backend_of_the_other_family_leaves_auto_for_this_one(monkeypatch):
    monkeypatch.setenv("STABKERN_BACKEND", "cuda")  # cuda has no noise ops
    assert select("noise", "auto", torch.device("cpu"), torch.float32).name == "cpu"
    with pytest.raises(BackendUnavailableError, match="backend 'cuda' cannot run"):
        select("sign", "auto", torch.device("cpu"), torch.float32)


def test_bad_stabkern_backend_is_a_value_error_in_every_op(monkeypatch):
    monkeypatch.setenv("STABKERN_BACKEND", "bogus")
    assert "STABKERN_BACKEND" in environment_problems()
    x = torch.randn(2, 8)
    calls = [lambda: stabkern.sign_project(x, 3, seed=0), lambda: stabkern.sign_reconstruct(x, 3, seed=0),
             lambda: stabkern.sign_compress(x, 3, seed=0),
             lambda: ops.sphere_noise(x, torch.ones(2), trials=1, seed=0, stream=0),
             lambda: ops.sq_error(x, x)]
    for call in calls:
        with pytest.raises(ValueError, match="STABKERN_BACKEND must be one of"):
            call()
    assert stabkern.sign_project(x, 3, seed=0, backend="reference").shape == (2, 3)  # named: still runs


def _cpu_or_skip():
    if BACKENDS["cpu"].missing("sign") is not None:
        pytest.skip("stabkern._cpu is not built")


@pytest.mark.parametrize("value", ["bogus", "unavailable"])
def test_bad_stabkern_cpu_isa_is_a_clear_value_error(value, monkeypatch):
    """An unknown name, or a path this CPU cannot run (simulated: a CPU with generic only)."""
    _cpu_or_skip()
    if value == "unavailable":
        module = BACKENDS["cpu"].module
        monkeypatch.setattr(BACKENDS["cpu"], "_modules", dict(BACKENDS["cpu"]._modules))
        fake = type("FakeCpu", (), {"available_isas": staticmethod(lambda: ["generic"]),
                                    "__getattr__": lambda self, name: getattr(module, name)})()
        BACKENDS["cpu"]._modules["_cpu"] = (fake, None)
        value = "avx2"
    monkeypatch.setenv("STABKERN_CPU_ISA", value)
    assert "STABKERN_CPU_ISA" in environment_problems()
    with pytest.raises(ValueError, match=f"STABKERN_CPU_ISA.*{value}"):
        stabkern.sign_project(torch.randn(3, 40), 4, seed=1)
    from stabkern import info

    text = info.report()  # reports, never raises
    assert "INVALID STABKERN_CPU_ISA" in text and "cpu        unusable" in text
    # the noise generator reads it too (sq_error has no ISA-specific path)
    if value != "avx2":  # the simulated CPU above is the sign module's only
        with pytest.raises(ValueError, match="STABKERN_CPU_ISA"):
            ops.sphere_noise(torch.zeros(2, 40), torch.ones(2, dtype=torch.float64), trials=1, seed=0, stream=0,
                             backend="cpu")
    assert ops.sq_error(torch.ones(2, 3), torch.zeros(2, 3)).tolist() == [3.0, 3.0]


def _info(**env):
    run = subprocess.run([sys.executable, "-m", "stabkern.info"], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, **env}, timeout=120)
    return run.returncode, run.stdout, run.stderr


def test_info_under_bad_environment_variables():
    """Regression: a traceback under STABKERN_CPU_ISA=bogus; every backend 'usable' under STABKERN_BACKEND=bogus."""
    _cpu_or_skip()
    rc, out, err = _info(STABKERN_CPU_ISA="bogus")
    assert rc == 0 and "Traceback" not in err, err
    assert "INVALID STABKERN_CPU_ISA" in out and "cpu        unusable" in out
    rc, out, err = _info(STABKERN_BACKEND="bogus")
    assert rc == 0 and "Traceback" not in err, err
    assert "INVALID STABKERN_BACKEND" in out
    assert "  reference  usable\n" not in out and "usable only when named" in out
    rc, out, err = _info(STABKERN_BACKEND="", STABKERN_CPU_ISA="")
    assert rc == 0 and "INVALID" not in out and "  reference  usable\n" in out and "ISA path:" in out
    assert "GEMM-form kernels at 512 rows: project " in out
    rc, out, err = _info(STABKERN_CPU_ISA="avx2", STABKERN_CPU_KERNEL="", STABKERN_CPU_LUT_ROWS="")
    from stabkern import _cpu

    if "avx2" in _cpu.available_isas():  # the AVX2 path's rule: the LUT kernel both ways (csrc/README.md)
        assert "project lut, reconstruct lut, LUT tables of " in out, out
    rc, out, err = _info(STABKERN_CPU_KERNEL="bogus")
    assert rc == 0 and "Traceback" not in err and "GEMM-form kernels: unknown, STABKERN_CPU_KERNEL must be" in out
