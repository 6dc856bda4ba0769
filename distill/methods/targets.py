"""Regression targets: the point x_cur at t_n where the target network is evaluated in one consistency step.

CD (CM paper, Alg. 2): x_next = x + t_{n+1} z, then the teacher's PF-ODE is solved from t_{n+1} down to
t_n. The solver is chosen by `method.solver` (heun, the paper's default, or euler) and `method.solver_steps`
(k sub-steps per target, spaced like the Karras grid between the two levels: a more exact target at k times
the teacher cost). The skipping-step target (one step across `method.skip` grid intervals, LCM sec. 4.3)
is a choice of the pair (t_n, t_{n+skip}) and lives in the pair sampler (distill/methods/curriculum.py); the solver
here does not care how far apart its two levels are.

CT, iCT and ECT (CM paper Alg. 3; no teacher): x_cur = x + t_n z with the same z, the one-sample estimate
of the ODE step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from distill.math.solvers import euler_step, heun_step
from teachers.base import expand_like

# DDIM (Song et al. 2021) in sigma units is the Euler step of the PF-ODE over the denoiser (EDM sec. 3;
# LCM's DDIM target with guided x0 and eps is the Euler step of the guided D): one function, two names.
SOLVERS = {"heun": heun_step, "euler": euler_step, "ddim": euler_step}


def substep_sigmas(sigma_from: torch.Tensor, sigma_to: torch.Tensor, k: int, rho: float = 7.0) -> list:
    """k + 1 levels from sigma_from to sigma_to (per sample), evenly spaced in sigma^(1/rho) as EDM eq. 5."""
    a, b = sigma_from.pow(1 / rho), sigma_to.pow(1 / rho)
    return [(a + (j / k) * (b - a)).pow(rho) for j in range(k + 1)]


@torch.no_grad()
def cd_target(denoise, x_next: torch.Tensor, sigma_next: torch.Tensor, sigma_cur: torch.Tensor, cond=None,
              solver: str = "heun", steps: int = 1, rho: float = 7.0,
              dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """x_cur: `steps` teacher solver steps from (x_next, sigma_next) down to sigma_cur.

    Computed in `dtype` (float64 by default: the target should not carry the step's rounding error into the
    loss). Local error per target: Euler O(h^2), Heun O(h^3), k Heun steps O(h^3 / k^2).
    """
    step = SOLVERS[solver]
    x = x_next.to(dtype)
    levels = substep_sigmas(sigma_next.to(dtype), sigma_cur.to(dtype), steps, rho) if steps > 1 else \
        [sigma_next.to(dtype), sigma_cur.to(dtype)]
    for s_from, s_to in zip(levels[:-1], levels[1:]):
        x = step(denoise, x, s_from, s_to, cond)
    return x.to(x_next.dtype)


def ct_target(x0: torch.Tensor, z: torch.Tensor, sigma_cur: torch.Tensor) -> torch.Tensor:
    """x_cur = x0 + t_n z (CM paper, Alg. 3): the one-sample estimate of the ODE step."""
    return x0 + expand_like(sigma_cur.to(x0.dtype), x0) * z


@dataclass
class TeacherStep:
    """CD's target: the teacher's ODE solved from t_{n+1} to t_n."""
    denoise: object
    solver: str = "heun"
    steps: int = 1
    rho: float = 7.0
    dtype: torch.dtype = torch.float64
    uses_teacher = True

    def __call__(self, x0, z, x_next, sigma_next, sigma_cur, cond=None):
        return cd_target(self.denoise, x_next, sigma_next, sigma_cur, cond, self.solver, self.steps,
                         self.rho, self.dtype)


class DataStep:
    """CT's target: x0 + t_n z with the noise direction z of x_next (no teacher evaluation)."""
    uses_teacher = False

    def __call__(self, x0, z, x_next, sigma_next, sigma_cur, cond=None):
        return ct_target(x0, z, sigma_cur)
