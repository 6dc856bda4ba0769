"""Improved precision/recall (Kynkaanniemi et al. 2019, k = 3) on sets whose answer is known."""

from __future__ import annotations

import pytest
import torch

from distill.evaluation.metrics.precision_recall import knn_radii, precision_recall


def gauss(n, d=4, seed=0, shift=0.0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + shift


def test_identical_sets_score_one():
    x = gauss(500)
    assert precision_recall(x, x) == {"precision": 1.0, "recall": 1.0}


def test_same_distribution_scores_high():
    pr = precision_recall(gauss(1000, seed=0), gauss(1000, seed=1))
    assert pr["precision"] > 0.85 and pr["recall"] > 0.85


def test_disjoint_sets_score_zero():
    pr = precision_recall(gauss(400), gauss(400, seed=1, shift=50.0))
    assert pr == {"precision": 0.0, "recall": 0.0}


def test_mode_collapse_keeps_precision_loses_recall():
    real = gauss(1000)
    collapsed = gauss(1000, seed=2) * 0.05  # all generated points near the real mode's centre
    pr = precision_recall(real, collapsed)
    assert pr["precision"] > 0.95 and pr["recall"] < 0.2


def test_half_covered():
    real = torch.cat([gauss(500, seed=3), gauss(500, seed=4, shift=100.0)])
    fake = gauss(1000, seed=5)  # covers one of the two real modes
    pr = precision_recall(real, fake)
    assert pr["recall"] == pytest.approx(0.5, abs=0.08) and pr["precision"] > 0.85


def test_radii_are_kth_neighbour_distances():
    x = torch.tensor([[0.0], [1.0], [3.0], [7.0]], dtype=torch.float64)
    assert knn_radii(x, k=1).tolist() == [1.0, 1.0, 2.0, 4.0]
    assert knn_radii(x, k=3).tolist() == [7.0, 6.0, 4.0, 7.0]
    with pytest.raises(ValueError, match="k = 3"):
        knn_radii(x[:3], k=3)
