"""Target solvers converge to the exact ODE step at their order (toy2d: sigma_0 = 0.5, see FACTS.md)."""

from __future__ import annotations

import math

import pytest
import torch

import teachers
from distill.math.solvers import heun_step, reference_solution
from distill.methods.targets import DataStep, TeacherStep, cd_target, ct_target, substep_sigmas

SIGMA = 2.0  # where the step starts: mid-trajectory, where the paths still bend


@pytest.fixture(scope="module")
def setup():
    teacher = teachers.load({"name": "toy2d"})
    g = torch.Generator().manual_seed(0)
    x = teacher.sample(16, g).double() + SIGMA * torch.randn(16, 2, generator=g, dtype=torch.float64)
    return teacher, x


_EXACT = {}


def exact_step(teacher, x, h):
    if h not in _EXACT:  # dopri5 to 1e-10: far below the smallest solver error measured here (~4e-6)
        _EXACT[h] = reference_solution(teacher.denoise, x, SIGMA, SIGMA - h, rtol=1e-10, atol=1e-10)
    return _EXACT[h]


def step_error(teacher, x, solver, h, steps=1):
    s_next = torch.full((x.shape[0],), SIGMA, dtype=torch.float64)
    exact = exact_step(teacher, x, h)
    got = cd_target(teacher.denoise, x, s_next, s_next - h, solver=solver, steps=steps)
    return float((got - exact).pow(2).mean().sqrt())


def observed_orders(errors):
    """log2 of successive error ratios when the step (or 1/k) halves."""
    return [math.log2(a / b) for a, b in zip(errors, errors[1:])]


def test_euler_target_is_first_order(setup):
    teacher, x = setup
    errors = [step_error(teacher, x, "euler", h) for h in (0.4, 0.2, 0.1, 0.05)]
    # One step's (local) error of a p-th order method is O(h^(p+1)): Euler h^2.
    assert all(1.8 < p < 2.3 for p in observed_orders(errors)), errors


def test_heun_target_is_second_order(setup):
    teacher, x = setup
    errors = [step_error(teacher, x, "heun", h) for h in (0.4, 0.2, 0.1, 0.05)]
    assert all(2.8 < p < 3.4 for p in observed_orders(errors)), errors  # Heun: h^3
    assert errors[-1] < step_error(teacher, x, "euler", 0.05) / 10


def test_k_heun_steps_per_target_converge_like_k_squared(setup):
    teacher, x = setup
    errors = [step_error(teacher, x, "heun", 0.8, steps=k) for k in (1, 2, 4, 8)]
    # k steps of h/k: k (h/k)^3 = h^3 / k^2.
    assert all(1.8 < p < 2.4 for p in observed_orders(errors)), errors


def test_k_steps_are_karras_spaced_solver_steps(setup):
    teacher, x = setup
    s_next = torch.full((16,), 3.0, dtype=torch.float64)
    s_cur = torch.full((16,), 1.0, dtype=torch.float64)
    levels = substep_sigmas(s_next, s_cur, 3, rho=7.0)
    assert torch.allclose(levels[0], s_next) and torch.allclose(levels[-1], s_cur)
    y = x
    for a, b in zip(levels[:-1], levels[1:]):
        y = heun_step(teacher.denoise, y, a, b)
    assert torch.allclose(cd_target(teacher.denoise, x, s_next, s_cur, steps=3), y)


def test_ct_target_uses_the_same_noise_direction():
    x0, z = torch.randn(4, 3), torch.randn(4, 3)
    s = torch.tensor([0.1, 1.0, 2.0, 5.0])
    assert torch.allclose(ct_target(x0, z, s), x0 + s[:, None] * z)
    assert torch.allclose(DataStep()(x0, z, None, None, s), x0 + s[:, None] * z)


def test_teacher_step_runs_the_named_solver(setup):
    teacher, x = setup
    s_next = torch.full((16,), 2.0, dtype=torch.float64)
    s_cur = s_next - 0.5
    calls = []

    def counting(xx, ss, cond=None):
        calls.append(1)
        return teacher.denoise(xx, ss, cond)

    for solver, steps, evals in (("euler", 1, 1), ("heun", 1, 2), ("heun", 3, 6)):
        calls.clear()
        TeacherStep(counting, solver, steps)(None, None, x, s_next, s_cur)
        assert len(calls) == evals, (solver, steps)
