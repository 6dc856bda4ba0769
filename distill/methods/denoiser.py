"""Denoiser regression (EDM, Karras et al. 2022, sec. 5): the warm start of a student whose teacher has no
network to copy (`student.denoiser_steps` or `student.denoiser_fraction`).

The CM paper initialises the consistency model from the pretrained diffusion model's weights; a student of an
analytic teacher (or of any teacher without a backbone) has none. The warm start trains the student's own
network F as the teacher's denoiser first, D_F = c_skip x + c_out F (EDM Table 1, the same F the consistency
parameterisation uses), so that distillation starts where it would with a copied backbone. The regression
target is the teacher's D(x, sigma) itself, not x0: the same minimiser as EDM's loss (D is the posterior mean
of x0), without the variance of a single x0 draw.
"""

from __future__ import annotations

import torch

# EDM's lognormal training distribution of sigma (Table 1, "Training": P_mean = -1.2, P_std = 1.2).
P_MEAN, P_STD = -1.2, 1.2


def edm_sigmas(batch: int, sigma_min: float, sigma_max: float, generator: torch.Generator | None = None,
               device=None, dtype=torch.float32) -> torch.Tensor:
    """ln(sigma) ~ N(P_mean, P_std^2), clamped to the student's range: (B,)."""
    ln = P_MEAN + P_STD * torch.randn(batch, generator=generator, device=device, dtype=torch.float64)
    return ln.exp().clamp(sigma_min, sigma_max).to(dtype)


def edm_weight(sigma: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """lambda(sigma) = (sigma^2 + sd^2) / (sigma sd)^2 (EDM eq. 8 with Table 1's weighting): unit loss scale at
    every sigma for the F-parameterised network."""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def denoiser_loss(prediction: torch.Tensor, target: torch.Tensor, sigma: torch.Tensor,
                  sigma_data: float) -> torch.Tensor:
    """lambda(sigma) ||D_F(x, sigma) - D(x, sigma)||^2 per sample (mean over pixels): (B,)."""
    return edm_weight(sigma, sigma_data) * (prediction - target).flatten(1).pow(2).mean(1)
