"""Noise-level and class embeddings shared by the small networks."""

from __future__ import annotations

import math

import torch
from torch import nn

from teachers.networks.forward_ad import wide


class PositionalEmbedding(nn.Module):
    """Sinusoidal embedding of the scalar noise input c_noise (Transformer-style, as in DDPM++).

    Frequencies run from `scale` down to scale / max_positions radians per unit of c_noise = ln(sigma)/4.
    scale = 1 is EDM's (its DDPM++ embeds ln(sigma)/4 this way): every feature varies slowly in sigma, so a
    network trained at some sigmas interpolates to the others. A large scale (the first students here used
    250, after the CM code's 250 ln(sigma) time input) wraps the fast features many times between two training
    levels: a student trained on an 18-level grid then fails in between (docs/benchmarks.md,
    "Continuous pairs").
    """

    def __init__(self, dim: int, max_positions: int = 10000, scale: float = 1.0):
        super().__init__()
        half = dim // 2
        freqs = torch.exp(-math.log(max_positions) * torch.arange(half, dtype=torch.float32) / half)
        self.register_buffer("freqs", freqs * scale, persistent=False)

    def forward(self, c_noise: torch.Tensor) -> torch.Tensor:
        c_noise = c_noise.to(wide(c_noise.dtype))  # float64 stays float64 (exact JVP checks)
        args = c_noise[:, None] * self.freqs[None, :].to(c_noise.dtype)
        return torch.cat([args.cos(), args.sin()], dim=1)


class ConditionEmbedding(nn.Module):
    """Noise embedding plus an optional class embedding, mixed by a small MLP."""

    def __init__(self, dim: int, num_classes: int = 0, scale: float = 1.0):
        super().__init__()
        self.noise = PositionalEmbedding(dim, scale=scale)
        self.label = nn.Embedding(num_classes, dim) if num_classes else None
        self.mlp = nn.Sequential(nn.Linear(dim, dim * 2), nn.SiLU(), nn.Linear(dim * 2, dim * 2))

    def forward(self, c_noise: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        emb = self.noise(c_noise)
        if self.label is not None and cond is not None:
            emb = emb + self.label(cond.long())
        return self.mlp(emb)
