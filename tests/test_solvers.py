"""Solver steps against a high-accuracy ODE solution (the exact mixture teacher's PF-ODE)."""

import math

import torch

import teachers
from distill.math.schedules import karras_sigmas
from distill.math.solvers import euler_step, heun_step, reference_solution, teacher_sigmas


def solve(step, teacher, x, sigmas):
    for a, b in zip(sigmas[:-1], sigmas[1:]):
        x = step(teacher.denoise, x, float(a), float(b))
    return x


def errors(step, steps_list, sigma_max=5.0, sigma_min=0.2):
    # FACTS.md: Heun shows its order only when steps are small against the paths' curvature, so use
    # the toy2d ring with wide components (sigma_0 = 0.5) and a moderate range.
    teacher = teachers.load({"name": "toy2d", "sigma0": 0.5})
    x_t = torch.randn(256, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * sigma_max
    ref = reference_solution(teacher.denoise, x_t, sigma_max, sigma_min, rtol=1e-10, atol=1e-10)
    return [float((solve(step, teacher, x_t, karras_sigmas(n + 1, sigma_min, sigma_max)) - ref)
                  .pow(2).mean().sqrt()) for n in steps_list]


def observed_orders(errs):
    return [math.log2(a / b) for a, b in zip(errs[:-1], errs[1:])]


def test_heun_is_second_order():
    orders = observed_orders(errors(heun_step, [8, 16, 32, 64]))
    assert all(1.8 < p < 2.3 for p in orders[1:]), orders


def test_euler_is_first_order():
    orders = observed_orders(errors(euler_step, [16, 32, 64, 128]))
    assert all(0.85 < p < 1.2 for p in orders[1:]), orders


def test_reference_solution_agrees_with_many_heun_steps():
    teacher = teachers.load({"name": "toy2d", "sigma0": 0.5})
    x_t = torch.randn(64, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 80
    ref = reference_solution(teacher.denoise, x_t, 80.0, 0.002)
    heun = solve(heun_step, teacher, x_t, karras_sigmas(513, 0.002, 80.0))
    assert float((heun - ref).pow(2).mean().sqrt()) < 1e-4


def test_teacher_sigmas_nfe_contract():
    assert teacher_sigmas(1, 0.002, 80).tolist() == [80.0, 0.0]
    grid = teacher_sigmas(35, 0.002, 80)
    assert len(grid) == 19 and grid[0] == 80 and grid[-1] == 0 and math.isclose(float(grid[-2]), 0.002)
    for bad in (0, 2, 36):
        try:
            teacher_sigmas(bad, 0.002, 80)
        except ValueError:
            continue
        raise AssertionError(f"NFE {bad} should be refused")
