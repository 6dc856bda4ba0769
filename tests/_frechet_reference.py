"""An implementation of the Frechet distance independent of torchmetrics, for tests to check it against."""

from __future__ import annotations

import numpy as np
import scipy.linalg


def scipy_fd(a, b) -> float:
    """Heusel et al. 2017 as pytorch-fid writes it, from two (N, D) feature sets:
    ||mu1 - mu2||^2 + tr(S1 + S2 - 2 sqrtm(S1 S2)), with np.cov's unbiased covariances."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    covmean = covmean.real if np.iscomplexobj(covmean) else covmean
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))
