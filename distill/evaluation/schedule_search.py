"""Few-step schedule search: the intermediate sigmas of 2- and 3-step consistency sampling that minimise FID.

Multistep consistency sampling (CM paper, Alg. 1) re-noises the 1-step output to an intermediate sigma and
denoises again; which sigma works best depends on the trained student (the paper hand-tunes it per data
set, e.g. by a greedy search over the grid). Here it is found by search on a small sample budget:
- 2 steps: a coarse log-spaced scan of the intermediate sigma, then golden-section refinement (Kiefer
  1953) inside the bracket around the best scan point, in u = ln(sigma);
- 3 steps: coordinate descent on (sigma_1, sigma_2), starting from the 2-step optimum, each coordinate
  again scanned and refined in log sigma, sigma_max > sigma_1 > sigma_2.
Every candidate is scored on the same noises (common random numbers), so differences between candidates
are not hidden by sampling noise, and each distinct schedule is evaluated once (memoised).
A student trained on a grid (`method.pairs: grid`) is only searched at its training levels, as OpenAI's code
searches integer indices of the training grid: every level for 2 steps, then coordinate descent over levels.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

GOLDEN = (math.sqrt(5) - 1) / 2


def golden_section(f: Callable[[float], float], lo: float, hi: float, iters: int) -> tuple[float, float]:
    """argmin of a unimodal f on [lo, hi] by golden-section search: (x, f(x)), iters + 2 evaluations."""
    a, b = lo, hi
    c, d = b - GOLDEN * (b - a), a + GOLDEN * (b - a)
    fc, fd = f(c), f(d)
    for _ in range(iters):
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - GOLDEN * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + GOLDEN * (b - a)
            fd = f(d)
    return (c, fc) if fc <= fd else (d, fd)


def scan_then_refine(f: Callable[[float], float], lo: float, hi: float, points: int,
                     iters: int) -> tuple[float, float]:
    """A scan of `points` evenly spaced values, then golden section between the best one's neighbours:
    FID against sigma need not be unimodal over the whole range, but is near its minimum."""
    grid = np.linspace(lo, hi, points)
    vals = [f(float(u)) for u in grid]
    i = int(np.argmin(vals))
    x, fx = golden_section(f, float(grid[max(i - 1, 0)]), float(grid[min(i + 1, points - 1)]), iters)
    return (x, fx) if fx <= vals[i] else (float(grid[i]), vals[i])


def fid_objective(student, metric, num: int, seed: int = 0, batch_size: int = 500):
    """schedule (list of sigmas, first = sigma_max) -> FID of `num` student samples (fixed seeds), by
    `metric` (distill.evaluation.metrics.fid: torchmetrics' FID, its reference side already set)."""
    from distill.evaluation.metrics.fid import distance
    from distill.sampling import sample

    cache: dict[tuple, float] = {}

    def f(sigmas) -> float:
        key = tuple(round(float(s), 6) for s in sigmas)
        if key not in cache:
            x = sample(student, num, list(key), seed=seed, batch_size=batch_size)
            cache[key] = distance(metric, x, batch_size)
        return cache[key]

    f.cache = cache
    return f


@torch.no_grad()
def search_sigmas(student, objective, *, lo: float | None = None, hi: float | None = None, points: int = 7,
                  iters: int = 8, rounds: int = 2, three_step: bool = True,
                  current: dict | None = None) -> dict:
    """{"2": [smax, s], "3": [smax, s1, s2], "fid": {"1", "2", "3"}, "evaluations": n} (see module doc).

    `current` (student.json's sampling_sigmas) are candidates too: the search never returns a schedule
    that scores worse than the one it replaces on the same noises.
    """
    from distill.sampling import training_levels

    smax = student.sigma_max
    lo = lo if lo is not None else max(5 * student.sigma_min, 0.01)
    hi = hi if hi is not None else 0.999 * smax  # at sigma_max, step 2 would forget step 1 entirely
    levels = training_levels(student)
    if levels:
        out = search_levels(objective, smax, [s for s in levels if lo <= s <= hi], rounds, three_step)
        return _keep_current(out, objective, current)
    ln_lo, ln_hi = math.log(lo), math.log(hi)
    u2, f2 = scan_then_refine(lambda u: objective([smax, math.exp(u)]), ln_lo, ln_hi, points, iters)
    out = {"2": [smax, math.exp(u2)], "fid": {"1": objective([smax]), "2": f2}}
    if three_step:
        # Coordinate descent; sigma_1 starts at the 2-step optimum, sigma_2 halfway below it in log sigma.
        u1, u_2 = u2, (u2 + ln_lo) / 2
        margin = 0.05  # keep sigma_1 and sigma_2 apart: equal sigmas waste a step
        f3 = objective([smax, math.exp(u1), math.exp(u_2)])
        for _ in range(rounds):
            if u1 - margin > ln_lo:  # a move is kept only when it improves: descent never goes uphill
                u, fu = scan_then_refine(lambda u, u1=u1: objective([smax, math.exp(u1), math.exp(u)]),
                                         ln_lo, u1 - margin, points, iters)
                u_2, f3 = (u, fu) if fu < f3 else (u_2, f3)
            if u_2 + margin < ln_hi:
                u, fu = scan_then_refine(lambda u, u_2=u_2: objective([smax, math.exp(u), math.exp(u_2)]),
                                         u_2 + margin, ln_hi, points, iters)
                u1, f3 = (u, fu) if fu < f3 else (u1, f3)
        out["3"] = [smax, math.exp(u1), math.exp(u_2)]
        out["fid"]["3"] = f3
    return _keep_current(out, objective, current)


def search_levels(objective, smax: float, levels: list[float], rounds: int = 2, three_step: bool = True) -> dict:
    """The search over a grid-trained student's levels (decreasing): exhaustive for 2 steps, coordinate descent
    over pairs of levels (sigma_1 > sigma_2) for 3 steps, each move kept only when it improves."""
    if not levels:
        raise ValueError("no training level lies inside the search range")
    f2 = {s: objective([smax, s]) for s in levels}
    s2 = min(f2, key=f2.get)
    out = {"2": [smax, s2], "fid": {"1": objective([smax]), "2": f2[s2]}}
    if three_step and len(levels) > 1:
        s1 = s2 if s2 != levels[-1] else levels[-2]
        below = [s for s in levels if s < s1]
        s_2 = min(below, key=lambda s: objective([smax, s1, s]))
        f3 = objective([smax, s1, s_2])
        for _ in range(rounds):
            for s in (v for v in levels if v > s_2):
                if objective([smax, s, s_2]) < f3:
                    s1, f3 = s, objective([smax, s, s_2])
            for s in (v for v in levels if v < s1):
                if objective([smax, s1, s]) < f3:
                    s_2, f3 = s, objective([smax, s1, s])
        out["3"], out["fid"]["3"] = [smax, s1, s_2], f3
    return out


def _keep_current(out: dict, objective, current: dict | None) -> dict:
    """Never return a schedule that scores worse than the one it replaces on the same noises."""
    for k, sig in (current or {}).items():
        if k in out and len(sig) == len(out[k]) and objective(list(sig)) < out["fid"][k]:
            out[k], out["fid"][k] = [float(s) for s in sig], objective(list(sig))
    out["evaluations"] = len(getattr(objective, "cache", {})) or None
    return out
