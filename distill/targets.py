"""Regression targets: where the target network is evaluated in one consistency step.

CD (CM paper, Alg. 2): x_next = x + t_{n+1} z, then one solver step of the teacher's PF-ODE from t_{n+1}
down to t_n gives x_cur. CT (Alg. 3) needs no teacher: x_cur = x + t_n z with the same z.
"""

from __future__ import annotations

import torch

from distill.solvers import euler_step, heun_step

SOLVERS = {"heun": heun_step, "euler": euler_step}


@torch.no_grad()
def cd_target(denoise, x_next: torch.Tensor, sigma_next: torch.Tensor, sigma_cur: torch.Tensor, cond=None,
              solver: str = "heun", dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """x_cur: one teacher solver step from (x_next, sigma_next) to sigma_cur. Computed in `dtype`
    (float64 by default: the target should not carry the step's rounding error into the loss)."""
    step = SOLVERS[solver]
    x = step(denoise, x_next.to(dtype), sigma_next.to(dtype), sigma_cur.to(dtype), cond)
    return x.to(x_next.dtype)


def ct_target(x0: torch.Tensor, z: torch.Tensor, sigma_cur: torch.Tensor) -> torch.Tensor:
    """x_cur = x0 + t_n z (CM paper, Alg. 3): the one-sample estimate of the ODE step."""
    return x0 + sigma_cur.reshape(-1, *([1] * (x0.ndim - 1))) * z
