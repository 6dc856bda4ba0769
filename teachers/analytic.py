"""An exact teacher: the ideal denoiser of a Gaussian mixture, computed in closed form.

For components (w_k, mu_k, s0^2 I) the noisy density at sigma is a mixture of N(mu_k, (s0^2 + s^2) I),
and its posterior mean (EDM eq. 57, generalised to a mixture) is

    D(x, s) = sum_k r_k(x) (mu_k + s0^2 / (s0^2 + s^2) (x - mu_k)),
    r_k = softmax_k(log w_k - ||x - mu_k||^2 / (2 (s0^2 + s^2))).

Computed in float64 with a max-subtracted softmax, so the ODE it defines can be solved to any accuracy and a
student's error is measured against the truth rather than against another approximation.
With s0 = 0 it is the ideal denoiser of the data set itself (DESIGN.md, "The embedded default").
"""

from __future__ import annotations

import math

import numpy as np
import torch

from teachers.base import Teacher
from teachers.registry import register


class GaussianMixtureTeacher(Teacher):
    def __init__(self, means: torch.Tensor, *, sigma0: float = 0.0, weights: torch.Tensor | None = None,
                 labels: torch.Tensor | None = None, image_shape: tuple[int, ...] | None = None,
                 sigma_min: float = 0.002, sigma_max: float = 80.0, sigma_data: float | None = None):
        means = torch.as_tensor(means, dtype=torch.float64).flatten(1)  # (K, d)
        k = means.shape[0]
        weights = torch.full((k,), 1.0 / k, dtype=torch.float64) if weights is None else \
            torch.as_tensor(weights, dtype=torch.float64) / float(torch.as_tensor(weights).sum())
        num_classes = 0 if labels is None else int(labels.max()) + 1
        if sigma_data is None:
            # Std of the mixture per coordinate, the scale EDM's preconditioning expects.
            var = (weights[:, None] * (means - (weights[:, None] * means).sum(0)) ** 2).sum(0).mean()
            sigma_data = math.sqrt(float(var) + sigma0**2)
        super().__init__(sigma_min=sigma_min, sigma_max=sigma_max, sigma_data=sigma_data,
                         image_shape=image_shape or (means.shape[1],), num_classes=num_classes)
        self.sigma0 = float(sigma0)
        self.register_buffer("means", means)
        self.register_buffer("log_weights", weights.log())
        self.register_buffer("labels", labels.long() if labels is not None else torch.zeros(k, dtype=torch.long))
        self.register_buffer("means_sqnorm", (means**2).sum(1))

    def _logits(self, x: torch.Tensor, var: torch.Tensor, cond) -> torch.Tensor:
        """log r_k(x) up to a per-row constant, for x (B, d) in float64, var (B,) = s0^2 + sigma^2."""
        sq = (x**2).sum(1, keepdim=True) - 2 * x @ self.means.T + self.means_sqnorm  # (B, K)
        logits = self.log_weights - sq.clamp_min(0) / (2 * var[:, None])
        if cond is not None and self.num_classes:
            keep = self.labels[None, :] == torch.as_tensor(cond, device=x.device).long()[:, None]
            logits = logits.masked_fill(~keep, -math.inf)
        return logits

    def _denoise(self, x: torch.Tensor, sigma: torch.Tensor, cond) -> torch.Tensor:
        shape = x.shape
        x64 = x.to(self.means.device, torch.float64).flatten(1)
        s2 = sigma.to(x64.device, torch.float64) ** 2
        var = self.sigma0**2 + s2
        r = self._logits(x64, var, cond).softmax(1)  # (B, K); one pass, where logsumexp then exp makes two
        pull = (self.sigma0**2 / var)[:, None]
        out = (1 - pull) * (r @ self.means) + pull * x64
        return out.reshape(shape).to(x.device)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, cond=None) -> torch.Tensor:
        """Exact samples of the clean distribution, shaped (n, *image_shape), float32, on CPU."""
        logits = self.log_weights.cpu().expand(n, -1).clone()
        if cond is not None and self.num_classes:
            keep = self.labels.cpu()[None, :] == torch.as_tensor(cond).long()[:, None]
            logits = logits.masked_fill(~keep, -math.inf)
        idx = torch.multinomial(logits.exp(), 1, generator=generator).squeeze(1)
        x = self.means.cpu()[idx] + self.sigma0 * torch.randn(n, self.means.shape[1], generator=generator,
                                                               dtype=torch.float64)
        return x.reshape(n, *self.image_shape).float()


def load_digits_array() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 8x8 digits scaled linearly from [0, 16] to [-1, 1]; shape (N, 1, 8, 8)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = bunch.images.astype(np.float64) / 8.0 - 1.0
    return images[:, None], bunch.target.astype(np.int64)


@register("digits")
def digits(sigma0: float = 0.0, conditional: bool = False, sigma_min: float = 0.002,
           sigma_max: float = 80.0, sigma_data: float = 0.5) -> GaussianMixtureTeacher:
    """Mixture centred on every digit image; sigma0 = 0 is the ideal denoiser of the data set."""
    images, labels = load_digits_array()
    teacher = GaussianMixtureTeacher(torch.from_numpy(images), sigma0=sigma0,
                                     labels=torch.from_numpy(labels) if conditional else None,
                                     image_shape=(1, 8, 8), sigma_min=sigma_min, sigma_max=sigma_max,
                                     sigma_data=sigma_data)
    teacher.spec = {"name": "digits", "sigma0": sigma0, "conditional": conditional,
                    "sigma_min": sigma_min, "sigma_max": sigma_max, "sigma_data": sigma_data}
    teacher.licence = "BSD-3-Clause (scikit-learn digits, UCI optdigits)"
    return teacher


@register("toy2d")
def toy2d(modes: int = 8, radius: float = 2.0, sigma0: float = 0.5, sigma_min: float = 0.002,
          sigma_max: float = 80.0) -> GaussianMixtureTeacher:
    """A ring of equal-weight Gaussians in 2-D: the smallest problem with curved, mode-switching paths."""
    angles = torch.arange(modes, dtype=torch.float64) * (2 * math.pi / modes)
    means = radius * torch.stack([angles.cos(), angles.sin()], 1)
    teacher = GaussianMixtureTeacher(means, sigma0=sigma0, labels=torch.arange(modes),
                                     image_shape=(2,), sigma_min=sigma_min, sigma_max=sigma_max)
    teacher.num_classes = 0  # unconditional; labels kept only for exact sampling
    teacher.spec = {"name": "toy2d", "modes": modes, "radius": radius, "sigma0": sigma0,
                    "sigma_min": sigma_min, "sigma_max": sigma_max}
    return teacher
