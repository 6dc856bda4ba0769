"""The student's parameterisation: f(x, s) = c_skip(s) x + c_out(s) F(x, s), with a boundary where f(x, s) = x.

"cm" (Song et al. 2023, Consistency Models, appendix C): c_skip = sd^2 / ((s - s_min)^2 + sd^2) and
c_out = (s - s_min) sd / sqrt(s^2 + sd^2). At s = s_min, c_skip = 1 and c_out = 0 exactly, so the
boundary condition holds by construction, in any float type.
"trigflow" (Lu & Song 2024, sCM): f(x_t, t) = cos(t) x_t - sin(t) sd F(x_t / sd, c_noise(t)) with x_t = cos(t) x and
sigma = sd tan(t), i.e. c_skip = cos^2 t, c_out = sd sin t on x (distill/math/trigflow.py); boundary at sigma = 0.

F is EDM's F-parameterisation of the backbone, fed exactly as the teacher feeds it
(`teachers.base.BackboneFeeding`), so a student copied from the teacher's backbone starts equal to
the teacher's denoiser (except near s_min for "cm"; everywhere for "trigflow") (DESIGN.md, "The student").

A `boundary` object replaces these scalings with another family's (LCM's scalings on the discrete timestep,
distill/methods/lcm.py); it also says how multistep sampling scales the noise (`noise_scales`).
"""

from __future__ import annotations

import torch
from torch import nn

from distill.math.trigflow import trigflow_scalings
from teachers.base import BackboneFeeding, expand_like, sigma_per_sample


def consistency_scalings(sigma: torch.Tensor, sigma_min: float, sigma_data: float):
    c_skip = sigma_data**2 / ((sigma - sigma_min) ** 2 + sigma_data**2)
    c_out = (sigma - sigma_min) * sigma_data / (sigma**2 + sigma_data**2).sqrt()
    return c_skip, c_out


# student.json's "parameterisation" -> (sigma, sigma_min, sigma_data) -> (c_skip, c_out). Files without the key: "cm".
PARAMETERISATIONS = {"cm": consistency_scalings, "trigflow": trigflow_scalings}


class ConsistencyStudent(nn.Module):
    """f_theta(x, sigma, cond). `net` is the trained network; `feeding` says how it is fed."""

    def __init__(self, net: nn.Module, feeding: BackboneFeeding, *, sigma_min: float, sigma_max: float,
                 sigma_data: float, image_shape: tuple[int, ...], num_classes: int = 0,
                 parameterisation: str = "cm", boundary=None):
        super().__init__()
        if parameterisation not in PARAMETERISATIONS:
            raise ValueError(f"unknown student parameterisation {parameterisation!r}; "
                             f"known: {', '.join(PARAMETERISATIONS)}")
        self.boundary = boundary
        self.net = net
        self.feeding = feeding
        self.parameterisation = parameterisation
        self.sigma_min = float(sigma_min)
        self.sigma_max = float(sigma_max)
        self.sigma_data = float(sigma_data)
        self.image_shape = tuple(image_shape)
        self.num_classes = int(num_classes)

    def forward(self, x: torch.Tensor, sigma, cond: torch.Tensor | None = None) -> torch.Tensor:
        sigma = sigma_per_sample(sigma, x)
        if self.boundary is not None:
            return self.boundary(self, x, sigma, cond)
        c_skip, c_out = PARAMETERISATIONS[self.parameterisation](sigma, self.sigma_min, self.sigma_data)
        F = self.feeding.F(self.net, x, sigma, cond).to(x.dtype)
        return expand_like(c_skip, x) * x + expand_like(c_out, x) * F

    def noise_scales(self, sigmas) -> list[float]:
        """Noise multipliers of multistep sampling (CM Alg. 1): sigma_0, then sqrt(s^2 - s_min^2)."""
        if self.boundary is not None:
            return self.boundary.noise_scales(sigmas)
        return [float(sigmas[0])] + [(float(s) ** 2 - self.sigma_min**2) ** 0.5 for s in sigmas[1:]]
