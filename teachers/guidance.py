"""Classifier-free guidance (Ho & Salimans 2022) around a class-conditional teacher, as a teacher itself.

    D_w(x, s, c) = D(x, s, none) + w (D(x, s, c) - D(x, s, none))

w = 1 is the conditional teacher, w = 0 the unconditional one (the `guidance_scale` convention of
diffusers). "none" is what the teacher was trained to read as no class: `cond=None` by default (EDM
nets turn it into the all-zero label vector that label dropout trained on), or a null class id.

`scale` is one float, or a range (lo, hi): then each example draws its own w (uniform) through
`sample_condition`, and the condition passed around is a `GuidedCond(labels, w)`, so the student can
be given w as an input (guided distillation, Meng et al. 2023). Usable as the distillation teacher:
`teacher: {name: guidance, teacher: {name: edm, path: F.pkl}, scale: 2.0}`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from teachers.base import Teacher, expand_like, sigma_per_sample
from teachers.registry import load, register


@dataclass
class GuidedCond:
    """Class labels (B,) and a guidance weight per example (B,)."""

    labels: torch.Tensor
    w: torch.Tensor

    def to(self, device):
        return GuidedCond(self.labels.to(device), self.w.to(device))


def cfg_combine(d_uncond: torch.Tensor, d_cond: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """D_w = D(none) + w (D(c) - D(none)), w (B,) per sample (also used by text teachers)."""
    return d_uncond + expand_like(w, d_cond) * (d_cond - d_uncond)


class GuidedTeacher(Teacher):
    def __init__(self, teacher, scale: float | tuple[float, float] = 1.0, null_class: int | None = None):
        super().__init__(sigma_min=teacher.sigma_min, sigma_max=teacher.sigma_max, sigma_data=teacher.sigma_data,
                         image_shape=teacher.image_shape, num_classes=getattr(teacher, "num_classes", 0))
        if not self.num_classes:
            raise ValueError("classifier-free guidance needs a class-conditional teacher (num_classes > 0)")
        self.inner = teacher
        self.scale_range = (float(scale), float(scale)) if isinstance(scale, int | float) else \
            (float(scale[0]), float(scale[1]))
        self.null_class = null_class
        # The inner teacher's network is the natural student initialisation; it is fed the same way.
        self.backbone = getattr(teacher, "backbone", None)
        self.feeding = getattr(teacher, "feeding", None)
        self.licence, self.file_sha256 = getattr(teacher, "licence", None), getattr(teacher, "file_sha256", None)

    def round_sigma(self, sigma):
        return self.inner.round_sigma(sigma)

    def sample_condition(self, labels: torch.Tensor, generator: torch.Generator | None = None) -> GuidedCond:
        """Labels plus a w per example drawn uniformly from the scale range."""
        lo, hi = self.scale_range
        u = torch.rand(labels.shape[0], generator=generator, device=labels.device if generator is None
                       else generator.device)
        return GuidedCond(labels, (lo + (hi - lo) * u).to(labels.device))

    def _split(self, cond, x: torch.Tensor):
        if isinstance(cond, GuidedCond):
            return cond.labels, cond.w.to(x.device, x.dtype)
        if cond is None:
            raise ValueError("guided teacher: pass class labels (or a GuidedCond) as cond")
        w = torch.full((x.shape[0],), self.scale_range[0], device=x.device, dtype=x.dtype)
        return torch.as_tensor(cond, device=x.device), w

    def _denoise(self, x: torch.Tensor, sigma: torch.Tensor, cond) -> torch.Tensor:
        labels, w = self._split(cond, x)
        b = x.shape[0]
        if self.null_class is None:  # two passes: the inner teacher's own "no class" is cond=None
            d_cond = self.inner.denoise(x, sigma, labels)
            d_uncond = self.inner.denoise(x, sigma, None)
        else:  # one batched pass of 2B
            both = torch.cat([labels.long(), torch.full_like(labels.long(), self.null_class)])
            d = self.inner.denoise(torch.cat([x, x]), sigma_per_sample(sigma, x).repeat(2), both)
            d_cond, d_uncond = d[:b], d[b:]
        return cfg_combine(d_uncond, d_cond, w)


@register("guidance")
def load_guided(teacher: dict, scale: float | list[float] = 1.0, null_class: int | None = None,
                smoke: bool = False) -> GuidedTeacher:
    """`teacher` is the inner teacher's own block (any registered name or target)."""
    inner = load({**teacher, "smoke": True} if smoke else teacher)
    scale = float(scale) if isinstance(scale, int | float) else tuple(float(v) for v in scale)  # list/ListConfig
    return GuidedTeacher(inner, scale, null_class)
