"""stabkern._noise's instruction-set paths: STABKERN_CPU_ISA selects them like the sign kernels', so
`.ci/run` exercises the portable path on every machine (tests/ops/test_noise_ops.py checks each path
against the float64 reference when run under STABKERN_CPU_ISA=generic / avx2)."""

import pytest
import torch

_noise = pytest.importorskip("stabkern._noise")


def _has(flag: str) -> bool:
    try:
        return flag in open("/proc/cpuinfo").read().split()
    except OSError:
        return False


def _noise_rows(x, radius, trials, seed):
    b, n = x.shape
    out = torch.empty(trials * b, n)
    _noise.sphere_noise_f32(x.data_ptr(), radius.data_ptr(), out.data_ptr(), b, n, trials, 0, 0, seed, 3, 1)
    return out


def test_isa_follows_the_variable(monkeypatch):
    monkeypatch.setenv("STABKERN_CPU_ISA", "generic")
    assert _noise.isa() == "generic"
    monkeypatch.setenv("STABKERN_CPU_ISA", "bogus")
    with pytest.raises(ValueError, match="STABKERN_CPU_ISA"):
        _noise.isa()
    with pytest.raises(ValueError, match="STABKERN_CPU_ISA"):  # refused before any work, not inside the threads
        _noise_rows(torch.zeros(2, 40), torch.ones(2, dtype=torch.float64), 1, 0)


@pytest.mark.skipif(not _has("avx2"), reason="no AVX2 on this CPU")
def test_paths_agree_and_keep_the_radius(monkeypatch):
    """Both paths generate the same Gaussians; they differ in how the squared norm is summed. The AVX2 path
    adds blocks of 1024 squares in float32 over 8 lanes (128 terms a lane): relative error <= 128 u of the
    squared norm, so <= 64 u of the scale radius / ||z||; the scalar path sums in double. With one rounding
    of the scaled noise and one of the add, entries differ by <= (64 + 2) u (|x| + |noise|), u = 2^-24;
    we allow 72 u. The distance to x is the radius within that same 66 u relative (< 1e-5)."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3, 1000, generator=gen)
    radius = torch.rand(3, generator=gen, dtype=torch.float64) + 0.5
    rows = {}
    for isa in ("generic", "avx2"):
        monkeypatch.setenv("STABKERN_CPU_ISA", isa)
        rows[isa] = _noise_rows(x, radius, 2, 7)
        dist = (rows[isa] - x.repeat(2, 1)).double().norm(dim=1)
        # |out - x| = radius up to float32 rounding of each element (relative 2^-24 of |x| + |noise|)
        assert torch.allclose(dist, radius.repeat(2), rtol=1e-5)
    u = 2.0 ** -24
    scale = x.abs().repeat(2, 1) + (rows["generic"] - x.repeat(2, 1)).abs()
    assert ((rows["generic"] - rows["avx2"]).abs() <= 72 * u * scale).all()
