"""The Frechet distance between two Gaussians fitted to features, in float64.

FD = ||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2)) (Heusel et al. 2017). The trace of the
matrix square root is computed from the eigenvalues of S1^(1/2) S2 S1^(1/2), which is symmetric
positive semi-definite, so no complex parts or sqrtm iterations are involved.
"""

from __future__ import annotations

import numpy as np
import torch


def gaussian_stats(features) -> tuple[np.ndarray, np.ndarray]:
    """(N, D) features -> (mu, sigma) in float64, sigma with the unbiased (N - 1) normalisation."""
    f = features.detach().cpu().double().numpy() if isinstance(features, torch.Tensor) else \
        np.asarray(features, dtype=np.float64)
    f = f.reshape(f.shape[0], -1)
    return f.mean(0), np.cov(f, rowvar=False)


def _psd_sqrt(m: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((m + m.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    root1 = _psd_sqrt(s1)
    eig = np.linalg.eigvalsh(root1 @ s2 @ root1)
    tr_covmean = np.sqrt(np.clip(eig, 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)
