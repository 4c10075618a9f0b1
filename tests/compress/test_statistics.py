"""The statistics Algorithm 1 promises, checked over fixed seeds with tolerances from the theory.

For a vector a of m entries and k rows of signs s_t, a_hat = (1/k) sum_t (s_t.a) s_t. With
X_t = s_t s_t^T a - a (iid, mean 0) one derives for +-1 entries (E s^4 = 1):
  Cov(a_hat) = (a a^T + ||a||^2 I - 2 diag(a^2)) / k                                 (unbiased)
  E||a_hat - a||^2 = (m - 1) ||a||^2 / k
  Var(||a_hat - a||^2 / ||a||^2) = (2 (m - 2)^2 (1 - q) + 2 (k - 1)(m - 1)) / k^3,  q = sum a^4 / ||a||^4
    (||X_t||^2 = (m - 2)(s.a)^2 + ||a||^2, E(s.a)^4 = 3||a||^4 - 2 sum a^4, tr(Cov(X)^2) = (m - 1)||a||^4)
  Var(<a_hat - a, w>) = (<a, w>^2 + ||a||^2 ||w||^2 - 2 sum a^2 w^2) / k  (u^T(A_hat - A)v: w = vec(u v^T))
  P(|<a_hat - a, w>| > e ||a|| ||w||) <= 2 exp(-k e^2 / 16), 0 < e <= 1  (stabkern.compress.choose_k).
Means over T seeds are tested with normal (CLT) intervals at a family-wise false-alarm rate
ALPHA (Bonferroni over entries / rows); sample variances with the interval from their own
fourth moment; a single large draw with the normal approximation at 4 sigma.
"""

import functools
import math
from statistics import NormalDist

import torch

from stabkern.compress import C_BERNSTEIN
from stabkern.sketched import project_weight, reconstruct_weight

ALPHA = 1e-3


def z_two_sided(alpha: float) -> float:
    return NormalDist().inv_cdf(1 - alpha / 2)


def fixed_uv(rows: int, cols: int, data_seed: int):
    g = torch.Generator().manual_seed(1000 + data_seed)
    return torch.randn(rows, dtype=torch.float64, generator=g), torch.randn(cols, dtype=torch.float64, generator=g)


@functools.lru_cache(maxsize=None)
def draws(mode: str, shape: tuple, k: int, seeds: int, data_seed: int = 0, aligned: bool = False):
    """(A, A_hat for seeds 0..seeds-1 stacked): Algorithm 1 as the compressors run it, in float64.

    A is Gaussian, or with aligned=True the rank-one u v^T of `fixed_uv` (<a, w> = ||a|| ||w||).
    """
    if aligned:
        A = torch.outer(*fixed_uv(*shape, data_seed))
    else:
        A = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(data_seed))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # thousands of tiny sketches: one thread spares a parallel region per call
    try:
        out = torch.stack([reconstruct_weight(project_weight(A, k, mode=mode, seed=s, stream=5), shape, mode=mode,
                                              seed=s, stream=5) for s in range(seeds)])
    finally:
        torch.set_num_threads(threads)
    return A, out


def ratio_moments(a: torch.Tensor, k: int) -> tuple[float, float]:
    """(E, Var) of ||a_hat - a||^2 / ||a||^2 for one sketched vector a (module docstring)."""
    m = a.numel()
    q = float(a.pow(4).sum() / a.pow(2).sum() ** 2)
    return (m - 1) / k, (2 * (m - 2) ** 2 * (1 - q) + 2 * (k - 1) * (m - 1)) / k ** 3


def check_mean(samples: torch.Tensor, mean: torch.Tensor, var: torch.Tensor, alpha: float) -> None:
    """Mean over dim 0 within the normal interval of each entry (Bonferroni over entries)."""
    T = samples.shape[0]
    zscores = ((samples.mean(0) - mean) / (var / T).sqrt()).abs()
    bound = z_two_sided(alpha / zscores.numel())
    assert float(zscores.max()) <= bound, (float(zscores.max()), bound)


def check_variance(samples: torch.Tensor, var: float, alpha: float) -> None:
    """Sample variance of a 1-D sample within z * its standard error (from the sample's 4th moment)."""
    T = samples.numel()
    c = samples - samples.mean()
    s2 = float(c.pow(2).mean())
    se = math.sqrt(max(float(c.pow(4).mean()) - s2 * s2, 0.0) / T)
    assert abs(s2 - var) <= z_two_sided(alpha) * se, (s2, var, se)


def test_unbiased_tensor_mode():
    A, hats = draws("tensor", (5, 12), 16, 4000)
    a = A.reshape(-1)
    var = (a.pow(2).sum() - a.pow(2)) / 16  # diagonal of Cov(a_hat)
    check_mean(hats.reshape(len(hats), -1), a, var, ALPHA)


def test_unbiased_filter_mode():
    A, hats = draws("filter", (6, 10), 8, 3000)
    var = (A.pow(2).sum(1, keepdim=True) - A.pow(2)) / 8  # per row: (||a_o||^2 - a_oj^2) / k
    check_mean(hats.reshape(len(hats), -1), A.reshape(-1), var.reshape(-1), ALPHA)


def test_frobenius_error_tensor_mode_many_seeds():
    A, hats = draws("tensor", (5, 12), 16, 4000)
    r = (hats - A).pow(2).sum(dim=(1, 2)) / A.pow(2).sum()
    expect, var = ratio_moments(A, 16)
    assert expect == 59 / 16
    check_mean(r[:, None], torch.tensor([expect]), torch.tensor([var]), ALPHA / 2)
    check_variance(r, var, ALPHA / 2)


def test_frobenius_error_filter_mode_per_row():
    A, hats = draws("filter", (6, 10), 8, 3000)
    r = (hats - A).pow(2).sum(2) / A.pow(2).sum(1)  # (seeds, rows): each row at (m - 1) / k
    moments = [ratio_moments(A[o], 8) for o in range(6)]
    assert all(e == 9 / 8 for e, _ in moments)
    check_mean(r, torch.tensor([e for e, _ in moments]), torch.tensor([v for _, v in moments]), ALPHA / 2)
    for o in range(6):
        check_variance(r[:, o], moments[o][1], ALPHA / 12)


def test_frobenius_error_concentrates_on_a_vgg_sized_draw():
    # one draw of a 64 x 32 x 3 x 3 conv weight (n = 18,432), k = 2048: relative sd ~ sqrt(2/k + 2/n)
    A = torch.randn(64, 32, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    hat = reconstruct_weight(project_weight(A, 2048, mode="tensor", seed=77, stream=3), A.shape, mode="tensor",
                             seed=77, stream=3)
    r = float((hat - A).pow(2).sum() / A.pow(2).sum())
    expect, var = ratio_moments(A, 2048)
    assert abs(r - expect) <= 4 * math.sqrt(var), (r, expect, math.sqrt(var))


def _bilinear_errors(A, hats, u, v):
    return torch.einsum("i,sij,j->s", u, hats - A, v)


def _bilinear_var(b: torch.Tensor, w: torch.Tensor, k: int) -> float:
    return float(((b * w).sum() ** 2 + b.pow(2).sum() * w.pow(2).sum() - 2 * (b * b * w * w).sum()) / k)


def test_bilinear_error_scale_tensor_mode():
    A, hats = draws("tensor", (8, 16), 64, 3000, data_seed=2)
    u, v = fixed_uv(8, 16, 3)
    err = _bilinear_errors(A, hats, u, v)
    var = _bilinear_var(A.reshape(-1), torch.outer(u, v).reshape(-1), 64)
    nominal = float(A.norm() * u.norm() * v.norm()) / 8  # ||A||_F ||u|| ||v|| / sqrt(k)
    assert 0.8 < math.sqrt(var) / nominal < 1.2  # this instance: the exact sd is close to the nominal scale
    check_mean(err[:, None], torch.zeros(1), torch.tensor([var]), ALPHA / 2)
    check_variance(err, var, ALPHA / 2)


def test_bilinear_error_filter_mode_shares_signs_across_rows():
    # rows sketched against one S: u^T A_hat = (1/k) S^T S (A^T u), so the error is that of b = A^T u
    A, hats = draws("filter", (8, 16), 24, 3000, data_seed=4)
    u, v = fixed_uv(8, 16, 5)
    err = _bilinear_errors(A, hats, u, v)
    var = _bilinear_var(A.T @ u, v, 24)
    check_mean(err[:, None], torch.zeros(1), torch.tensor([var]), ALPHA / 2)
    check_variance(err, var, ALPHA / 2)


def test_failure_rate_within_eta_at_the_rule_k():
    eps, eta, seeds = 0.5, 0.1, 2000
    k = math.ceil(C_BERNSTEIN * math.log(2 / eta) / eps ** 2)
    assert k == 192
    u, v = fixed_uv(8, 16, 7)
    for aligned in (False, True):  # a Gaussian A, and A = u v^T (the heaviest tail)
        A, hats = draws("tensor", (8, 16), k, seeds, data_seed=7, aligned=aligned)
        err = _bilinear_errors(A, hats, u, v).abs()
        fails = float((err > eps * A.norm() * u.norm() * v.norm()).double().mean())
        assert fails <= eta + NormalDist().inv_cdf(1 - ALPHA) * math.sqrt(eta * (1 - eta) / seeds), fails
