"""`python -m stabkern`: Algorithm 1 on one VGG-sized conv layer, timed, against the theory.

The embedded default is a 512x512x3x3 conv weight (n = 2,359,296, He-initialized from a fixed
seed) compressed to k = 4096 coefficients: it prints the backend, the projection and
reconstruction rates in sign-MAC/s, the compression ratio, and the measured relative error
||A_hat - A||_F^2 / ||A||_F^2 beside its expectation (n - 1) / k.
"""

from __future__ import annotations

import argparse
import time

import torch

from . import sign_project, sign_reconstruct
from .ops import select_backend


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m stabkern", description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs="+", default=[512, 512, 3, 3], help="weight shape")
    parser.add_argument("-k", type=int, default=4096, help="number of sign coefficients")
    parser.add_argument("--seed", type=int, default=2018)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--backend", default="auto")
    args = parser.parse_args(argv)

    gen = torch.Generator().manual_seed(0)
    A = torch.randn(*args.shape, generator=gen) * (2.0 / fan_in(args.shape)) ** 0.5
    A = A.to(args.device)
    n, k = A.numel(), args.k
    backend = select_backend(args.backend, A.device, A.dtype).name
    print(f"layer weight {tuple(args.shape)}: n = {n:,}, k = {k:,}, backend '{backend}' on {args.device}")
    sign_project(A.reshape(-1)[:128], 1, seed=args.seed, backend=args.backend)  # warm-up: torch's first-call setup

    def timed(fn):
        if A.is_cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = fn()
        if A.is_cuda:
            torch.cuda.synchronize()
        return out, time.perf_counter() - start

    y, t_proj = timed(lambda: sign_project(A.reshape(-1), k, seed=args.seed, backend=args.backend))
    A_hat, t_rec = timed(lambda: sign_reconstruct(y, n, seed=args.seed, backend=args.backend).reshape(A.shape))
    ratio = ((A_hat - A).norm() ** 2 / A.norm() ** 2).item()
    print(f"projection      {t_proj * 1e3:9.1f} ms  {n * k / t_proj / 1e9:8.2f} G sign-MAC/s")
    print(f"reconstruction  {t_rec * 1e3:9.1f} ms  {n * k / t_rec / 1e9:8.2f} G sign-MAC/s")
    print(f"stored: {k:,} coefficients + seed instead of {n:,} weights ({n / k:.0f}x smaller)")
    print(f"||A_hat - A||^2 / ||A||^2 = {ratio:.2f}   (expected (n - 1) / k = {(n - 1) / k:.2f})")


def fan_in(shape) -> int:
    """Inputs per output unit: the product of all but the first dimension."""
    count = 1
    for s in shape[1:]:
        count *= s
    return count


if __name__ == "__main__":
    main()
