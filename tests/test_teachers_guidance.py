"""Classifier-free guidance: the exact combination of the conditional and unconditional denoisers."""

from __future__ import annotations

import pytest
import torch

import teachers
from teachers.analytic import GaussianMixtureTeacher
from teachers.base import Teacher
from teachers.guidance import GuidedCond, GuidedTeacher


def mixture():
    """Four 2-D components, two classes: D(x, s, c) and D(x, s, None) are both exact."""
    means = torch.tensor([[2.0, 0.0], [0.0, 2.0], [-2.0, 0.0], [0.0, -2.0]])
    return GaussianMixtureTeacher(means, sigma0=0.3, labels=torch.tensor([0, 0, 1, 1]), image_shape=(2,))


def test_scale_one_is_conditional_zero_is_unconditional_and_linear_between():
    inner = mixture()
    x, sigma, labels = torch.randn(5, 2, dtype=torch.float64) * 2, 1.3, torch.tensor([0, 1, 0, 1, 1])
    d_c, d_u = inner.denoise(x, sigma, labels), inner.denoise(x, sigma, None)
    assert torch.allclose(GuidedTeacher(inner, 1.0).denoise(x, sigma, labels), d_c)
    assert torch.allclose(GuidedTeacher(inner, 0.0).denoise(x, sigma, labels), d_u)
    assert torch.allclose(GuidedTeacher(inner, 3.0).denoise(x, sigma, labels), d_u + 3.0 * (d_c - d_u))


def test_per_example_scales_match_fixed_scales():
    inner = mixture()
    guided = GuidedTeacher(inner, (1.0, 4.0))
    labels = torch.tensor([0, 1, 1])
    cond = guided.sample_condition(labels, torch.Generator().manual_seed(0))
    assert isinstance(cond, GuidedCond) and ((cond.w >= 1) & (cond.w <= 4)).all()
    x = torch.randn(3, 2, dtype=torch.float64)
    out = guided.denoise(x, torch.tensor([0.5, 2.0, 9.0]), cond)
    for i in range(3):
        one = GuidedTeacher(inner, float(cond.w[i])).denoise(x[i:i + 1], [0.5, 2.0, 9.0][i], labels[i:i + 1])
        assert torch.allclose(out[i:i + 1], one)


class NullClassTeacher(Teacher):
    """A toy conditional denoiser whose class id 9 means "no class"."""

    def __init__(self):
        super().__init__(sigma_min=0.002, sigma_max=80, sigma_data=0.5, image_shape=(2,), num_classes=10)

    def _denoise(self, x, sigma, cond):
        return x / (1 + sigma[:, None] ** 2) + cond.to(x.dtype)[:, None]


def test_null_class_is_one_batched_pass():
    guided = GuidedTeacher(NullClassTeacher(), 2.0, null_class=9)
    x = torch.randn(2, 2)
    out = guided.denoise(x, 1.0, torch.tensor([3, 5]))
    d_c, d_u = x / 2 + torch.tensor([[3.0], [5.0]]), x / 2 + 9.0
    assert torch.allclose(out, d_u + 2.0 * (d_c - d_u))


def test_registered_as_a_teacher_and_keeps_the_backbone():
    t = teachers.load({"name": "guidance", "teacher": {"name": "edm", "num_classes": 4, "image_shape": [3, 8, 8]},
                       "scale": [1.0, 3.0], "smoke": True})
    assert t.scale_range == (1.0, 3.0) and t.num_classes == 4
    assert t.backbone is t.inner.backbone and t.feeding is t.inner.feeding  # a student can start from it
    out = t.denoise(torch.randn(2, 3, 8, 8), 4.0, torch.tensor([0, 3]))
    assert out.shape == (2, 3, 8, 8) and out.isfinite().all()


def test_unconditional_teacher_is_refused():
    with pytest.raises(ValueError, match="class-conditional"):
        GuidedTeacher(teachers.load({"name": "edm", "smoke": True, "image_shape": [3, 8, 8]}), 2.0)
