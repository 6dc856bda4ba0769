"""The one interface every teacher satisfies: an EDM denoiser D(x, sigma, cond) -> x0_hat.

Karras et al. 2022 (EDM), eq. 7 and Table 1: whatever a network predicts (eps, v, x0, F),
an adapter turns it into the denoiser in variance-exploding sigma units, x_sigma = x_0 + sigma n.
Nothing in `distill/` needs to know which family a teacher came from.

A teacher that has a network (`backbone`) also exposes `feeding`, a `BackboneFeeding` that says
how the network is fed and how its raw output becomes EDM's F. A student that starts as a copy of
the backbone is fed the same way, and the feeding's `spec()` is saved with the student so that it
can be rebuilt without the teacher.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn


@runtime_checkable
class Denoiser(Protocol):
    """What `distill/` asks of a teacher (DESIGN.md, "One coordinate, one callable")."""

    sigma_min: float
    sigma_max: float
    sigma_data: float
    image_shape: tuple[int, ...]
    num_classes: int

    def denoise(self, x: torch.Tensor, sigma, cond: torch.Tensor | None = None) -> torch.Tensor: ...

    def round_sigma(self, sigma): ...


def sigma_per_sample(sigma, x: torch.Tensor) -> torch.Tensor:
    """A float or a (B,) tensor -> a (B,) tensor on x's device, in x's dtype."""
    sigma = torch.as_tensor(sigma, device=x.device, dtype=x.dtype)
    if sigma.ndim == 0:
        sigma = sigma.expand(x.shape[0])
    if sigma.shape != (x.shape[0],):
        raise ValueError(f"sigma must be a float or have shape ({x.shape[0]},); got {tuple(sigma.shape)}")
    return sigma


def expand_like(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, ..., 1) so that it broadcasts against x."""
    return v.reshape(v.shape[0], *([1] * (x.ndim - 1)))


def edm_scalings(sigma: torch.Tensor, sigma_data: float):
    """EDM Table 1 preconditioning: (c_skip, c_out, c_in, c_noise)."""
    c_skip = sigma_data**2 / (sigma**2 + sigma_data**2)
    c_out = sigma * sigma_data / (sigma**2 + sigma_data**2).sqrt()
    c_in = 1 / (sigma**2 + sigma_data**2).sqrt()
    c_noise = sigma.log() / 4
    return c_skip, c_out, c_in, c_noise


class BackboneFeeding:
    """How a backbone network is fed and how its output becomes EDM's F.

    `F(net, x, sigma, cond)` returns the network's prediction in EDM's F-parameterisation, so that
    D = c_skip x + c_out F (EDM eq. 7). Subclasses describe other families (eps, v); `spec()` is a
    JSON-able dict from which `teachers.feeding.build_feeding` rebuilds the same feeding.
    """

    name = "edm"

    def __init__(self, sigma_data: float = 0.5):
        self.sigma_data = float(sigma_data)

    def F(self, net: nn.Module, x: torch.Tensor, sigma: torch.Tensor, cond=None) -> torch.Tensor:
        _, _, c_in, c_noise = edm_scalings(sigma, self.sigma_data)
        return net(expand_like(c_in, x) * x, c_noise, cond)

    def denoise(self, net: nn.Module, x: torch.Tensor, sigma: torch.Tensor, cond=None) -> torch.Tensor:
        c_skip, c_out, _, _ = edm_scalings(sigma, self.sigma_data)
        F = self.F(net, x, sigma, cond)
        return expand_like(c_skip, x) * x + expand_like(c_out, x) * F.to(x.dtype)

    def spec(self) -> dict[str, Any]:
        return {"name": self.name, "sigma_data": self.sigma_data}


class Teacher(nn.Module):
    """Base class for teachers: holds the range and shape attributes and the float/tensor sigma handling.

    Subclasses implement `_denoise(x, sigma_b, cond)` with sigma_b of shape (B,).
    """

    def __init__(self, *, sigma_min: float, sigma_max: float, sigma_data: float,
                 image_shape: tuple[int, ...], num_classes: int = 0):
        super().__init__()
        self.sigma_min = float(sigma_min)
        self.sigma_max = float(sigma_max)
        self.sigma_data = float(sigma_data)
        self.image_shape = tuple(int(s) for s in image_shape)
        self.num_classes = int(num_classes)
        self.backbone: nn.Module | None = None
        self.feeding: BackboneFeeding | None = None
        # Provenance recorded in student.json (DESIGN.md "Files and numbers").
        self.spec: dict[str, Any] = {}
        self.licence: str | None = None
        self.file_sha256: str | None = None
        # The data a trained network saw (teacher.json's `data`), the FID reference when it has no exact samples.
        self.training_data: dict[str, Any] | None = None

    @torch.no_grad()
    def denoise(self, x: torch.Tensor, sigma, cond: torch.Tensor | None = None) -> torch.Tensor:
        sigma_b = sigma_per_sample(sigma, x)
        out = self._denoise(x, sigma_b, cond)
        return out.to(dtype=x.dtype)

    def forward(self, x, sigma, cond=None):
        return self.denoise(x, sigma, cond)

    def _denoise(self, x: torch.Tensor, sigma: torch.Tensor, cond) -> torch.Tensor:
        if self.backbone is None or self.feeding is None:
            raise NotImplementedError(f"{type(self).__name__} must implement _denoise")
        return self.feeding.denoise(self.backbone, x, sigma, cond)

    def round_sigma(self, sigma):
        """Continuous teachers accept any sigma; discrete ones override this to snap to their grid."""
        return sigma

    def describe(self) -> str:
        cls = f", {self.num_classes} classes" if self.num_classes else ""
        return (f"{type(self).__name__}(image_shape={self.image_shape}{cls}, "
                f"sigma in [{self.sigma_min:g}, {self.sigma_max:g}], sigma_data={self.sigma_data:g})")
