"""Noise-level grids and how training picks a pair of adjacent levels from them."""

from __future__ import annotations

import torch


def karras_sigmas(n: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0,
                  dtype=torch.float64) -> torch.Tensor:
    """EDM eq. 5: n levels from sigma_max down to sigma_min, evenly spaced in sigma^(1/rho).

    Returned in decreasing order (sampling order); `sigmas[-1] == sigma_min`.
    """
    if n < 2:
        raise ValueError(f"a Karras grid needs at least 2 levels, got {n}")
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return ((hi + ramp * (lo - hi)) ** rho).to(dtype)


def cd_grid(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """The CD discretisation t_1 = sigma_min < ... < t_N = sigma_max (CM paper, Alg. 2), increasing."""
    return karras_sigmas(n, sigma_min, sigma_max, rho).flip(0)


def uniform_indices(batch: int, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """n ~ U{0, ..., N-2} in 0-based indexing: the pair (t_n, t_{n+1}) of CM paper Alg. 2."""
    return torch.randint(0, n - 1, (batch,), generator=generator)


def index_probabilities(grid: torch.Tensor, kind: str = "uniform", p_mean: float = -1.1,
                        p_std: float = 2.0, skip: int = 1) -> torch.Tensor:
    """Probabilities of n over the pairs (t_n, t_{n+skip}) of an increasing grid (skip = 1: adjacent).

    `lognormal` is iCT's (Song & Dhariwal 2023, sec. 3.5): p(n) is the mass of ln(sigma) ~ N(p_mean, p_std^2)
    between t_n and t_{n+skip}, normalised (with skip = 1, exactly iCT's erf differences).
    """
    m = grid.numel() - skip
    if m < 1:
        raise ValueError(f"a grid of {grid.numel()} levels has no pairs {skip} intervals apart")
    if kind == "uniform":
        return torch.full((m,), 1.0 / m, dtype=torch.float64)
    if kind == "lognormal":
        normal = torch.distributions.Normal(torch.tensor(p_mean, dtype=torch.float64),
                                            torch.tensor(p_std, dtype=torch.float64))
        cdf = normal.cdf(grid.double().log())
        p = cdf[skip:] - cdf[:-skip]
        return p / p.sum()
    raise ValueError(f"unknown index sampling {kind!r}; choose uniform or lognormal")


def sample_indices(probs: torch.Tensor, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
    return torch.multinomial(probs, batch, replacement=True, generator=generator)
