"""docs/spec.md cannot drift: its tables are exactly tests/helpers/spec_vectors.py's output (the specs'
text in Python ints and `math`), and stabkern's reference code gives the same values."""

import math
import re
from pathlib import Path

import pytest
import torch

from stabkern import spec

from helpers import spec_vectors

DOC = Path(__file__).resolve().parents[1] / "docs" / "spec.md"


def doc_table(name: str) -> str:
    found = re.search(rf"<!-- table {name} -->\n(.*?)\n<!-- end {name} -->", DOC.read_text(), re.S)
    assert found, f"docs/spec.md has no table {name}"
    return found.group(1)


def gaussian_reference():
    """The float64 noise reference of stabkern.spec."""
    return spec.gaussian_reference


@pytest.mark.parametrize("name", sorted(spec_vectors.TABLES))
def test_doc_table_is_the_generators_output(name):
    assert doc_table(name) == spec_vectors.TABLES[name]()


def test_philox_kat_rows_match_reference():
    for counter, key, expected in spec_vectors.KAT:
        c = [torch.tensor(v, dtype=torch.int64) for v in counter]
        assert tuple(int(w) for w in spec.philox4x32_10(*c, *key)) == expected


@pytest.mark.parametrize("seed,stream,t,j", spec_vectors.SIGN_CASES)
def test_doc_signs_match_reference(seed, stream, t, j):
    assert spec.sign_block(seed, stream, t, 1, j, 1).item() == spec_vectors.sign(seed, stream, t, j)


@pytest.mark.parametrize("seed,stream,sample,trial,j", spec_vectors.NOISE_CASES)
def test_doc_noise_matches_reference(seed, stream, sample, trial, j):
    """Both sides evaluate the same float64 formula with correctly rounded or faithful libm calls, so
    they differ by a few roundings of the largest intermediate: |z - z'| <= 8 eps r (|2 pi v| + 1)
    with eps = 2^-53, r = sqrt(-2 ln u) <= 5.77 and 2 pi v < 6.3 (about 6e-14 at most)."""
    _, _, _, u, v, z = spec_vectors.noise_steps(seed, stream, sample, trial, j)
    got = gaussian_reference()(seed, stream, torch.tensor([sample]), torch.tensor([trial]), 1, j0=j)
    r = math.sqrt(-2 * math.log(u))
    assert abs(got.item() - z) <= 8 * 2.0 ** -53 * r * (2 * math.pi * v + 1)


def test_noise_u_v_are_exact_float32():
    """The spec's claim: u and v are odd multiples of 2^-24 in (0, 1), exact in float32."""
    for case in spec_vectors.NOISE_CASES:
        _, _, _, u, v, _ = spec_vectors.noise_steps(*case)
        for x in (u, v):
            assert 0 < x < 1 and torch.tensor(x, dtype=torch.float32).item() == x
            assert (x * 2 ** 24) % 2 == 1
