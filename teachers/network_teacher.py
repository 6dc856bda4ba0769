"""A teacher that is a network plus the feeding that turns it into a denoiser (EDM, OpenAI, DDPM families)."""

from __future__ import annotations

import torch
from torch import nn

from teachers.base import BackboneFeeding, Teacher


class NetworkTeacher(Teacher):
    """D = feeding.denoise(backbone, x, sigma, cond), frozen, evaluated in the network's own dtype.

    Callers may ask in float64 (CD targets are computed so, FACTS.md); the network runs in the dtype of
    its weights and `Teacher.denoise` hands the result back in x's dtype.
    """

    def __init__(self, net: nn.Module, feeding: BackboneFeeding, **kwargs):
        super().__init__(**kwargs)
        self.backbone = net.eval().requires_grad_(False)
        self.feeding = feeding

    def _denoise(self, x: torch.Tensor, sigma: torch.Tensor, cond) -> torch.Tensor:
        param = next(self.backbone.parameters(), None)
        dtype = param.dtype if param is not None and param.is_floating_point() else x.dtype
        return self.feeding.denoise(self.backbone, x.to(dtype), sigma.to(dtype), cond)
