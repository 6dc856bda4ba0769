"""Discrete variance-preserving (DDPM) networks as EDM denoisers: the VP -> EDM change of variables.

A DDPM network sees x_vp = sqrt(abar_t) x0 + sqrt(1 - abar_t) n at an integer timestep t. In EDM units
x = x_vp / sqrt(abar_t) = x0 + sigma n with sigma_t = sqrt((1 - abar_t) / abar_t), so (FACTS.md)

    eps-prediction:  D(x, s) = x - s * eps(x / sqrt(1 + s^2), t(s))
    v-prediction:    D(x, s) = x / (1 + s^2) - s / sqrt(1 + s^2) * v(x / sqrt(1 + s^2), t(s))
    x0-prediction:   D(x, s) = x0(x / sqrt(1 + s^2), t(s))

t(s) interpolates linearly in log sigma over the discrete table, so D is continuous in sigma and exact on
the grid (EDM's continuous VP formula is off by up to ~3 timesteps for a 1000-step model).
`round_sigma` snaps to the grid for samplers that want the training timesteps.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from teachers.base import BackboneFeeding, edm_scalings, expand_like
from teachers.feeding import register_feeding
from teachers.network_teacher import NetworkTeacher

PREDICTIONS = ("epsilon", "v_prediction", "sample")


def beta_table(schedule: str = "linear", num_steps: int = 1000, beta_start: float = 1e-4,
               beta_end: float = 0.02) -> np.ndarray:
    """Betas in float64 for diffusers' schedule names (linear, scaled_linear, squaredcos_cap_v2 = cosine)."""
    if schedule == "linear":
        return np.linspace(beta_start, beta_end, num_steps, dtype=np.float64)
    if schedule == "scaled_linear":
        return np.linspace(beta_start**0.5, beta_end**0.5, num_steps, dtype=np.float64) ** 2
    if schedule in ("squaredcos_cap_v2", "cosine"):
        # Nichol & Dhariwal 2021, eq. 17 (s = 0.008), betas clipped at 0.999 as in their code.
        abar = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
        return np.array([min(1 - abar((i + 1) / num_steps) / abar(i / num_steps), 0.999)
                         for i in range(num_steps)], dtype=np.float64)
    raise ValueError(f"unknown beta schedule {schedule!r}; use linear, scaled_linear or squaredcos_cap_v2")


def sigmas_from_betas(betas) -> np.ndarray:
    """sigma_i = sqrt((1 - abar_i) / abar_i), abar_i = prod_{j<=i} (1 - beta_j); increasing in i."""
    abar = np.cumprod(1.0 - np.asarray(betas, dtype=np.float64))
    return np.sqrt((1.0 - abar) / abar)


@register_feeding("vp")
class VPFeeding(BackboneFeeding):
    """How a discrete eps/v/x0 network is fed, and how its output becomes x0_hat and EDM's F.

    JSON-able spec: the schedule by name (`schedule`) or, for a custom table, the sigmas themselves.
    """

    name = "vp"

    def __init__(self, sigma_data: float = 0.5, prediction: str = "epsilon", schedule: dict | None = None,
                 sigmas: list[float] | None = None):
        super().__init__(sigma_data)
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {', '.join(PREDICTIONS)}, got {prediction!r}")
        if (schedule is None) == (sigmas is None):
            raise ValueError("give exactly one of `schedule` (name and betas range) or `sigmas` (the table)")
        self.prediction, self.schedule = prediction, dict(schedule) if schedule else None
        table = sigmas_from_betas(beta_table(**self.schedule)) if schedule else np.asarray(sigmas, np.float64)
        if not np.all(np.diff(table) > 0):
            raise ValueError("the sigma table must increase with the timestep")
        self.sigmas = table
        self._log_sigmas = torch.from_numpy(np.log(table))  # float64, moved to the input's device on use

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        """t(sigma): linear in log sigma between grid points, clamped to [0, T-1]; (B,) float64."""
        logs = self._log_sigmas.to(sigma.device)
        ls = sigma.double().log().clamp(logs[0], logs[-1])
        hi = torch.searchsorted(logs, ls).clamp(1, len(logs) - 1)
        frac = (ls - logs[hi - 1]) / (logs[hi] - logs[hi - 1])
        return (hi - 1).double() + frac

    def x0(self, net: nn.Module, x: torch.Tensor, sigma: torch.Tensor, cond=None) -> torch.Tensor:
        s = expand_like(sigma, x).to(x.dtype)
        out = net(x / (1 + s**2).sqrt(), self.timestep(sigma).to(x.dtype), cond)
        out = out[:, : x.shape[1]].to(x.dtype)  # learned-variance nets also output a variance channel set
        if self.prediction == "epsilon":
            return x - s * out
        if self.prediction == "v_prediction":
            return x / (1 + s**2) - s / (1 + s**2).sqrt() * out
        return out

    def F(self, net: nn.Module, x: torch.Tensor, sigma: torch.Tensor, cond=None) -> torch.Tensor:
        # EDM's F from x0_hat (DESIGN.md, "The student"): F = (x0_hat - c_skip x) / c_out.
        c_skip, c_out, _, _ = edm_scalings(sigma.to(x.dtype), self.sigma_data)
        return (self.x0(net, x, sigma, cond) - expand_like(c_skip, x) * x) / expand_like(c_out, x)

    def denoise(self, net: nn.Module, x: torch.Tensor, sigma: torch.Tensor, cond=None) -> torch.Tensor:
        return self.x0(net, x, sigma, cond)  # exact: no round trip through F

    def spec(self) -> dict[str, Any]:
        spec = {"name": self.name, "sigma_data": self.sigma_data, "prediction": self.prediction}
        if self.schedule is not None:
            return {**spec, "schedule": self.schedule}
        return {**spec, "sigmas": [float(s) for s in self.sigmas]}


class VPTeacher(NetworkTeacher):
    """Any eps/v/x0 network over a discrete beta table, as an EDM denoiser.

    `net(x_vp, t, cond)` takes the VP-scaled input and a (B,) float timestep; give the schedule as
    `schedule=dict(schedule="linear", num_steps=1000, beta_start=1e-4, beta_end=0.02)` or the betas.
    """

    def __init__(self, net: nn.Module, *, image_shape, prediction: str = "epsilon", schedule: dict | None = None,
                 betas=None, num_classes: int = 0, sigma_data: float = 0.5):
        sigmas = None if betas is None else [float(s) for s in sigmas_from_betas(betas)]
        feeding = VPFeeding(sigma_data, prediction, schedule=schedule, sigmas=sigmas)
        super().__init__(net, feeding, sigma_min=float(feeding.sigmas[0]), sigma_max=float(feeding.sigmas[-1]),
                         sigma_data=sigma_data, image_shape=image_shape, num_classes=num_classes)

    def round_sigma(self, sigma):
        """The grid sigma nearest in log sigma; a float stays a float, a tensor a tensor."""
        table = torch.from_numpy(self.feeding.sigmas)
        s = torch.as_tensor(sigma, dtype=torch.float64)
        idx = (s.reshape(-1, 1).log() - table.log().reshape(1, -1)).abs().argmin(1).reshape(s.shape)
        snapped = table[idx]
        if isinstance(sigma, torch.Tensor):
            return snapped.to(device=sigma.device, dtype=sigma.dtype)
        return float(snapped)
