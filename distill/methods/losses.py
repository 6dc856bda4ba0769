"""Per-sample distances d(a, b) and the weighting lambda(sigma); the training step does the mean.

Each distance returns one value per sample (shape (B,)), so weighting and reduction stay in one
visible place (the training step).
"""

from __future__ import annotations

import math

import torch


def l2(a: torch.Tensor, b: torch.Tensor, **_) -> torch.Tensor:
    """Mean squared error per sample (CM paper's l2 metric, up to the constant dimension factor)."""
    return (a - b).flatten(1).pow(2).mean(1)


def l1(a: torch.Tensor, b: torch.Tensor, **_) -> torch.Tensor:
    return (a - b).flatten(1).abs().mean(1)


def pseudo_huber_c(dim: int) -> float:
    """iCT's default constant, sec. 3.3: c = 0.00054 sqrt(d) for d-dimensional samples."""
    return 0.00054 * math.sqrt(dim)


def pseudo_huber(a: torch.Tensor, b: torch.Tensor, c: float | None = None, **_) -> torch.Tensor:
    """iCT (Song & Dhariwal 2023, sec. 3.3): sqrt(||a - b||^2 + c^2) - c on the per-sample norm.

    Not elementwise: the norm is over the whole sample, so the loss grows like ||a - b|| for large errors and
    like ||a - b||^2 / 2c for small ones. c = 0 gives the plain L2 norm (ECT's default, `-c 0`).
    """
    diff = (a - b).flatten(1)
    if c is None:
        c = pseudo_huber_c(diff.shape[1])
    return (diff.pow(2).sum(1) + c * c).sqrt() - c


def pseudo_huber_elementwise(a: torch.Tensor, b: torch.Tensor, c: float | None = None, **_) -> torch.Tensor:
    """sqrt((a - b)^2 + c^2) - c per element, averaged over the sample: the "huber" loss of diffusers' LCM
    scripts (c = 0.001 there). Unlike iCT's, nearly L1 per element once |a - b| >> c."""
    c = 0.001 if c is None else c
    return ((a - b).flatten(1).pow(2) + c * c).sqrt().mean(1) - c


DISTANCES = {"l2": l2, "l1": l1, "pseudo_huber": pseudo_huber, "pseudo_huber_elementwise": pseudo_huber_elementwise}


def build_distance(loss_cfg, smoke: bool = False):
    """d(a, b) -> (B,) as the loss block names it. LPIPS is a network: built here, held by the caller."""
    if loss_cfg.name == "lpips":
        from distill.methods.lpips import LPIPS

        return LPIPS.from_config(loss_cfg, smoke=smoke)
    fn = DISTANCES[loss_cfg.name]
    return lambda a, b: fn(a, b, c=loss_cfg.c)


def weighting(kind: str, sigma_next: torch.Tensor, sigma_cur: torch.Tensor,
              sigma_data: float = 0.5) -> torch.Tensor:
    """lambda for the pair (t_n = sigma_cur, t_{n+1} = sigma_next).

    uniform: 1 (CM paper). snr: 1/sigma^2 at t_n. karras: EDM's (s^2 + sd^2) / (s sd)^2 at t_n.
    inverse_delta: 1 / (t_{n+1} - t_n) (iCT, sec. 3.3; ECT's 1/(t - r)).
    """
    if kind == "uniform":
        return torch.ones_like(sigma_cur)
    if kind == "snr":
        return sigma_cur.pow(-2)
    if kind == "karras":
        return (sigma_cur**2 + sigma_data**2) / (sigma_cur * sigma_data) ** 2
    if kind == "inverse_delta":
        return 1.0 / (sigma_next - sigma_cur)
    raise ValueError(f"unknown loss weighting {kind!r}; choose uniform, snr, karras or inverse_delta")
