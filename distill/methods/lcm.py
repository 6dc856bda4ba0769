"""Latent consistency models (Luo et al. 2023): the student parameterisation diffusers' LCMScheduler samples.

`method.name: lcm` (distill/methods/plan.py) is CD with three LCM choices:
- pairs on the teacher's own timesteps, k apart (the skipping-step target, sec. 4.3): t_{n+k} uniform over
  the T/k timesteps k i - 1 (i = 1..T/k), t_n = t_{n+k} - k clamped at 0 (`TimestepPairs`,
  distill/methods/curriculum.py; k = method.skip = 20 gives diffusers' 50 DDIM timesteps of 1000);
- the teacher's guided ODE (teachers/diffusers_latent.py) solved by DDIM, which in sigma units is one Euler
  step of the guided denoiser (method.solver ddim, an alias of euler), or by Heun;
- this module's boundary scalings, which act on the discrete timestep t = t(sigma), not on sigma:

      f(x, s) = c_skip(t) x_vp + c_out(t) x0_hat(x, s),   x_vp = x / sqrt(1 + s^2),
      c_skip = sd^2 / ((10 t)^2 + sd^2),   c_out = 10 t / sqrt((10 t)^2 + sd^2),   sd = 0.5,

  exactly `LCMScheduler.step` (its `get_scalings_for_boundary_condition_discrete`, timestep_scaling 10,
  applied to the VP sample), so an exported student samples in stock diffusers. The boundary holds at t = 0:
  f = x_vp, the identity in the VP coordinate. Multistep sampling re-noises as LCMScheduler does
  (x_vp = sqrt(abar) x0 + sqrt(1 - abar) z, i.e. x0 + s z in sigma units) and starts from x_vp = z at the
  last timestep, i.e. x = sqrt(1 + s_max^2) z (`noise_scales`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from teachers.base import expand_like

SIGMA_DATA = 0.5  # fixed in LCMScheduler


def lcm_scalings(t: torch.Tensor, timestep_scaling: float = 10.0) -> tuple[torch.Tensor, torch.Tensor]:
    s = timestep_scaling * t
    return SIGMA_DATA**2 / (s**2 + SIGMA_DATA**2), s / (s**2 + SIGMA_DATA**2).sqrt()


def lcm_timesteps(steps: int, num_train_timesteps: int = 1000, original_steps: int = 50) -> list[int]:
    """LCMScheduler.set_timesteps(steps): `steps` evenly spaced indices into the reversed skipping-step
    schedule k i - 1 (k = T / original_steps, i = 1..original_steps)."""
    if not 1 <= steps <= original_steps:
        raise ValueError(f"an LCM samples in 1..{original_steps} steps (original_inference_steps), got {steps}")
    k = num_train_timesteps // original_steps
    schedule = (np.arange(1, original_steps + 1) * k - 1)[::-1]
    index = np.floor(np.linspace(0, original_steps, num=steps, endpoint=False)).astype(np.int64)
    return [int(t) for t in schedule[index]]


class LCMBoundary:
    """The student's forward and sampling noise for LCM students (see the module docstring)."""

    name = "lcm"

    def __init__(self, timestep_scaling: float = 10.0, original_inference_steps: int = 50):
        self.timestep_scaling = float(timestep_scaling)
        self.original_inference_steps = int(original_inference_steps)

    def __call__(self, student, x: torch.Tensor, sigma: torch.Tensor, cond=None) -> torch.Tensor:
        feeding = student.feeding  # a VPFeeding: the discrete table gives t(sigma) and x0_hat
        c_skip, c_out = lcm_scalings(feeding.timestep(sigma), self.timestep_scaling)
        x0 = feeding.x0(student.net, x, sigma, cond)
        s = expand_like(sigma, x)
        return expand_like(c_skip.to(x.dtype), x) * x / (1 + s**2).sqrt() + expand_like(c_out.to(x.dtype), x) * x0

    def noise_scales(self, sigmas) -> list[float]:
        """The noise multiplier before each student evaluation: the start x_vp = z, then x0 + s z."""
        return [float(np.sqrt(1 + sigmas[0] ** 2))] + [float(s) for s in sigmas[1:]]

    def sampling_sigmas(self, sigma_table, max_steps: int = 8) -> dict[str, list[float]]:
        """student.json's default sigmas for 1..max_steps steps: the table at LCMScheduler's timesteps."""
        table = np.asarray(sigma_table, dtype=np.float64)
        return {str(n): [float(table[t]) for t in lcm_timesteps(n, len(table), self.original_inference_steps)]
                for n in range(1, min(max_steps, self.original_inference_steps) + 1)}

    def spec(self) -> dict[str, Any]:
        return {"name": self.name, "timestep_scaling": self.timestep_scaling,
                "original_inference_steps": self.original_inference_steps}


def build_boundary(spec: dict[str, Any] | None):
    """student.json's `boundary` -> the object (None: the CM paper's scalings, distill/math/precond.py)."""
    if not spec:
        return None
    spec = dict(spec)
    name = spec.pop("name", None)
    if name != LCMBoundary.name:
        raise ValueError(f"unknown student boundary {name!r}; known: lcm")
    return LCMBoundary(**spec)
