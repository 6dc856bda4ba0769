"""Frechet distance: equal to the textbook formula with scipy's sqrtm, ~0 for a set against itself, growing
with a shift; running float64 sums (the DDP path) equal the one-shot statistics whatever the split."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from distill.evaluation.metrics.frechet import frechet_distance, gaussian_stats
from distill.evaluation.metrics.stats import FeatureStats


def scipy_fd(mu1, s1, mu2, s2) -> float:
    """Heusel et al. 2017 as pytorch-fid writes it: ||mu1 - mu2||^2 + tr(S1 + S2 - 2 sqrtm(S1 S2))."""
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    covmean = covmean.real if np.iscomplexobj(covmean) else covmean
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def random_cov(rng, d):
    a = rng.standard_normal((d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


@pytest.mark.parametrize("d", [1, 5, 64])
def test_matches_scipy_sqrtm_formula(d):
    rng = np.random.default_rng(d)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    s1, s2 = random_cov(rng, d), random_cov(rng, d)
    ours, ref = frechet_distance(mu1, s1, mu2, s2), scipy_fd(mu1, s1, mu2, s2)
    assert ours == pytest.approx(ref, rel=1e-8, abs=1e-9)


def test_matches_scipy_on_sample_statistics():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((500, 16)), rng.standard_normal((400, 16)) * 1.3 + 0.2
    (m1, s1), (m2, s2) = gaussian_stats(a), gaussian_stats(b)
    assert np.allclose(s1, np.cov(a, rowvar=False)) and np.allclose(m1, a.mean(0))
    assert frechet_distance(m1, s1, m2, s2) == pytest.approx(scipy_fd(m1, s1, m2, s2), rel=1e-8)


def test_self_is_zero_and_shift_is_monotone():
    x = torch.randn(2000, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    mu, s = gaussian_stats(x)
    assert abs(frechet_distance(mu, s, mu, s)) < 1e-9
    fds = [frechet_distance(*gaussian_stats(x + shift), mu, s) for shift in (0.0, 0.1, 0.3, 1.0, 3.0)]
    assert fds[0] == pytest.approx(0, abs=1e-9)
    assert all(b > a for a, b in zip(fds, fds[1:], strict=False))
    assert fds[-1] == pytest.approx(8 * 3.0**2, rel=1e-9)  # a pure shift adds ||delta mu||^2 exactly


def packed(stats: FeatureStats) -> torch.Tensor:
    return torch.cat([torch.tensor([float(stats.n)], dtype=torch.float64), stats.sum, stats.outer.flatten()])


def test_running_sums_equal_one_shot_stats_for_any_split():
    x = torch.randn(301, 12, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 3 + 1
    mu, s = gaussian_stats(x)
    whole = FeatureStats()
    whole.update(x)
    # Two "ranks" with uneven shares, the second fed in two batches; the all-reduce adds the other's sums.
    rank0, rank1 = FeatureStats(), FeatureStats()
    rank0.update(x[:120])
    rank1.update(x[120:200])
    rank1.update(x[200:])
    other = packed(rank1)
    rank0.all_reduce(lambda t: t + other)
    for stats in (whole, rank0):
        m, c = stats.mu_sigma()
        assert stats.n == 301
        np.testing.assert_allclose(m, mu, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(c, s, rtol=1e-10, atol=1e-10)
