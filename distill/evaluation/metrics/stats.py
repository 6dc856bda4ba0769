"""Running feature statistics as float64 sums, so several processes can add theirs up exactly.

Each rank accumulates n, sum(f) and sum(f f^T) over its own samples; one all-reduce of those sums gives
every rank the statistics of all samples (as torchmetrics' FID does, FACTS.md). In float64 the result
equals the single-process one up to rounding (~1e-12 relative), whatever the split.
"""

from __future__ import annotations

import numpy as np
import torch


class FeatureStats:
    def __init__(self, dim: int | None = None):
        self.n = 0
        self.sum: torch.Tensor | None = None
        self.outer: torch.Tensor | None = None
        if dim is not None:
            self._init(dim, torch.device("cpu"))

    def _init(self, dim: int, device) -> None:
        self.sum = torch.zeros(dim, dtype=torch.float64, device=device)
        self.outer = torch.zeros(dim, dim, dtype=torch.float64, device=device)

    @torch.no_grad()
    def update(self, features: torch.Tensor) -> None:
        f = features.detach().flatten(1).to(torch.float64)
        if self.sum is None:
            self._init(f.shape[1], f.device)
        f = f.to(self.sum.device)
        self.n += f.shape[0]
        self.sum += f.sum(0)
        self.outer += f.T @ f

    def all_reduce(self, reduce_sum) -> None:
        """`reduce_sum(tensor) -> tensor` sums over processes (Lightning: `strategy.reduce(t, "sum")`)."""
        packed = torch.cat([torch.tensor([float(self.n)], dtype=torch.float64, device=self.sum.device),
                            self.sum, self.outer.flatten()])
        packed = reduce_sum(packed)
        d = self.sum.shape[0]
        self.n = int(round(float(packed[0])))
        self.sum, self.outer = packed[1:1 + d].clone(), packed[1 + d:].reshape(d, d).clone()

    def mu_sigma(self) -> tuple[np.ndarray, np.ndarray]:
        """(mu, sigma) in float64 numpy, sigma with the unbiased (n - 1) normalisation (as np.cov)."""
        if self.n < 2:
            raise ValueError(f"need at least 2 samples for a covariance, have {self.n}")
        mu = self.sum / self.n
        sigma = (self.outer - self.n * torch.outer(mu, mu)) / (self.n - 1)
        return mu.cpu().numpy(), sigma.cpu().numpy()
