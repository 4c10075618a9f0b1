"""Spec stabkern-sign-v1: Philox known answers and the golden sign table, on every backend, bit for bit."""

import json

import pytest
import torch

import stabkern
from stabkern import spec as reference

from helpers import golden_signs

KAT = [  # Random123's kat_vectors for philox4x32_10: (counter, key) -> output
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]

GOLDEN = json.loads(golden_signs.PATH.read_text())


def golden_matrix(case) -> torch.Tensor:
    """The case's signs as a (k, n) float32 tensor of +-1."""
    rows = []
    for hex_row in case["rows_hex"]:
        value = int(hex_row, 16)
        rows.append([1.0 if (value >> i) & 1 else -1.0 for i in range(case["n"])])
    return torch.tensor(rows)


@pytest.mark.parametrize("counter,key,expected", KAT)
def test_philox_known_answers_reference(counter, key, expected):
    c = [torch.tensor(v, dtype=torch.int64) for v in counter]
    assert tuple(int(w) for w in reference.philox4x32_10(*c, *key)) == expected


@pytest.mark.parametrize("counter,key,expected", KAT)
def test_philox_known_answers_independent_generator(counter, key, expected):
    assert golden_signs.philox4x32_10(counter, key) == expected


@pytest.mark.parametrize("counter,key,expected", KAT)
def test_philox_known_answers_cpp(counter, key, expected):
    cpu = pytest.importorskip("stabkern._cpu")
    assert tuple(cpu.philox4x32_10(*counter, *key)) == expected


def test_committed_table_matches_generator():
    assert GOLDEN == golden_signs.generate()


@pytest.mark.parametrize("case", GOLDEN, ids=[c["name"] for c in GOLDEN])
def test_reference_sign_block_matches_table(case):
    s = reference.sign_block(case["seed"], case["stream"], case["t0"], case["k"], case["j0"], case["n"],
                             dtype=torch.float32)
    assert torch.equal(s, golden_matrix(case))


@pytest.mark.parametrize("case", GOLDEN, ids=[c["name"] for c in GOLDEN])
def test_sign_matrix_matches_table(case):
    s = stabkern.sign_matrix(case["k"], case["n"], seed=case["seed"], stream=case["stream"],
                             row_offset=case["t0"], col_offset=case["j0"])
    assert torch.equal(s, golden_matrix(case))


@pytest.mark.parametrize("case", GOLDEN, ids=[c["name"] for c in GOLDEN])
def test_backend_projection_reads_table_exactly(case, device_backend):
    """Projecting the identity reads S^T out of the kernel itself: every entry exactly +-1."""
    device, backend = device_backend
    eye = torch.eye(case["n"], device=device)
    y = stabkern.sign_project(eye, case["k"], seed=case["seed"], stream=case["stream"], row_offset=case["t0"],
                              col_offset=case["j0"], backend=backend)
    assert torch.equal(y.T.cpu(), golden_matrix(case))


@pytest.mark.parametrize("case", GOLDEN, ids=[c["name"] for c in GOLDEN])
def test_backend_reconstruction_reads_table_exactly(case, device_backend):
    device, backend = device_backend
    eye = torch.eye(case["k"], device=device)
    s = stabkern.sign_reconstruct(eye, case["n"], seed=case["seed"], stream=case["stream"], scale=1.0,
                                  row_offset=case["t0"], col_offset=case["j0"], backend=backend)
    assert torch.equal(s.cpu(), golden_matrix(case))
