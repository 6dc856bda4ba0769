"""Solver steps and samplers for the probability-flow ODE dx/dsigma = (x - D(x, sigma)) / sigma.

Free functions over a denoiser `D(x, sigma, cond) -> x0_hat` (EDM eq. 3-4 in sigma units, t = sigma).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from distill.math.schedules import karras_sigmas
from teachers.base import expand_like, sigma_per_sample

DenoiseFn = Callable[..., torch.Tensor]


def ode_derivative(denoise: DenoiseFn, x: torch.Tensor, sigma: torch.Tensor, cond=None) -> torch.Tensor:
    """dx/dsigma at (x, sigma); sigma (B,)."""
    return (x - denoise(x, sigma, cond)) / expand_like(sigma, x)


def euler_step(denoise: DenoiseFn, x, sigma_cur, sigma_next, cond=None) -> torch.Tensor:
    """One Euler step from sigma_cur to sigma_next (either float or (B,))."""
    s_cur, s_next = sigma_per_sample(sigma_cur, x), sigma_per_sample(sigma_next, x)
    return x + expand_like(s_next - s_cur, x) * ode_derivative(denoise, x, s_cur, cond)


def heun_step(denoise: DenoiseFn, x, sigma_cur, sigma_next, cond=None) -> torch.Tensor:
    """EDM Alg. 1, lines 5-8: an Euler step, then the trapezoidal correction (skipped at sigma_next = 0)."""
    s_cur, s_next = sigma_per_sample(sigma_cur, x), sigma_per_sample(sigma_next, x)
    h = expand_like(s_next - s_cur, x)
    d_cur = ode_derivative(denoise, x, s_cur, cond)
    x_euler = x + h * d_cur
    # A float sigma_next (the sampler's) is checked on the host; a tensor only where that is free (CPU):
    # reading a GPU tensor back would stall every CD step, whose sigma_next is never 0.
    if not torch.is_tensor(sigma_next) and sigma_next == 0 or \
            torch.is_tensor(sigma_next) and s_next.device.type == "cpu" and bool((s_next == 0).all()):
        return x_euler
    # Apply the 2nd order correction; rows that end at sigma 0 keep the Euler step, chosen on the device.
    d_next = ode_derivative(denoise, x_euler, s_next, cond)
    return torch.where(expand_like(s_next == 0, x), x_euler, x + h * (d_cur + d_next) / 2)


def teacher_sigmas(nfe: int, sigma_min: float, sigma_max: float, rho: float = 7.0,
                   round_sigma: Callable = lambda s: s) -> torch.Tensor:
    """EDM sampler's grid for an odd NFE: (NFE + 1) / 2 Karras levels, then 0.

    NFE 1 is one Euler step over {sigma_max, 0} (DESIGN.md, report.json).
    """
    if nfe < 1 or nfe % 2 == 0:
        raise ValueError(f"the EDM Heun sampler uses an odd NFE (2 * steps - 1); got {nfe}")
    steps = (nfe + 1) // 2
    grid = torch.tensor([sigma_max], dtype=torch.float64) if steps == 1 else \
        karras_sigmas(steps, sigma_min, sigma_max, rho)
    grid = torch.as_tensor(round_sigma(grid), dtype=torch.float64)
    return torch.cat([grid, torch.zeros(1, dtype=torch.float64)])


@torch.no_grad()
def edm_sampler(denoise: DenoiseFn, noise: torch.Tensor, sigmas: torch.Tensor, cond=None, *,
                s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = float("inf"),
                s_noise: float = 1.0, generator: torch.Generator | None = None,
                round_sigma: Callable = lambda s: s) -> torch.Tensor:
    """EDM Alg. 2: Heun with optional stochastic churn. `noise` is unit Gaussian; `sigmas` ends in 0.

    With s_churn = 0 (default) it is the deterministic sampler (EDM Alg. 1).
    """
    steps = len(sigmas) - 1
    x = noise.to(torch.float64) * float(sigmas[0])
    for i in range(steps):
        s_cur, s_next = float(sigmas[i]), float(sigmas[i + 1])
        gamma = min(s_churn / steps, 2**0.5 - 1) if s_tmin <= s_cur <= s_tmax else 0.0
        s_hat = float(round_sigma(torch.tensor(s_cur * (1 + gamma), dtype=torch.float64)))
        if s_hat > s_cur:  # Increase noise temporarily.
            eps = torch.randn(x.shape, generator=generator, dtype=x.dtype, device="cpu").to(x.device)
            x = x + (s_hat**2 - s_cur**2) ** 0.5 * s_noise * eps
        x = heun_step(denoise, x, s_hat, s_next, cond)
    return x


@torch.no_grad()
def reference_solution(denoise: DenoiseFn, x_start: torch.Tensor, sigma_start: float, sigma_end: float,
                       cond=None, *, rtol: float = 1e-8, atol: float = 1e-8, method: str = "dopri5",
                       chunk: int = 256) -> torch.Tensor:
    """The PF-ODE solved from sigma_start to sigma_end to tight tolerance (torchdiffeq), in float64.

    Integrated in u = ln(sigma), where dx/du = x - D(x, e^u): the trajectories are far straighter
    there, so an adaptive solver needs many fewer steps for the same error. Stops at sigma_end > 0.
    torchdiffeq shares one step size across a batch, so the batch is solved in chunks.
    """
    from torchdiffeq import odeint

    x_start = x_start.to(torch.float64)
    u = torch.tensor([float(sigma_start), float(sigma_end)], dtype=torch.float64).log()
    outs = []
    for i in range(0, x_start.shape[0], chunk):
        xc = x_start[i:i + chunk]
        cc = None if cond is None else cond[i:i + chunk]

        def f(t, x, cc=cc):
            return x - denoise(x, t.exp().expand(x.shape[0]), cc)

        outs.append(odeint(f, xc, u.to(xc.device), rtol=rtol, atol=atol, method=method)[-1])
    return torch.cat(outs)
