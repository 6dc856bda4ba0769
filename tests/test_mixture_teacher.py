"""The exact Gaussian-mixture teacher against Monte-Carlo posterior means."""

import math

import pytest
import torch

import teachers
from teachers.analytic import GaussianMixtureTeacher


def mc_posterior_mean(teacher: GaussianMixtureTeacher, x: torch.Tensor, sigma: float, n: int, seed: int):
    """E[x0 | x] by self-normalised importance sampling over exact prior samples x0 ~ p."""
    x0 = teacher.sample(n, torch.Generator().manual_seed(seed)).double().flatten(1)  # (n, d)
    xf = x.double().flatten(1)
    logw = -((xf[:, None, :] - x0[None]) ** 2).sum(-1) / (2 * sigma**2)  # (B, n)
    w = (logw - logw.logsumexp(1, keepdim=True)).exp()
    return (w @ x0).reshape(x.shape)


@pytest.mark.parametrize("sigma", [0.3, 1.0, 3.0])
def test_toy2d_denoiser_matches_monte_carlo(sigma):
    teacher = teachers.load({"name": "toy2d", "sigma0": 0.5})
    g = torch.Generator().manual_seed(1)
    x = teacher.sample(16, g).double() + sigma * torch.randn(16, 2, generator=g, dtype=torch.float64)
    exact = teacher.denoise(x, sigma)
    mc = mc_posterior_mean(teacher, x, sigma, n=400_000, seed=2)
    # MC standard error is ~ posterior std / sqrt(effective samples); 0.02 is several standard errors here.
    assert (exact - mc).abs().max() < 0.02


def test_digits_denoiser_is_posterior_mean_over_the_data_set():
    """sigma_0 = 0: D is the softmax-weighted mean of the digits themselves (the ideal denoiser)."""
    teacher = teachers.load({"name": "digits"})
    means = teacher.means  # (K, 64) float64
    x = means[:8] + 0.7 * torch.randn(8, 64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    logits = -((x[:, None] - means[None]) ** 2).sum(-1) / (2 * 0.7**2)
    brute = torch.softmax(logits, 1) @ means
    out = teacher.denoise(x.reshape(8, 1, 8, 8), 0.7).reshape(8, 64)
    assert torch.allclose(out, brute, atol=1e-10)


def test_denoiser_limits_and_dtype():
    teacher = teachers.load({"name": "toy2d", "sigma0": 0.5})
    x = torch.randn(4, 2)
    # Huge sigma: the posterior mean is the prior mean (0 for a ring centred at the origin).
    assert teacher.denoise(x * 1e3, 1e3).abs().max() < 0.05
    assert teacher.denoise(x, 1.0).dtype == torch.float32
    assert teacher.denoise(x, torch.full((4,), 1.0)).shape == x.shape


def test_conditional_digits_stay_in_class():
    teacher = teachers.load({"name": "digits", "conditional": True})
    assert teacher.num_classes == 10
    cond = torch.arange(10)
    x = teacher.sample(10, torch.Generator().manual_seed(0), cond=cond)
    out = teacher.denoise(x + 0.01 * torch.randn_like(x), 0.01, cond)
    # With tiny noise the denoiser snaps to the nearest digit of the requested class.
    labels = teacher.labels
    nearest = ((out.double().flatten(1)[:, None] - teacher.means[None]) ** 2).sum(-1).argmin(1)
    assert torch.equal(labels[nearest], cond)


def test_sigma_data_of_toy2d_is_the_data_std():
    teacher = teachers.load({"name": "toy2d", "sigma0": 0.5, "radius": 2.0})
    # Ring of radius r: per-coordinate variance r^2 / 2, plus the component variance.
    assert math.isclose(teacher.sigma_data, math.sqrt(2.0**2 / 2 + 0.25), rel_tol=1e-9)
