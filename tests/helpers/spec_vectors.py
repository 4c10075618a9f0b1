"""The known-answer tables of docs/spec.md, from the spec's text alone: Python ints and `math`, no torch.

`python -m helpers.spec_vectors` (from tests/) prints the tables; tests/test_spec_doc.py checks that the doc
holds exactly these and that stabkern's reference code gives the same values, so the doc cannot drift.
Shares no code with stabkern (the Philox is that of golden_signs.py, itself independent).
"""

import math

from helpers.golden_signs import M32, philox4x32_10

# Philox4x32-10 known answers of Random123 (kat_vectors): (counter, key) -> output
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((M32,) * 4, (M32,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]

# stabkern-sign-v1 entries (seed, stream, t, j): word and bit boundaries, the largest counters
SIGN_CASES = [
    (0, 0, 0, 0), (0, 0, 0, 31), (0, 0, 0, 32), (0, 0, 0, 127), (0, 0, 0, 128),
    (7, 3, 5, 1000), ((1 << 32) + 5, 0, 1 << 31, 4095), ((1 << 63) + 5, 11, 77, 1 << 37),
    ((1 << 64) - 1, (1 << 32) - 1, (1 << 32) - 1, (1 << 38) - 1),
]

# stabkern-noise-v1 elements (seed, stream, sample, trial, j): all four of one Philox call, then others
NOISE_CASES = [
    (0, 0, 0, 0, 0), (0, 0, 0, 0, 1), (0, 0, 0, 0, 2), (0, 0, 0, 0, 3), (0, 0, 0, 0, 4),
    (7, 3, 5, 2, 1001), ((1 << 64) - 1, (1 << 32) - 2, (1 << 32) - 1, (1 << 32) - 1, (1 << 34) - 1),
]


def sign(seed, stream, t, j):
    """+1 or -1: spec stabkern-sign-v1."""
    words = philox4x32_10((j >> 7, t, stream, 0), (seed & M32, seed >> 32))
    return 1 if (words[(j >> 5) & 3] >> (j & 31)) & 1 else -1


def noise_steps(seed, stream, sample, trial, j):
    """(Philox words, a, b, u, v, z) of element j: spec stabkern-noise-v1, in float64."""
    words = philox4x32_10((j >> 2, sample, trial, stream + 1), (seed & M32, seed >> 32))
    p = (j >> 1) & 1
    a, b = words[2 * p], words[2 * p + 1]
    u, v = (2 * (a >> 9) + 1) * 2.0 ** -24, (2 * (b >> 9) + 1) * 2.0 ** -24
    r = math.sqrt(-2.0 * math.log(u))
    z = r * math.cos(2 * math.pi * v) if j % 2 == 0 else r * math.sin(2 * math.pi * v)
    return words, a, b, u, v, z


def _hex(words):
    return " ".join(f"{w:08x}" for w in words)


def kat_table() -> str:
    lines = ["| counter (c0 c1 c2 c3) | key (k0 k1) | output (w0 w1 w2 w3) |", "|---|---|---|"]
    lines += [f"| {_hex(c)} | {_hex(k)} | {_hex(w)} |" for c, k, w in KAT]
    return "\n".join(lines)


def sign_table() -> str:
    lines = ["| seed | stream | t | j | Philox words (w0 w1 w2 w3) | word, bit | sign |", "|---|---|---|---|---|---|---|"]
    for seed, stream, t, j in SIGN_CASES:
        words = philox4x32_10((j >> 7, t, stream, 0), (seed & M32, seed >> 32))
        lines.append(f"| {seed} | {stream} | {t} | {j} | {_hex(words)} | {(j >> 5) & 3}, {j & 31} | "
                     f"{sign(seed, stream, t, j):+d} |")
    return "\n".join(lines)


def noise_table() -> str:
    lines = ["| seed | stream | sample | trial | j | Philox words (w0 w1 w2 w3) | u | v | z_j |",
             "|---|---|---|---|---|---|---|---|---|"]
    for seed, stream, sample, trial, j in NOISE_CASES:
        words, _, _, u, v, z = noise_steps(seed, stream, sample, trial, j)
        lines.append(f"| {seed} | {stream} | {sample} | {trial} | {j} | {_hex(words)} | {u!r} | {v!r} | {z!r} |")
    return "\n".join(lines)


TABLES = {"philox-kat": kat_table, "sign-v1": sign_table, "noise-v1": noise_table}

if __name__ == "__main__":
    for name, table in TABLES.items():
        print(f"<!-- table {name} -->\n{table()}\n<!-- end {name} -->\n")
