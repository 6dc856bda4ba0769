"""The one interface every teacher satisfies: an EDM denoiser D(x, sigma, cond) -> x0_hat.

Karras et al. 2022 (EDM), eq. 7 and Table 1: whatever a network predicts (eps, v, x0, F),
an adapter turns it into the denoiser in variance-exploding sigma units, x_sigma = x_0 + sigma n.
Nothing in `distill/` needs to know which family a teacher came from.

`cond` is None for an unconditional teacher and int64 class labels of shape (B,) for a conditional one.
An optional `sample(num, generator, cond=None)` gives exact samples (see `Denoiser`). `distill fit`
checks the attributes (`check_attributes`) and calls `denoise` once before training
(distill/training/preflight.py; docs/custom-teacher.md).

A teacher that has a network (`backbone`) also exposes `feeding`, a `BackboneFeeding` that says
how the network is fed and how its raw output becomes EDM's F. A student that starts as a copy of
the backbone is fed the same way, and the feeding's `spec()` is saved with the student so that it
can be rebuilt without the teacher.
"""

from __future__ import annotations

import math
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

    # Optional: exact samples, for teachers that have them (the analytic ones). distill/ uses this hook for
    # data.name=teacher and as the FID reference; it must take (num, generator, cond=None), cond being
    # int64 class labels of shape (num,) for a class-conditional teacher, and return (num, *image_shape).
    # def sample(self, num: int, generator: torch.Generator | None = None, cond=None) -> torch.Tensor: ...


def check_attributes(teacher) -> None:
    """The Denoiser's numbers as distill/ needs them: 0 < sigma_min < sigma_max and sigma_data > 0, all
    finite; image_shape positive integers; num_classes >= 0. A NaN here (e.g. a damaged checkpoint's
    sigma_data) would otherwise train a NaN student. Raises TeacherSpecError."""
    from teachers.registry import TeacherSpecError

    name = type(teacher).__name__
    values = {k: getattr(teacher, k, None) for k in ("sigma_min", "sigma_max", "sigma_data")}
    for key, v in values.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise TeacherSpecError(f"teacher {name}: {key} = {v!r}; it must be a finite number > 0")
    if not values["sigma_min"] < values["sigma_max"]:
        raise TeacherSpecError(f"teacher {name}: sigma_min {values['sigma_min']} is not below sigma_max "
                               f"{values['sigma_max']}")
    shape = getattr(teacher, "image_shape", None)
    if not isinstance(shape, (tuple, list)) or not shape or not all(
            isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape):
        raise TeacherSpecError(f"teacher {name}: image_shape = {shape!r}; it must be a tuple of positive "
                               "integers, e.g. (3, 32, 32)")
    classes = getattr(teacher, "num_classes", 0)
    if isinstance(classes, bool) or not isinstance(classes, int) or classes < 0:
        raise TeacherSpecError(f"teacher {name}: num_classes = {classes!r}; it must be an integer >= 0 "
                               "(0: unconditional)")


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
        check_attributes(self)
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
