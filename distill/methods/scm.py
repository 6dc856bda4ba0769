"""sCD and sCT: continuous-time consistency models in TrigFlow (Lu & Song 2024, "sCM", Algorithm 1).

One step, for x0 ~ data, z ~ N(0, sd^2 I), t = arctan(sigma / sd) with ln sigma ~ N(P_mean, P_std^2):

    x_t   = cos t x0 + sin t z
    dx/dt = the teacher's PF-ODE velocity (sCD, distill/math/trigflow.py)  |  cos t z - sin t x0 (sCT)
    F, J  = F_theta-(x_t, t) and cos t sin t dF_theta-/dt, one forward-mode JVP of the stop-gradient student
    g     = -cos^2 t (sd F - dx/dt) - r (cos t sin t x_t + sd J)       r = min(1, k / H): tangent warm-up
    g     = g / (||g|| + c)                                              tangent normalisation, c = 0.1
    L     = lambda(t) e^{w(t)} ||F_theta(x_t, t) - F - g||^2 / D - w(t)  adaptive weighting w = w_phi (learned)

g is cos(t) df_theta-/dt of f = cos t x_t - sin t sd F, so the gradient of L moves F_theta along the change of
f along the trajectory, the continuous-time limit of CD's pair loss (sCM sec. 3-4). Choices the paper leaves to
its code, taken from NVlabs/FastGen's sCM: ||g|| is the per-element RMS (the constant c then means the same at
every resolution), lambda(t) = 1 / (sd tan t) = 1 / sigma (its "prior weighting"), H = 10k iterations, and
the JVP and the grad pass share dropout masks here (one function is differentiated, as the paper's F_theta-).
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import nn

from distill.math.trigflow import data_velocity, t_of_sigma, teacher_velocity, time_derivative, trigflow_F
from distill.methods.curriculum import truncated_lognormal
from teachers.base import expand_like


@dataclass
class TrigFlowTimes:
    """sCM's proposal over sigma = sd tan t: lognormal, truncated to the student's sigma range (inverse CDF)."""
    sigma_min: float
    sigma_max: float
    p_mean: float
    p_std: float

    def sample(self, k: int, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        dev = generator.device if generator is not None else None
        return truncated_lognormal(batch, self.sigma_min, self.sigma_max, self.p_mean, self.p_std, generator, dev)


class AdaptiveWeight(nn.Module):
    """w_phi(t): EDM2's learned per-noise-level log-variance (Karras et al. 2024, sec. 5, "uncertainty"), which
    sCM uses as its adaptive weighting: fixed random Fourier features of ln(sigma)/4, a linear layer, w = 0 at
    the start. Trained jointly with the student; not part of the exported student."""

    def __init__(self, channels: int = 128, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("freqs", 2 * math.pi * torch.randn(channels, generator=g))
        self.register_buffer("phases", 2 * math.pi * torch.rand(channels, generator=g))
        self.linear = nn.Linear(channels, 1, bias=False)
        nn.init.zeros_(self.linear.weight)

    def forward(self, sigma: torch.Tensor) -> torch.Tensor:
        c_noise = sigma.to(self.freqs.dtype).log() / 4
        features = (c_noise[:, None] * self.freqs + self.phases).cos() * math.sqrt(2)
        return self.linear(features).squeeze(1)


class Velocity:
    """dx_t/dt at (x_t, t): the teacher's PF-ODE (sCD; guided if the teacher is, teachers/guidance.py) or the
    data's (sCT). `denoise` is the teacher call (None for sCT), kept as an attribute so benchmarks can time it."""

    def __init__(self, teacher, kind: str, sigma_data: float, dtype: torch.dtype = torch.float64):
        if kind not in ("teacher", "data"):
            raise ValueError(f"velocity must be 'teacher' (sCD) or 'data' (sCT), got {kind!r}")
        self.denoise = teacher.denoise if kind == "teacher" else None
        self.sigma_data, self.dtype = float(sigma_data), dtype

    @property
    def uses_teacher(self) -> bool:
        return self.denoise is not None

    @torch.no_grad()
    def __call__(self, x0, z, x_t, t, cond=None) -> torch.Tensor:
        if self.denoise is None:
            return data_velocity(x0, z, t)
        # (cos t x_t - D) / sin t cancels at small t: computed in `dtype` (method.target_dtype, float64 default).
        v = teacher_velocity(self.denoise, x_t.to(self.dtype), t.to(self.dtype), self.sigma_data, cond)
        return v.to(x_t.dtype)


def tangent(F_minus, J, x_t, dxdt, t, sigma_data: float, r: float = 1.0) -> torch.Tensor:
    """g = cos(t) df-/dt for f = cos t x_t - sin t sd F-, with J = cos t sin t dF-/dt (sCM Alg. 1, "JVP
    rearrangement"); the warm-up factor r multiplies the terms that come from F-'s own change along t."""
    cos, sin = expand_like(t.cos(), x_t), expand_like(t.sin(), x_t)
    return -cos.square() * (sigma_data * F_minus - dxdt) - r * (cos * sin * x_t + sigma_data * J)


def normalise(g: torch.Tensor, c: float) -> torch.Tensor:
    """g / (||g|| + c) per sample, ||g|| the RMS over elements (module docstring)."""
    return g / expand_like(g.flatten(1).square().mean(1).sqrt() + c, g)


class SCMObjective(nn.Module):
    """The loss of one sCD/sCT batch (module docstring). Holds w_phi; the teacher stays outside (not registered)."""

    def __init__(self, velocity: Velocity, times: TrigFlowTimes, warmup_steps: int, tangent_c: float):
        super().__init__()
        self.velocity, self.times = velocity, times
        self.sigma_data = velocity.sigma_data
        self.warmup_steps, self.tangent_c = int(warmup_steps), float(tangent_c)
        self.weight = AdaptiveWeight()

    def warmup(self, k: int) -> float:
        """r(k): the tangent's second term ramps in linearly over the first H steps (sCM sec. 4.2)."""
        return min(1.0, k / self.warmup_steps) if self.warmup_steps > 0 else 1.0

    def forward(self, student, x0: torch.Tensor, z: torch.Tensor, sigma: torch.Tensor, cond=None, k: int = 0,
                masks=nullcontext) -> torch.Tensor:
        """Per-sample loss (B,). z is unit Gaussian noise; sigma = sd tan t from `times`; `masks` a context that
        fixes the dropout masks (entered once for the JVP and once for the grad pass)."""
        sd = self.sigma_data
        t = t_of_sigma(sigma, sd)
        z = z * sd
        x_t = expand_like(t.cos(), x0) * x0 + expand_like(t.sin(), x0) * z
        dxdt = self.velocity(x0, z, x_t, t, cond)
        with masks():
            _, J = time_derivative(student, x_t, t, dxdt, cond)
        with masks():
            F_theta = trigflow_F(student, x_t, t, cond)
        # The loss in at least float32, outside autocast (F_theta may be bf16 under mixed precision).
        dtype = torch.promote_types(F_theta.dtype, torch.float32)
        with torch.autocast(x0.device.type, enabled=False):
            F_theta, F_minus = F_theta.to(dtype), F_theta.detach().to(dtype)
            g = tangent(F_minus, J.to(dtype), x_t.to(dtype), dxdt.to(dtype), t.to(dtype), sd, self.warmup(k))
            g = normalise(g, self.tangent_c)
            unweighted = (F_theta - F_minus - g).flatten(1).square().mean(1)
            w = self.weight(sigma)
            return (w.exp() / sigma.to(dtype)) * unweighted - w
