"""Frechet distances with torchmetrics' FrechetInceptionDistance over any feature module.

FD = ||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2)) between Gaussians fitted to two feature sets
(Heusel et al. 2017). torchmetrics keeps, for each side, float64 sums (n, sum f, sum f f^T) and adds them up
across processes inside compute(): under DDP every rank must call compute(), and every rank then gets the
statistics of all ranks' samples, whatever the split. The reference ("real") side is filled once and kept
across reset() (reset_real_features=False), so reset() clears the generated side only.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class GivenFeatures(nn.Module):
    """The identity, for features extracted beforehand (report.json reuses them for precision/recall)."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = int(num_features)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features.flatten(1).double()


def frechet_metric(feature: nn.Module, **metric_kwargs):
    """torchmetrics' FID whose feature space is `feature` (images -> (B, D) float64, with `num_features`).
    `metric_kwargs` go to torchmetrics' Metric (dist_sync_fn, distributed_available_fn, ...)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    return FrechetInceptionDistance(feature=feature, reset_real_features=False, **metric_kwargs)


def set_reference_stats(metric, mu, sigma, rank: int = 0) -> None:
    """Make (mu, sigma) (a statistics file's: EDM, ADM, clean-fid, ours) the metric's real side.

    torchmetrics stores sums, not (mu, sigma): these are the sums of n = 2 points with that mean and (unbiased)
    covariance, sum f = n mu and sum f f^T = (n - 1) sigma + n mu mu^T, from which compute() recovers (mu, sigma)
    exactly up to rounding. Only rank 0 holds them: compute() adds up every rank's sums.
    """
    mu = torch.as_tensor(np.asarray(mu, np.float64), device=metric.device)
    sigma = torch.as_tensor(np.asarray(sigma, np.float64), device=metric.device)
    n = 2 if rank == 0 else 0
    metric.real_features_sum = n * mu
    metric.real_features_cov_sum = (n - 1) * sigma + n * torch.outer(mu, mu) if n else torch.zeros_like(sigma)
    metric.real_features_num_samples = torch.tensor(n, device=metric.device)


def add(metric, x: torch.Tensor, real: bool, batch_size: int = 500) -> None:
    """Feed images (or features, for GivenFeatures) to one side of the metric, a batch at a time, on the
    metric's device. An empty `x` still makes one (empty) update: a rank with no share joins as zeros."""
    for i in range(0, max(x.shape[0], 1), batch_size):
        metric.update(x[i:i + batch_size].to(metric.device), real=real)


@torch.no_grad()
def distance(metric, fake: torch.Tensor, batch_size: int = 500) -> float:
    """FD of `fake` against the metric's reference side (collective under DDP: every rank calls it)."""
    metric.reset()
    add(metric, fake, real=False, batch_size=batch_size)
    return float(metric.compute())
