"""The consistency parameterisation: boundary condition exactly, and its scalings."""

import pytest
import torch

import teachers
from distill.config import resolve
from distill.math.precond import consistency_scalings
from distill.training.student import build_student


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_boundary_condition_is_exact(dtype):
    cfg = resolve(None, ["student.network.width=16"])
    teacher = teachers.load({"name": "digits"})
    student = build_student(cfg, teacher).to(dtype)
    # Make F nonzero everywhere so the identity cannot come from a zero-initialised output layer.
    with torch.no_grad():
        for p in student.net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(8, 1, 8, 8, dtype=dtype)
    assert student.feeding.F(student.net, x, torch.full((8,), 0.002, dtype=dtype)).abs().max() > 0
    out = student(x, student.sigma_min)
    assert torch.equal(out, x)
    assert not torch.equal(student(x, 0.01), x)


def test_scalings_match_cm_appendix_c():
    s = torch.tensor([0.002, 0.5, 80.0], dtype=torch.float64)
    c_skip, c_out = consistency_scalings(s, 0.002, 0.5)
    assert c_skip[0] == 1 and c_out[0] == 0
    expect_skip = 0.25 / ((s - 0.002) ** 2 + 0.25)
    expect_out = (s - 0.002) * 0.5 / (s**2 + 0.25).sqrt()
    assert torch.allclose(c_skip, expect_skip) and torch.allclose(c_out, expect_out)


def test_student_range_is_intersection():
    cfg = resolve(None, ["student.sigma_min=0.01", "student.sigma_max=200"])
    student = build_student(cfg, teachers.load({"name": "digits", "sigma_max": 80.0}))
    assert (student.sigma_min, student.sigma_max) == (0.01, 80.0)
