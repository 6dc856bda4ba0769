"""Improved precision/recall (Kynkaanniemi et al. 2019, k = 3; torch-fidelity's, through
distill.evaluation.evaluate.precision_recall) on sets whose answer is known."""

from __future__ import annotations

import pytest
import torch

from distill.evaluation.evaluate import precision_recall


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


def test_balls_reach_the_kth_neighbour_by_hand():
    """1-d sets small enough to count by hand. Real {0, 1, 3, 7} with k = 1: radii 1, 1, 2, 4 (the nearest
    other point), so its manifold is [-1, 5] U [3, 11]; fake {2, 6, 12, 20}: 2 and 6 fall inside (distance
    <= radius counts), 12 and 20 do not -> precision 1/2. Fake radii (k = 1): 4, 4, 6, 8; real points inside a
    fake ball: 0 (2 +- 4), 1, 3, 7 -> recall 1."""
    real = torch.tensor([[0.0], [1.0], [3.0], [7.0]], dtype=torch.float64)
    fake = torch.tensor([[2.0], [6.0], [12.0], [20.0]], dtype=torch.float64)
    assert precision_recall(real, fake, k=1) == {"precision": 0.5, "recall": 1.0}
    # k = 3: real radii 7, 6, 4, 7 (the third nearest other point); the ball of 7 reaches [0, 14]: 12 is
    # inside now, 20 is not -> 3/4.
    assert precision_recall(real, fake, k=3)["precision"] == 0.75


def test_repeated_points_still_make_a_manifold():
    """Exact samples of a finite data set repeat its points once they outnumber it. Each set's manifold is built
    from its distinct points: a point repeated k times would be its own k-th neighbour, at distance 0, and add no
    ball, so precision against 1,200 draws of 300 points would be near 0 for samples of the same distribution."""
    real = gauss(300, seed=6).repeat(4, 1)
    fake = gauss(1000, seed=7)
    pr = precision_recall(real, fake)
    assert pr["precision"] > 0.8 and pr["recall"] > 0.8
    # The same on the other side: a generator that repeats its samples keeps its recall.
    assert precision_recall(gauss(1000, seed=8), gauss(300, seed=9).repeat(4, 1))["recall"] > 0.8
    # A set with at most k distinct points keeps its repeats: its manifold is the points themselves.
    point = torch.zeros(10, 4, dtype=torch.float64)
    assert precision_recall(point, point) == {"precision": 1.0, "recall": 1.0}
