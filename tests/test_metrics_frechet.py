"""Frechet distances through torchmetrics (distill/evaluation/metrics/fid.py): equal to the textbook formula
with scipy's sqrtm, with features given or computed by the digits/pixel modules as `feature=`; statistics
from a file give the same number as the points they came from; ~0 for a set against itself; a shift adds
||delta||^2; the ranks' sums (torchmetrics' sync) equal the one-process statistics whatever the split."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from _frechet_reference import scipy_fd

from distill.evaluation.metrics.fid import GivenFeatures, add, distance, frechet_metric, set_reference_stats


def given(real: torch.Tensor):
    metric = frechet_metric(GivenFeatures(real.shape[1]))
    add(metric, real, real=True)
    return metric


def gauss(n, d, seed, scale=1.0, shift=0.0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale + shift


@pytest.mark.parametrize("d", [1, 5, 64])
def test_matches_scipy_sqrtm_formula(d):
    real, fake = gauss(500, d, 0), gauss(400, d, 1, scale=1.3, shift=0.2)
    assert distance(given(real), fake) == pytest.approx(scipy_fd(fake, real), rel=1e-8, abs=1e-9)


def test_digits_and_pixel_modules_as_feature_match_scipy(distill_cache):
    """The feature modules run inside torchmetrics (`feature=`) on images; the same number as scipy's formula
    on the features taken outside it."""
    from distill.evaluation.metrics.extractors import build_extractor
    from teachers.analytic import load_digits_array

    x = torch.from_numpy(load_digits_array()[0]).float()
    real, fake = x[::2][:400], (x[1::2][:300] + 0.3 * torch.randn(300, 1, 8, 8, generator=torch.Generator()
                                                                    .manual_seed(0))).clamp(-1, 1)
    for name in ("digits", "pixel"):
        ext = build_extractor(name, (1, 8, 8))
        metric = frechet_metric(ext.module)
        add(metric, real, real=True, batch_size=128)
        got = distance(metric, fake, batch_size=128)
        assert got == pytest.approx(scipy_fd(ext(fake), ext(real)), rel=1e-7), name
        assert isinstance(got, float) and got > 0.1


def test_reference_statistics_give_the_same_distance():
    """(mu, sigma) as a file holds them stand in for the points they were computed from."""
    real, fake = gauss(300, 12, 2, scale=2.0, shift=1.0), gauss(200, 12, 3)
    r = real.numpy()
    from_stats = frechet_metric(GivenFeatures(12))
    set_reference_stats(from_stats, r.mean(0), np.cov(r, rowvar=False))
    assert distance(from_stats, fake) == pytest.approx(distance(given(real), fake), rel=1e-10)
    assert distance(from_stats, fake) == pytest.approx(distance(from_stats, fake), rel=0)  # reset keeps the ref


def test_self_is_zero_and_shift_is_monotone():
    x = gauss(2000, 8, 0)
    metric = given(x)
    fds = [distance(metric, x + shift) for shift in (0.0, 0.1, 0.3, 1.0, 3.0)]
    assert fds[0] == pytest.approx(0, abs=1e-9)
    assert all(b > a for a, b in zip(fds, fds[1:], strict=False))
    assert fds[-1] == pytest.approx(8 * 3.0**2, rel=1e-9)  # a pure shift adds ||delta mu||^2 exactly


class ThreadGather:
    """all_gather between ranks running in threads: what Lightning's strategy does across processes."""

    def __init__(self, world: int):
        self.world, self.slots, self.barrier = world, [None] * world, threading.Barrier(world)

    def sync_kwargs(self, rank: int) -> dict:
        def gather(t, group=None):
            self.slots[rank] = t.clone()
            self.barrier.wait()
            out = list(self.slots)
            self.barrier.wait()
            return out

        return {"dist_sync_fn": gather, "distributed_available_fn": lambda: True}


def run_ranks(world: int, job):
    comm, results = ThreadGather(world), [None] * world
    threads = [threading.Thread(target=lambda r=r: results.__setitem__(r, job(r, comm.sync_kwargs(r))))
               for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return results


def test_ranks_sums_equal_one_process_for_any_split():
    """Uneven shares (one rank empty), the reference side on one rank only: every rank gets the same FD as
    one process, and as scipy."""
    real, fake = gauss(301, 12, 1, scale=3.0, shift=1.0), gauss(97, 12, 4)
    r = real.numpy()
    one = distance(given(real), fake)
    assert one == pytest.approx(scipy_fd(fake, real), rel=1e-8)
    c = [0, 120, 120, 301]  # rank 1 holds no reference points

    def job(rank, sync):
        metric = frechet_metric(GivenFeatures(12), **sync)
        add(metric, real[c[rank]:c[rank + 1]], real=True)
        with_stats = frechet_metric(GivenFeatures(12), **sync)
        set_reference_stats(with_stats, r.mean(0), np.cov(r, rowvar=False), rank)
        share = fake[rank * 97 // 3:(rank + 1) * 97 // 3]
        return distance(metric, share), distance(with_stats, share)

    for a, b in run_ranks(3, job):
        assert a == pytest.approx(one, rel=1e-9) and b == pytest.approx(one, rel=1e-9)
