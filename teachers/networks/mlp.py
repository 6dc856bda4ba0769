"""An MLP for vectors and tiny images (toy2d, the digits demo): input (B, ...) flattened, c_noise (B,), cond."""

from __future__ import annotations

import torch
from torch import nn

from teachers.networks import register_network
from teachers.networks.embeddings import ConditionEmbedding


@register_network("mlp")
class MLP(nn.Module):
    def __init__(self, dim: int = 2, width: int = 128, depth: int = 3, num_classes: int = 0,
                 dropout: float = 0.0, embedding_scale: float = 1.0):
        super().__init__()
        self.embed = ConditionEmbedding(width // 2, num_classes, scale=embedding_scale)
        self.inp = nn.Linear(dim, width)
        self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(width, dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, cond: torch.Tensor | None = None):
        h = self.inp(x.flatten(1)) + self.embed(c_noise, cond).to(x.dtype)
        for layer in self.layers:
            h = h + self.dropout(layer(torch.nn.functional.silu(h)))
        return self.out(torch.nn.functional.silu(h)).reshape(x.shape)
