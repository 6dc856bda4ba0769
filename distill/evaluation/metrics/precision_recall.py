"""Improved precision and recall (Kynkaanniemi et al. 2019, "Improved Precision and Recall Metric for
Assessing Generative Models"), as the consistency-models paper reports them.

Each set's manifold is the union of balls around its points, each ball reaching the point's k-th nearest
neighbour within the set (k = 3, as in the paper). Precision: the fraction of generated points that fall
inside the real manifold (fidelity). Recall: the fraction of real points inside the generated manifold
(coverage). Distances in the feature space, in float64, a block of rows at a time.
"""

from __future__ import annotations

import torch


def _as64(x) -> torch.Tensor:
    return torch.as_tensor(x).detach().flatten(1).to(torch.float64)


def knn_radii(x: torch.Tensor, k: int = 3, block: int = 1024) -> torch.Tensor:
    """Distance from each point to its k-th nearest other point of the same set; (N,)."""
    if x.shape[0] <= k:
        raise ValueError(f"need more than k = {k} points for k-NN radii, have {x.shape[0]}")
    out = []
    for i in range(0, x.shape[0], block):
        d = torch.cdist(x[i:i + block], x)
        out.append(d.kthvalue(k + 1, dim=1).values)  # the (k+1)-th smallest: the point itself is at 0
    return torch.cat(out)


def coverage(manifold: torch.Tensor, radii: torch.Tensor, queries: torch.Tensor, block: int = 1024) -> float:
    """Fraction of `queries` within radius_j of some manifold point j."""
    inside = []
    for i in range(0, queries.shape[0], block):
        d = torch.cdist(queries[i:i + block], manifold)
        inside.append((d <= radii[None, :]).any(1))
    return float(torch.cat(inside).double().mean())


def precision_recall(real, fake, k: int = 3) -> dict[str, float]:
    """{"precision", "recall"} of generated features `fake` against real features `real` ((N, D) each)."""
    real, fake = _as64(real), _as64(fake)
    return {"precision": coverage(real, knn_radii(real, k), fake),
            "recall": coverage(fake, knn_radii(fake, k), real)}
