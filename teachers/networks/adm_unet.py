"""ADM-style UNet with the key names of OpenAI's consistency-models checkpoints (`edm_*_ema.pt`).

`time_embed.{0,2}`, `label_emb`, `input_blocks.{i}.{j}.in_layers.{0,2}`, `...emb_layers.1`,
`...out_layers.{0,3}`, `...skip_connection`, attention `norm`/`qkv`/`proj_out`, `middle_block`,
`output_blocks`, `out.{0,2}` (FACTS.md). The qkv channels are laid out (three, heads, dim), the order of
their flash-attention path, not guided-diffusion's legacy (heads, three, dim).

The network takes OpenAI's time input directly: `forward(x_in, t, cond)` with t = 1000 * 0.25 * ln(sigma)
for their EDM teachers (fed so by `teachers/openai_cm.py`'s feeding).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as tF
from torch import nn

from teachers.networks import register_network
from teachers.networks.forward_ad import sdpa, wide


class GroupNorm32(nn.GroupNorm):
    """32 groups, computed in float32 whatever the activation dtype (as OpenAI's fp16 models do; float64 stays)."""

    def __init__(self, channels: int):
        super().__init__(32, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.to(wide(x.dtype))).to(x.dtype)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """[cos, sin] sinusoids of (possibly fractional or negative) timesteps, (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.to(wide(t.dtype))[:, None] * freqs[None]
    emb = torch.cat([args.cos(), args.sin()], dim=-1)
    return tF.pad(emb, (0, dim % 2))


class EmbedSequential(nn.Sequential):
    """A Sequential whose ResBlocks also receive the embedding (OpenAI's TimestepEmbedSequential)."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class Resample(nn.Module):
    """2x nearest upsampling or 2x downsampling, with a 3x3 conv (`conv` / `op`) or without (avg pool)."""

    def __init__(self, channels: int, up: bool, use_conv: bool):
        super().__init__()
        self.up = up
        if use_conv and up:
            self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        elif use_conv:
            self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.up:
            x = tF.interpolate(x, scale_factor=2, mode="nearest")
            return self.conv(x) if hasattr(self, "conv") else x
        return self.op(x) if hasattr(self, "op") else tF.avg_pool2d(x, 2)


class ResBlock(nn.Module):
    def __init__(self, channels: int, emb_channels: int, dropout: float, out_channels: int | None = None,
                 use_scale_shift_norm: bool = False, up: bool = False, down: bool = False):
        super().__init__()
        out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_layers = nn.Sequential(GroupNorm32(channels), nn.SiLU(),
                                       nn.Conv2d(channels, out_channels, 3, padding=1))
        self.updown = up or down
        self.h_upd = Resample(channels, up, False) if self.updown else nn.Identity()
        self.x_upd = Resample(channels, up, False) if self.updown else nn.Identity()
        emb_out = out_channels * (2 if use_scale_shift_norm else 1)  # scale and shift, or a bias only
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, emb_out))
        self.out_layers = nn.Sequential(GroupNorm32(out_channels), nn.SiLU(), nn.Dropout(dropout),
                                        nn.Conv2d(out_channels, out_channels, 3, padding=1))
        nn.init.zeros_(self.out_layers[3].weight)
        nn.init.zeros_(self.out_layers[3].bias)
        self.skip_connection = nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.updown:  # resample between the norm/act and the conv, on both paths
            h = self.in_layers[2](self.h_upd(self.in_layers[:2](x)))
            x = self.x_upd(x)
        else:
            h = self.in_layers(x)
        e = self.emb_layers(emb).to(h.dtype)[:, :, None, None]
        if self.use_scale_shift_norm:
            scale, shift = e.chunk(2, dim=1)
            h = self.out_layers[1:](self.out_layers[0](h) * (1 + scale) + shift)
        else:
            h = self.out_layers(h + e)
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    def __init__(self, channels: int, num_heads: int = 1, num_head_channels: int = -1):
        super().__init__()
        self.num_heads = num_heads if num_head_channels == -1 else channels // num_head_channels
        self.norm = GroupNorm32(channels)
        self.qkv = nn.Conv2d(channels, channels * 3, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.num_heads, c // self.num_heads, h * w)
        q, k, v = qkv.transpose(-1, -2).unbind(1)  # each (B, heads, HW, dim)
        a = sdpa(q, k, v)  # softmax(q k^T / sqrt(dim)) v; written out under a JVP (forward_ad.py)
        return x + self.proj_out(a.transpose(-1, -2).reshape(b, c, h, w))


@register_network("adm_unet")
class ADMUNet(nn.Module):
    """OpenAI's UNetModel, 2-D. `attention_resolutions` are in pixels (their CLI's convention, e.g. 32,16,8).

    forward(x (B, C, H, W), t (B,) OpenAI time input, cond (B,) class ids or None) -> (B, out_channels, H, W).
    """

    def __init__(self, image_size: int = 64, in_channels: int = 3, model_channels: int = 128,
                 out_channels: int = 3, num_res_blocks: int = 2, attention_resolutions=(32, 16, 8),
                 dropout: float = 0.0, channel_mult=(1, 2, 3, 4), conv_resample: bool = True, num_classes: int = 0,
                 num_heads: int = 1, num_head_channels: int = -1, use_scale_shift_norm: bool = False,
                 resblock_updown: bool = False):
        super().__init__()
        self.model_channels, self.num_classes = model_channels, int(num_classes or 0)
        attn_ds = {image_size // int(r) for r in attention_resolutions}
        emb_dim = model_channels * 4
        res = dict(emb_channels=emb_dim, dropout=dropout, use_scale_shift_norm=use_scale_shift_norm)
        attn = dict(num_heads=num_heads, num_head_channels=num_head_channels)
        self.time_embed = nn.Sequential(nn.Linear(model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        if self.num_classes:
            self.label_emb = nn.Embedding(self.num_classes, emb_dim)

        ch = int(channel_mult[0] * model_channels)
        self.input_blocks = nn.ModuleList([EmbedSequential(nn.Conv2d(in_channels, ch, 3, padding=1))])
        skip_chans, ds = [ch], 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers = [ResBlock(ch, out_channels=int(mult * model_channels), **res)]
                ch = int(mult * model_channels)
                if ds in attn_ds:
                    layers.append(AttentionBlock(ch, **attn))
                self.input_blocks.append(EmbedSequential(*layers))
                skip_chans.append(ch)
            if level != len(channel_mult) - 1:
                down = ResBlock(ch, down=True, **res) if resblock_updown else Resample(ch, False, conv_resample)
                self.input_blocks.append(EmbedSequential(down))
                skip_chans.append(ch)
                ds *= 2

        self.middle_block = EmbedSequential(ResBlock(ch, **res), AttentionBlock(ch, **attn), ResBlock(ch, **res))

        self.output_blocks = nn.ModuleList()
        for level, mult in list(enumerate(channel_mult))[::-1]:
            for i in range(num_res_blocks + 1):
                layers = [ResBlock(ch + skip_chans.pop(), out_channels=int(model_channels * mult), **res)]
                ch = int(model_channels * mult)
                if ds in attn_ds:
                    layers.append(AttentionBlock(ch, **attn))
                if level and i == num_res_blocks:
                    layers.append(ResBlock(ch, up=True, **res) if resblock_updown
                                  else Resample(ch, True, conv_resample))
                    ds //= 2
                self.output_blocks.append(EmbedSequential(*layers))

        self.out = nn.Sequential(GroupNorm32(ch), nn.SiLU(), nn.Conv2d(ch, out_channels, 3, padding=1))
        nn.init.zeros_(self.out[2].weight)
        nn.init.zeros_(self.out[2].bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond=None) -> torch.Tensor:
        emb = self.time_embed(timestep_embedding(t.reshape(-1), self.model_channels).to(x.dtype))
        if self.num_classes:
            if cond is None:
                raise ValueError("this ADM UNet is class-conditional: pass class labels (B,) as cond")
            emb = emb + self.label_emb(torch.as_tensor(cond, device=x.device).long().reshape(-1))
        hs, h = [], x
        for module in self.input_blocks:
            h = module(h, emb)
            hs.append(h)
        h = self.middle_block(h, emb)
        for module in self.output_blocks:
            h = module(torch.cat([h, hs.pop()], dim=1), emb)
        return self.out(h)
