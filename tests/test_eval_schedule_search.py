"""Few-step schedule search on objectives whose minimum is known (no network needed)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from distill.evaluation.schedule_search import golden_section, scan_then_refine, search_sigmas


def test_golden_section_finds_a_unimodal_minimum():
    calls = []
    x, fx = golden_section(lambda u: calls.append(u) or (u - 1.3) ** 2, -4.0, 5.0, iters=30)
    assert x == pytest.approx(1.3, abs=1e-5) and fx < 1e-9
    assert len(calls) == 32  # two to start, one per iteration: the golden ratio reuses a point


def test_scan_then_refine_escapes_a_local_minimum():
    # local minimum near 0.2, global one at 3.0
    f = lambda u: min((u - 0.2) ** 2 + 0.5, 3 * (u - 3.0) ** 2)
    x, fx = scan_then_refine(f, -1.0, 4.0, points=9, iters=25)
    assert x == pytest.approx(3.0, abs=1e-4) and fx < 1e-7


def memo(f):
    cache = {}

    def g(sigmas):
        key = tuple(round(s, 6) for s in sigmas)
        cache.setdefault(key, f(sigmas))
        return cache[key]

    g.cache = cache
    return g


def test_search_sigmas_recovers_known_optimum():
    student = SimpleNamespace(sigma_min=0.002, sigma_max=80.0)

    def fake_fid(sigmas):  # 2 steps: best at 5.0; 3 steps: best at (12, 0.7)
        if len(sigmas) == 1:
            return 10.0
        if len(sigmas) == 2:
            return 1 + math.log(sigmas[1] / 5.0) ** 2
        return 0.5 + math.log(sigmas[1] / 12) ** 2 + 2 * math.log(sigmas[2] / 0.7) ** 2

    objective = memo(fake_fid)
    found = search_sigmas(student, objective, iters=20, rounds=3)
    assert found["2"][0] == 80.0 and found["2"][1] == pytest.approx(5.0, rel=1e-3)
    assert found["3"][1] == pytest.approx(12, rel=1e-2) and found["3"][2] == pytest.approx(0.7, rel=1e-2)
    assert found["fid"]["2"] == pytest.approx(1.0, abs=1e-6) and found["fid"]["1"] == 10.0
    assert found["evaluations"] == len(objective.cache)


def test_search_never_returns_worse_than_the_current_schedule():
    student = SimpleNamespace(sigma_min=0.002, sigma_max=80.0)
    spike = lambda s: 0.0 if abs(s[-1] - 2.0) < 1e-9 else 1.0 + 0.01 * abs(math.log(s[-1]))  # a needle at 2.0
    found = search_sigmas(student, memo(spike), three_step=False, current={"2": [80.0, 2.0]})
    assert found["2"] == [80.0, 2.0] and found["fid"]["2"] == 0.0
