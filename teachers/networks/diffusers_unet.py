"""A diffusers `UNet2DModel` as a project network: `(x, t, cond) -> output`, rebuilt from its config.

diffusers is optional (`pip install diffusers`, the `ddpm` extra); it is imported only when this network
is built. The constructor takes the model's config dict (JSON-able), which goes into student.json.
"""

from __future__ import annotations

import json
from typing import Any

import torch
from torch import nn

from teachers.networks import register_network
from teachers.networks.forward_ad import jvp_safe_attention


def import_unet2d():
    try:
        from diffusers import UNet2DModel
    except ImportError as err:
        raise ImportError("DDPM teachers need diffusers, an optional dependency: pip install diffusers "
                          "(or pip install 'distill-cm[ddpm]')") from err
    return UNet2DModel


def plain_config(config) -> dict[str, Any]:
    """A diffusers config as plain JSON values, without its private `_...` keys."""
    return json.loads(json.dumps({k: v for k, v in dict(config).items() if not k.startswith("_")}))


class JvpSafeAttnProcessor:
    """diffusers' default PyTorch-2 attention processor, on the math kernel while a forward-mode tangent flows
    (teachers/networks/forward_ad.py): the same numbers otherwise, and an exact JVP for sCD students."""

    def __init__(self):
        from diffusers.models.attention_processor import AttnProcessor2_0

        self.inner = AttnProcessor2_0()

    def __call__(self, attn, hidden_states, *args, **kwargs):
        with jvp_safe_attention(hidden_states):
            return self.inner(attn, hidden_states, *args, **kwargs)


@register_network("diffusers_unet2d")
class DiffusersUNet(nn.Module):
    def __init__(self, config: dict[str, Any], module: nn.Module | None = None):
        super().__init__()
        self.unet = module if module is not None else import_unet2d().from_config(config)
        attention = [m for m in self.unet.modules() if hasattr(m, "set_processor") and hasattr(m, "processor")]
        if attention:
            processor = JvpSafeAttnProcessor()
            for m in attention:
                m.set_processor(processor)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond=None) -> torch.Tensor:
        labels = None if cond is None else torch.as_tensor(cond, device=x.device).long()
        return self.unet(x, t, class_labels=labels).sample
