"""Curricula against their papers' formulas, and the pair samplers that use them."""

from __future__ import annotations

import math

import pytest
import torch

from distill.math.schedules import cd_grid, index_probabilities
from distill.methods import curriculum as C


@pytest.mark.parametrize("k", [0, 1, 1000, 123_457, 400_000, 799_999, 800_000])
def test_ct_curriculum_matches_cm_paper(k):
    K, s0, s1, mu0 = 800_000, 2, 150, 0.9  # CIFAR-10 CT (CM paper, appendix C)
    n = math.ceil(math.sqrt(k / K * ((s1 + 1) ** 2 - s0**2) + s0**2) - 1) + 1
    assert C.ct_N(k, K, s0, s1) == n
    assert C.ct_mu(n, s0, mu0) == pytest.approx(math.exp(s0 * math.log(mu0) / n))


def test_ct_curriculum_endpoints():
    assert C.ct_N(0, 100, 2, 150) == 2  # s0 levels at the start, where mu = mu0
    assert C.ct_N(100, 100, 2, 150) == 151  # s1 + 1 at the end
    assert C.ct_N(10_000, 100, 2, 150) == 151  # held after K
    assert C.ct_mu(C.ct_N(0, 100, 2, 150), 2, 0.9) == pytest.approx(0.9)
    assert C.ct_mu(151, 2, 0.9) > C.ct_mu(3, 2, 0.9)  # the target slows down as N grows


def test_ct_mu_stretch_keeps_the_target_lag_a_share_of_the_run():
    """stretch = K_ref / K multiplies ln(mu), so the lag -1/ln(mu) is the same share of a 4,500-step run as of
    the paper's 800k-step one; stretch 1 is the paper's formula."""
    paper, short = C.ct_mu(151, 2, 0.9), C.ct_mu(151, 2, 0.9, stretch=800_000 / 4500)
    assert C.ct_mu(151, 2, 0.9, stretch=1.0) == paper
    assert (-1 / math.log(short)) / 4500 == pytest.approx((-1 / math.log(paper)) / 800_000)
    assert 1 / (1 - paper) > 700 and 1 / (1 - short) < 5  # 717 steps of lag in the paper, ~4.5 in 4,500 steps


@pytest.mark.parametrize("k", [0, 49_999, 50_000, 99_999, 100_000, 250_000, 349_999, 350_000, 399_999])
def test_ict_curriculum_matches_ict_paper(k):
    K, s0, s1 = 400_000, 10, 1280  # iCT eq. 8
    k_prime = math.floor(K / (math.log2(math.floor(s1 / s0)) + 1))
    assert k_prime == 50_000
    assert C.ict_N(k, K, s0, s1) == min(s0 * 2 ** math.floor(k / k_prime), s1) + 1


def test_ict_doubles_from_10_to_1280():
    levels = [C.ict_N(k, 800, 10, 1280) for k in range(0, 800, 100)]
    assert levels == [11, 21, 41, 81, 161, 321, 641, 1281]


def test_ect_mapping_matches_its_formula_and_shrinks_the_gap():
    t = torch.tensor([0.01, 0.1, 1.0, 10.0, 80.0], dtype=torch.float64)
    for stage in range(4):
        expected = t * (1 - 2.0 ** -(stage + 1) * (1 + 8 * torch.sigmoid(-t)))
        assert torch.allclose(C.ect_r(t, stage), expected.clamp_min(0))
    gaps = [(t - C.ect_r(t, s))[-1].item() for s in range(4)]
    assert all(g1 == pytest.approx(g0 / 2) for g0, g1 in zip(gaps, gaps[1:]))  # q = 2: halves per stage
    assert C.ect_stage(24_999, 25_000) == 0 and C.ect_stage(25_000, 25_000) == 1


def test_lognormal_index_probabilities_sum_to_one_and_match_monte_carlo():
    p_mean, p_std = -1.1, 2.0
    grid = cd_grid(41, 0.002, 80.0)
    probs = index_probabilities(grid, "lognormal", p_mean, p_std)
    assert probs.shape == (40,)
    assert float(probs.sum()) == pytest.approx(1.0, abs=1e-12)
    # Monte Carlo: ln sigma ~ N(p_mean, p_std^2) kept inside the grid, binned into the grid's intervals.
    g = torch.Generator().manual_seed(0)
    draws = (p_mean + p_std * torch.randn(400_000, generator=g, dtype=torch.float64)).exp()
    draws = draws[(draws >= grid[0]) & (draws <= grid[-1])]
    bins = torch.bucketize(draws, grid[1:-1])
    freq = torch.bincount(bins, minlength=40).double() / draws.numel()
    se = (probs * (1 - probs) / draws.numel()).sqrt()
    assert bool(((freq - probs).abs() <= 5 * se + 1e-9).all())
    # The truncated lognormal sampler of ECT draws from the same law.
    t = C.truncated_lognormal(200_000, float(grid[0]), float(grid[-1]), p_mean, p_std, g)
    freq_t = torch.bincount(torch.bucketize(t, grid[1:-1]), minlength=40).double() / t.numel()
    assert bool(((freq_t - probs).abs() <= 5 * (probs * (1 - probs) / t.numel()).sqrt() + 1e-9).all())


def test_skip_pairs_are_skip_levels_apart():
    pairs = C.GridPairs(lambda k: 18, 0.002, 80.0, skip=3)
    grid, probs = pairs.grid(18)
    assert probs.shape == (15,)
    lo, hi = pairs.sample(0, 512, torch.Generator().manual_seed(0))
    idx_lo, idx_hi = torch.searchsorted(grid, lo), torch.searchsorted(grid, hi)
    assert bool((idx_hi - idx_lo == 3).all())
    with pytest.raises(ValueError, match="skip"):
        C.GridPairs(lambda k: 3, 0.002, 80.0, skip=3).sample(0, 4)


def test_grid_pairs_follow_the_curriculum_by_step():
    pairs = C.GridPairs(lambda k: C.ict_N(k, 800, 10, 1280), 0.002, 80.0, index_sampling="lognormal")
    g = torch.Generator().manual_seed(0)
    for k, n in ((0, 11), (700, 1281)):
        lo, hi = pairs.sample(k, 256, g)
        grid = cd_grid(n, 0.002, 80.0)
        assert bool(torch.isin(lo, grid).all() and torch.isin(hi, grid).all())
        assert bool((hi > lo).all())
