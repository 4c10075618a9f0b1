"""Golden signs of spec stabkern-sign-v1 at hard places, from an independent pure-Python Philox.

`python tests/helpers/golden_signs.py` rewrites tests/data/golden_signs.json; the tests check the
committed table against this generator and against every backend, bit for bit. This file
deliberately shares no code with stabkern: Python ints, no torch.
"""

import json
from pathlib import Path

PATH = Path(__file__).parent.parent / "data" / "golden_signs.json"
M32 = 0xFFFFFFFF

# (name, seed, stream, first row t0, rows, first column j0, columns)
CASES = [
    ("origin: j across 32- and 128-boundaries", 0, 0, 0, 3, 0, 300),
    ("small seed, stream 1", 1, 1, 5, 2, 128, 260),
    ("t across 2^31", 12345, 7, (1 << 31) - 2, 4, 256, 130),
    ("last rows t = 2^32 - 3 .. 2^32 - 1", 99, 3, (1 << 32) - 3, 3, 0, 140),
    ("largest stream", 42, (1 << 32) - 1, 10, 2, 384, 200),
    ("seed >= 2^32", (1 << 32) + 17, 2, 1000, 3, 1 << 20, 257),
    ("seed = 2^64 - 1", (1 << 64) - 1, 0, 0, 2, 0, 129),
    ("seed with high bit, j >= 2^37", (1 << 63) + 5, 11, 77, 2, 1 << 37, 160),
    ("last columns j < 2^38", 2024, 5, 3, 2, (1 << 38) - 256, 256),
]


def philox4x32_10(c, key):
    c0, c1, c2, c3 = c
    k0, k1 = key
    for _ in range(10):
        p0 = 0xD2511F53 * c0
        p1 = 0xCD9E8D57 * c2
        c0, c1, c2, c3 = ((p1 >> 32) ^ c1 ^ k0) & M32, p1 & M32, ((p0 >> 32) ^ c3 ^ k1) & M32, p0 & M32
        k0, k1 = (k0 + 0x9E3779B9) & M32, (k1 + 0xBB67AE85) & M32
    return c0, c1, c2, c3


def sign_bit(seed, stream, t, j):
    words = philox4x32_10((j >> 7, t, stream, 0), (seed & M32, seed >> 32))
    return (words[(j >> 5) & 3] >> (j & 31)) & 1


def row_bits(seed, stream, t, j0, n):
    """Row t, columns j0..j0+n-1 as an int whose bit i is sign bit of column j0 + i (1 means +1)."""
    value = 0
    for i in range(n):
        value |= sign_bit(seed, stream, t, j0 + i) << i
    return value


def generate():
    return [
        {"name": name, "seed": seed, "stream": stream, "t0": t0, "k": k, "j0": j0, "n": n,
         "rows_hex": [format(row_bits(seed, stream, t0 + r, j0, n), "x") for r in range(k)]}
        for name, seed, stream, t0, k, j0, n in CASES
    ]


if __name__ == "__main__":
    PATH.write_text(json.dumps(generate(), indent=1) + "\n")
    print(f"wrote {PATH}")
