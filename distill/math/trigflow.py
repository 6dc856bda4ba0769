"""TrigFlow (Lu & Song 2024, "sCM", sec. 2) as a view of the one EDM coordinate.

TrigFlow writes a noisy sample as x_t = cos(t) x_0 + sin(t) z, z ~ N(0, sd^2 I), t in [0, pi/2]. The EDM state
x_sigma = x_0 + sigma n is the same point seen at sigma = sd tan(t), scaled: x_t = cos(t) x_sigma. So every
teacher (an EDM denoiser D) is a TrigFlow teacher with no new adapter; its PF-ODE velocity is

    dx_t/dt = (cos t x_t - D(x_t / cos t, sd tan t)) / sin t          (dx_sigma/dsigma = (x - D) / sigma, chained)

The TrigFlow student is f(x_t, t) = cos(t) x_t - sin(t) sd F(x_t / sd, c_noise(t)). In x_sigma's units that is
c_skip x_sigma + c_out F_edm with EDM's own c_skip = cos^2 t and c_out = sd sin t (Table 1) and F_edm = -F: a
ConsistencyStudent with these scalings (distill/math/precond.py) keeps the framework's f(x_sigma, sigma, cond),
and f(x, 0) = x exactly (cos 0 = 1, sin 0 = 0). A fresh network is fed as the paper prescribes
(`TrigFlowFeeding`: c_in = 1/sd on x_t, identity time c_noise(t) = t, sCM sec. 4.1); a copy of the teacher's
backbone keeps the teacher's feeding, so the student starts equal to the teacher's denoiser (sCM Alg. 1).
"""

from __future__ import annotations

import torch

from teachers.base import BackboneFeeding, expand_like
from teachers.feeding import register_feeding
from teachers.networks.forward_ad import jvp


def t_of_sigma(sigma: torch.Tensor, sigma_data: float) -> torch.Tensor:
    return torch.atan(sigma / sigma_data)


def sigma_of_t(t: torch.Tensor, sigma_data: float) -> torch.Tensor:
    return sigma_data * torch.tan(t)


def trigflow_scalings(sigma: torch.Tensor, sigma_min: float, sigma_data: float):
    """(c_skip, c_out) on x_sigma of f = cos t x_t - sin t sd F: cos^2 t and sd sin t (EDM's Table 1 values).

    The boundary is at sigma = 0 (t = 0), where they are exactly 1 and 0; sigma_min plays no part."""
    t = t_of_sigma(sigma, sigma_data)
    return t.cos().square(), sigma_data * t.sin()


@register_feeding("trigflow")
class TrigFlowFeeding(BackboneFeeding):
    """The paper's network input: F(x_t / sd, c_noise(t) = t) (sCM sec. 4.1, "identity time transformation": EDM's
    ln(sd tan t)/4 has an unbounded time derivative at both ends of [0, pi/2], which the JVP multiplies)."""

    name = "trigflow"

    def trigflow_F(self, net, x_t: torch.Tensor, t: torch.Tensor, cond=None) -> torch.Tensor:
        return net(x_t / self.sigma_data, t, cond)

    def F(self, net, x: torch.Tensor, sigma: torch.Tensor, cond=None) -> torch.Tensor:
        # The BackboneFeeding contract is EDM's F; TrigFlow's F is its negative (module docstring).
        t = t_of_sigma(sigma, self.sigma_data)
        return -self.trigflow_F(net, expand_like(t.cos(), x) * x, t, cond)


def trigflow_F(student, x_t: torch.Tensor, t: torch.Tensor, cond=None) -> torch.Tensor:
    """The student's TrigFlow F(x_t / sd, c_noise(t)): its feeding's own, or -EDM F for any other feeding (a copied
    teacher backbone, fed as the teacher feeds it)."""
    feeding = student.feeding
    if hasattr(feeding, "trigflow_F"):
        return feeding.trigflow_F(student.net, x_t, t, cond)
    sd = student.sigma_data
    return -feeding.F(student.net, x_t / expand_like(t.cos(), x_t), sigma_of_t(t, sd), cond)


def teacher_velocity(denoise, x_t: torch.Tensor, t: torch.Tensor, sigma_data: float, cond=None) -> torch.Tensor:
    """dx_t/dt of the teacher's PF-ODE in TrigFlow time, from its EDM denoiser (module docstring)."""
    cos, sin = expand_like(t.cos(), x_t), expand_like(t.sin(), x_t)
    return (cos * x_t - denoise(x_t / cos, sigma_of_t(t, sigma_data), cond)) / sin


def data_velocity(x0: torch.Tensor, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """sCT's one-sample estimate of dx_t/dt: d/dt (cos t x0 + sin t z) = cos t z - sin t x0, z ~ N(0, sd^2 I)."""
    return expand_like(t.cos(), z) * z - expand_like(t.sin(), x0) * x0


@torch.no_grad()
def time_derivative(student, x_t: torch.Tensor, t: torch.Tensor, dxdt: torch.Tensor, cond=None):
    """(F, cos t sin t dF/dt) of the stop-gradient student along the trajectory, by one forward-mode JVP
    (teachers/networks/forward_ad.py: PyTorch's forward AD with cheaper tangent rules for the common layers).

    dF/dt = dF/dx_t . dx_t/dt + dF/dt|_x; sCM Alg. 1 scales both tangents by cos t sin t ("JVP rearrangement"),
    which keeps them bounded at t -> pi/2 where dx_t/dt-driven terms would blow up. Always in at least float32 and
    outside autocast (a bf16 JVP loses the small differences it is made of); parameters carry no tangent.
    """
    dtype = torch.promote_types(x_t.dtype, torch.float32)
    x, tt, v = x_t.to(dtype), t.to(dtype), dxdt.to(dtype)
    scale = tt.cos() * tt.sin()
    with torch.autocast(x.device.type, enabled=False):
        return jvp(lambda x_, t_: trigflow_F(student, x_, t_, cond).to(dtype), (x, tt),
                   (expand_like(scale, v) * v, scale))
