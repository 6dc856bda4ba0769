"""DhariwalUNet: the ADM architecture (Dhariwal & Nichol 2021) as NVlabs' EDM repackaged it.

Parameter names follow EDM's ImageNet-64 `.pkl` files (`map_label`, `enc.64x64_block0.qkv.weight`,
`out_norm`, `out_conv`, ...). This is not the OpenAI key layout (`input_blocks.*`); for OpenAI's own
checkpoints see `adm_unet.py`. EDM's ImageNet-64 config: model_channels 192, channel_mult [1, 2, 3, 4],
3 blocks, attention at 32/16/8, 64 channels per head, scale-shift norm (adaptive_scale).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as tF
from torch import nn

from teachers.networks import register_network
from teachers.networks.edm_layers import Conv2d, GroupNorm, Linear, PositionalEmbedding, UNetBlock, labels_to_onehot


@register_network("dhariwal_unet")
class DhariwalUNet(nn.Module):
    """F-network: (x_in (B, C, H, W), c_noise (B,), cond labels (B,) / one-hot / None) -> (B, C, H, W)."""

    def __init__(self, img_resolution: int, in_channels: int, out_channels: int, label_dim: int = 0,
                 augment_dim: int = 0, model_channels: int = 192, channel_mult=(1, 2, 3, 4),
                 channel_mult_emb: int = 4, num_blocks: int = 3, attn_resolutions=(32, 16, 8),
                 dropout: float = 0.10, label_dropout: float = 0.0):
        super().__init__()
        self.label_dim, self.label_dropout = int(label_dim), float(label_dropout)
        emb_channels = model_channels * channel_mult_emb
        init = dict(init_mode="kaiming_uniform", init_weight=math.sqrt(1 / 3), init_bias=math.sqrt(1 / 3))
        init_zero = dict(init_mode="kaiming_uniform", init_weight=0, init_bias=0)
        block = dict(emb_channels=emb_channels, channels_per_head=64, dropout=dropout, init=init,
                     init_zero=init_zero)

        # Mapping. ADM adds the class embedding after the noise MLP (SongUNet adds it before).
        self.map_noise = PositionalEmbedding(model_channels)
        self.map_augment = Linear(augment_dim, model_channels, bias=False, **init_zero) if augment_dim else None
        self.map_layer0 = Linear(model_channels, emb_channels, **init)
        self.map_layer1 = Linear(emb_channels, emb_channels, **init)
        self.map_label = Linear(label_dim, emb_channels, bias=False, init_mode="kaiming_normal",
                                init_weight=math.sqrt(label_dim)) if label_dim else None

        # Encoder.
        self.enc = nn.ModuleDict()
        cout = in_channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level == 0:
                cin, cout = cout, model_channels * mult
                self.enc[f"{res}x{res}_conv"] = Conv2d(cin, cout, 3, **init)
            else:
                self.enc[f"{res}x{res}_down"] = UNetBlock(cout, cout, down=True, **block)
            for idx in range(num_blocks):
                cin, cout = cout, model_channels * mult
                self.enc[f"{res}x{res}_block{idx}"] = UNetBlock(cin, cout, attention=res in attn_resolutions,
                                                                **block)
        skips = [b.out_channels for b in self.enc.values()]

        # Decoder.
        self.dec = nn.ModuleDict()
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = img_resolution >> level
            if level == len(channel_mult) - 1:
                self.dec[f"{res}x{res}_in0"] = UNetBlock(cout, cout, attention=True, **block)
                self.dec[f"{res}x{res}_in1"] = UNetBlock(cout, cout, **block)
            else:
                self.dec[f"{res}x{res}_up"] = UNetBlock(cout, cout, up=True, **block)
            for idx in range(num_blocks + 1):
                cin, cout = cout + skips.pop(), model_channels * mult
                self.dec[f"{res}x{res}_block{idx}"] = UNetBlock(cin, cout, attention=res in attn_resolutions,
                                                                **block)
        self.out_norm = GroupNorm(cout)
        self.out_conv = Conv2d(cout, out_channels, 3, **init_zero)

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, cond=None,
                augment_labels: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.map_noise(c_noise.to(x.dtype).reshape(-1))
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels.to(x.dtype))
        emb = self.map_layer1(tF.silu(self.map_layer0(emb)))
        if self.map_label is not None:
            labels = labels_to_onehot(cond, self.label_dim, x.shape[0], x.device, x.dtype)
            if self.training and self.label_dropout:
                keep = torch.rand(x.shape[0], 1, device=x.device) >= self.label_dropout
                labels = labels * keep.to(labels.dtype)
            emb = emb + self.map_label(labels)
        emb = tF.silu(emb)

        skips = []
        for block in self.enc.values():
            x = block(x, emb) if isinstance(block, UNetBlock) else block(x)
            skips.append(x)
        for block in self.dec.values():
            if x.shape[1] != block.in_channels:
                x = torch.cat([x, skips.pop()], dim=1)
            x = block(x, emb)
        return self.out_conv(tF.silu(self.out_norm(x)))
