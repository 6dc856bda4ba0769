"""What the networks need so that a forward-mode JVP through them is exact (sCM's time derivative).

- `wide(dtype)`: the dtype for the parts computed "in float32 whatever the activation dtype" (softmax, group norm,
  embeddings): float32, but float64 stays float64, so a float64 check sees no float32 rounding.
- `jvp_safe_attention()`: PyTorch's fused attention kernels (flash, memory-efficient, the CPU flash kernel) have
  no forward-mode derivative (torch 2.x raises NotImplementedError under torch.func.jvp); its composite "math"
  kernel is plain matmul + softmax, which forward-mode AD differentiates exactly. The networks select it only
  while a tangent is flowing, so ordinary passes keep the fused kernels (and their bits).
- `forward_mode_active()`: EDM2's forced weight normalisation writes the weights in training passes; under a JVP
  it must compute the same values without writing them.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn.functional as tF
from torch.autograd import forward_ad


def wide(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def has_tangent(*tensors: torch.Tensor) -> bool:
    """True inside torch.func.jvp (or a forward_ad dual level) for a tensor that carries a tangent."""
    return any(forward_ad.unpack_dual(t).tangent is not None for t in tensors)


def forward_mode_active() -> bool:
    """Inside torch.func.jvp (or a forward_ad.dual_level), where in-place writes to captured tensors (weights)
    are refused. torch keeps the current dual level in forward_ad._current_level (-1 outside; tested)."""
    return getattr(forward_ad, "_current_level", -1) >= 0


def jvp_safe_attention(*tensors: torch.Tensor):
    """A context for F.scaled_dot_product_attention calls on `tensors`: the math kernel under a JVP."""
    if not has_tangent(*tensors):
        return nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.MATH])


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """F.scaled_dot_product_attention(q, k, v), differentiable in forward mode."""
    with jvp_safe_attention(q, k, v):
        return tF.scaled_dot_product_attention(q, k, v)
