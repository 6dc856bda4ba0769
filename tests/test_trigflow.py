"""TrigFlow as a view of the one EDM coordinate: the teacher's TrigFlow velocity integrates to the EDM ODE's
solution, the student's TrigFlow parameterisation meets f(x, 0) = x exactly and equals cos t x_t - sin t sd F,
a student copied from a teacher equals the teacher's denoiser, and student.json rebuilds it ("trigflow"; old
files without the key stay "cm")."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

import teachers
from distill.math.precond import ConsistencyStudent
from distill.math.solvers import reference_solution
from distill.math.trigflow import (
    TrigFlowFeeding,
    data_velocity,
    sigma_of_t,
    t_of_sigma,
    teacher_velocity,
    trigflow_F,
)
from teachers.base import expand_like
from teachers.networks import build_network

SD = 0.5


def test_teacher_velocity_integrates_to_the_edm_ode_solution():
    """RK4 on dx_t/dt = (cos t x_t - D(x_t / cos t, sd tan t)) / sin t from sigma 5 to 0.3, mapped back to
    x_sigma = x_t / cos t, equals the EDM PF-ODE solved to 1e-10 (dopri5 in ln sigma)."""
    teacher = teachers.load({"name": "toy2d", "sigma0": 0.5})
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 5.0
    ref = reference_solution(teacher.denoise, x, 5.0, 0.3, rtol=1e-10, atol=1e-10)
    t0, t1 = float(t_of_sigma(torch.tensor(5.0), SD)), float(t_of_sigma(torch.tensor(0.3), SD))
    v = lambda x_t, t: teacher_velocity(teacher.denoise, x_t, torch.full((x_t.shape[0],), t, dtype=x_t.dtype), SD)
    x_t, steps = math.cos(t0) * x, 400
    h = (t1 - t0) / steps
    for i in range(steps):
        t = t0 + i * h
        k1 = v(x_t, t)
        k2 = v(x_t + h / 2 * k1, t + h / 2)
        k3 = v(x_t + h / 2 * k2, t + h / 2)
        k4 = v(x_t + h * k3, t + h)
        x_t = x_t + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    assert (x_t / math.cos(t1) - ref).abs().max() < 1e-6


def test_coordinates_and_data_velocity():
    sigma = torch.tensor([0.002, 0.5, 80.0], dtype=torch.float64)
    assert torch.allclose(sigma_of_t(t_of_sigma(sigma, SD), SD), sigma, rtol=1e-12)
    x0, z = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    t, eps = torch.tensor([0.1, 0.8, 1.5], dtype=torch.float64), 1e-6
    x_t = lambda s: expand_like(s.cos(), x0) * x0 + expand_like(s.sin(), z) * z
    assert torch.allclose(data_velocity(x0, z, t), (x_t(t + eps) - x_t(t - eps)) / (2 * eps), atol=1e-8)


def fresh_student(feeding=None) -> ConsistencyStudent:
    torch.manual_seed(0)
    net = build_network("small_unet", in_channels=1, width=8, channel_mult=[1, 2])
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return ConsistencyStudent(net, feeding or TrigFlowFeeding(SD), sigma_min=0.002, sigma_max=80.0,
                              sigma_data=SD, image_shape=(1, 8, 8), parameterisation="trigflow").eval()


@torch.no_grad()
def test_student_is_cos_x_minus_sin_sd_F_with_an_exact_boundary():
    student = fresh_student()
    x = torch.randn(4, 1, 8, 8)
    assert torch.equal(student(x, 0.0), x)  # f(x, 0) = x, bit for bit
    sigma = torch.tensor([0.01, 0.3, 2.0, 80.0])
    t = t_of_sigma(sigma, SD)
    x_t = expand_like(t.cos(), x) * x
    expected = expand_like(t.cos(), x) * x_t - expand_like(t.sin(), x) * SD * student.net(x_t / SD, t)
    assert torch.allclose(student(x, sigma), expected, atol=1e-6)
    assert torch.allclose(trigflow_F(student, x_t, t), student.net(x_t / SD, t), atol=1e-6)


@torch.no_grad()
def test_a_copied_teacher_backbone_is_the_teachers_denoiser():
    """sCD starts from the teacher (sCM Alg. 1): with the teacher's feeding, f = D at every sigma."""
    teacher = teachers.load({"name": "edm", "smoke": True})
    student = ConsistencyStudent(copy.deepcopy(teacher.backbone), teacher.feeding, sigma_min=teacher.sigma_min,
                                 sigma_max=teacher.sigma_max, sigma_data=teacher.sigma_data,
                                 image_shape=teacher.image_shape, parameterisation="trigflow").eval()
    x = torch.randn(2, *teacher.image_shape) * 3
    for sigma in (0.01, 1.0, 20.0):
        d = teacher.denoise(x, sigma)
        assert ((student(x, sigma) - d).abs().max() / d.abs().max()) < 1e-5
    # Its TrigFlow F is -EDM's F, through the same feeding.
    t = t_of_sigma(torch.full((2,), 1.0), SD)
    x_t = expand_like(t.cos(), x) * x
    f = expand_like(t.cos(), x) * x_t - expand_like(t.sin(), x) * SD * trigflow_F(student, x_t, t)
    assert torch.allclose(f, student(x, 1.0), atol=1e-5)


def test_student_json_records_and_rebuilds_the_parameterisation(tmp_path):
    from distill.config import resolve
    from distill.export import StudentLoadError, load_student, rebuild_student
    from distill.training.fit import fit

    run = tmp_path / "run"
    fit(resolve("recipes/toy2d.yaml", ["method.name=sct", "trainer.max_steps=3", f"run.dir={run}",
                                       "trainer.enable_progress_bar=false", "eval.fid=false"]))
    meta = json.loads((run / "student.json").read_text())
    assert meta["parameterisation"] == "trigflow" and meta["feeding"]["name"] == "trigflow"
    student = load_student(run)
    assert student.parameterisation == "trigflow"
    x = torch.randn(5, 2)
    with torch.no_grad():
        assert torch.equal(student(x, 0.0), x)
    old = {k: v for k, v in meta.items() if k != "parameterisation"}
    old["feeding"] = {"name": "edm", "sigma_data": SD}
    assert rebuild_student(old).parameterisation == "cm"  # written before sCM: every student was "cm"
    with pytest.raises(StudentLoadError, match="parameterisation 'nope'"):
        rebuild_student(dict(meta, parameterisation="nope"))
