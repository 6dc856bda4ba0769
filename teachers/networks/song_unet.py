"""SongUNet: the DDPM++ and NCSN++ architectures (Song et al. 2021) as NVlabs' EDM repackaged them.

Module and parameter names follow EDM's `.pkl` files (`map_noise`, `enc.32x32_block0.conv0.weight`,
`dec.32x32_aux_conv.bias`, ...), so `teachers/edm.py` loads their tensors by name. The constructor
takes EDM's own kwargs, the ones recorded in each pickle's persistence record.

Variants (EDM train.py): DDPM++ = positional embedding, standard encoder, filter [1, 1];
NCSN++ = Fourier embedding (2x channels), residual encoder, filter [1, 3, 3, 1]. The CIFAR-10 configs
use model_channels 128, channel_mult [2, 2, 2], 4 blocks, attention at 16x16, augment_dim 9 (55.7M).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as tF
from torch import nn

from teachers.networks import register_network
from teachers.networks.edm_layers import (
    Conv2d,
    FourierEmbedding,
    GroupNorm,
    Linear,
    PositionalEmbedding,
    UNetBlock,
    labels_to_onehot,
)


@register_network("song_unet")
class SongUNet(nn.Module):
    """F-network: (x_in (B, C, H, W), c_noise (B,), cond labels (B,) / one-hot / None) -> (B, C, H, W)."""

    def __init__(self, img_resolution: int, in_channels: int, out_channels: int, label_dim: int = 0,
                 augment_dim: int = 0, model_channels: int = 128, channel_mult=(1, 2, 2, 2),
                 channel_mult_emb: int = 4, num_blocks: int = 4, attn_resolutions=(16,), dropout: float = 0.10,
                 label_dropout: float = 0.0, embedding_type: str = "positional", channel_mult_noise: int = 1,
                 encoder_type: str = "standard", decoder_type: str = "standard", resample_filter=(1, 1)):
        if embedding_type not in ("fourier", "positional"):
            raise ValueError(f"embedding_type must be 'fourier' or 'positional', got {embedding_type!r}")
        if encoder_type not in ("standard", "skip", "residual") or decoder_type not in ("standard", "skip"):
            raise ValueError(f"unknown encoder_type {encoder_type!r} / decoder_type {decoder_type!r}")
        super().__init__()
        self.label_dim, self.label_dropout = int(label_dim), float(label_dropout)
        emb_channels = model_channels * channel_mult_emb
        noise_channels = model_channels * channel_mult_noise
        init = dict(init_mode="xavier_uniform")
        init_zero = dict(init_mode="xavier_uniform", init_weight=1e-5)
        init_attn = dict(init_mode="xavier_uniform", init_weight=math.sqrt(0.2))
        block = dict(emb_channels=emb_channels, num_heads=1, dropout=dropout, skip_scale=math.sqrt(0.5), eps=1e-6,
                     resample_filter=resample_filter, resample_proj=True, adaptive_scale=False,
                     init=init, init_zero=init_zero, init_attn=init_attn)

        # Mapping: noise (and class, augmentation) labels -> the embedding every block reads.
        self.map_noise = PositionalEmbedding(noise_channels, endpoint=True) if embedding_type == "positional" \
            else FourierEmbedding(noise_channels)
        self.map_label = Linear(label_dim, noise_channels, **init) if label_dim else None
        self.map_augment = Linear(augment_dim, noise_channels, bias=False, **init) if augment_dim else None
        self.map_layer0 = Linear(noise_channels, emb_channels, **init)
        self.map_layer1 = Linear(emb_channels, emb_channels, **init)

        # Encoder.
        self.enc = nn.ModuleDict()
        cout = caux = in_channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level == 0:
                cin, cout = cout, model_channels
                self.enc[f"{res}x{res}_conv"] = Conv2d(cin, cout, 3, **init)
            else:
                self.enc[f"{res}x{res}_down"] = UNetBlock(cout, cout, down=True, **block)
                if encoder_type == "skip":
                    self.enc[f"{res}x{res}_aux_down"] = Conv2d(caux, caux, 0, down=True,
                                                               resample_filter=resample_filter)
                    self.enc[f"{res}x{res}_aux_skip"] = Conv2d(caux, cout, 1, **init)
                if encoder_type == "residual":
                    self.enc[f"{res}x{res}_aux_residual"] = Conv2d(caux, cout, 3, down=True,
                                                                   resample_filter=resample_filter,
                                                                   fused_resample=True, **init)
                    caux = cout
            for idx in range(num_blocks):
                cin, cout = cout, model_channels * mult
                self.enc[f"{res}x{res}_block{idx}"] = UNetBlock(cin, cout, attention=res in attn_resolutions,
                                                                **block)
        skips = [b.out_channels for name, b in self.enc.items() if "aux" not in name]

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
                attn = idx == num_blocks and res in attn_resolutions
                self.dec[f"{res}x{res}_block{idx}"] = UNetBlock(cin, cout, attention=attn, **block)
            if decoder_type == "skip" or level == 0:
                if decoder_type == "skip" and level < len(channel_mult) - 1:
                    self.dec[f"{res}x{res}_aux_up"] = Conv2d(out_channels, out_channels, 0, up=True,
                                                             resample_filter=resample_filter)
                self.dec[f"{res}x{res}_aux_norm"] = GroupNorm(cout, eps=1e-6)
                self.dec[f"{res}x{res}_aux_conv"] = Conv2d(cout, out_channels, 3, **init_zero)

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, cond=None,
                augment_labels: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.map_noise(c_noise.to(x.dtype).reshape(-1))
        emb = emb.reshape(emb.shape[0], 2, -1).flip(1).reshape(*emb.shape)  # DDPM++ wants [sin, cos]
        if self.map_label is not None:
            labels = labels_to_onehot(cond, self.label_dim, x.shape[0], x.device, x.dtype)
            if self.training and self.label_dropout:
                keep = torch.rand(x.shape[0], 1, device=x.device) >= self.label_dropout
                labels = labels * keep.to(labels.dtype)
            emb = emb + self.map_label(labels * math.sqrt(self.label_dim))
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels.to(x.dtype))
        emb = tF.silu(self.map_layer1(tF.silu(self.map_layer0(emb))))

        # Encoder: every non-aux output is kept for the decoder's skip connections.
        skips, aux = [], x
        for name, block in self.enc.items():
            if "aux_down" in name:
                aux = block(aux)
            elif "aux_skip" in name:
                x = skips[-1] = x + block(aux)
            elif "aux_residual" in name:
                x = skips[-1] = aux = (x + block(aux)) / math.sqrt(2)
            else:
                x = block(x, emb) if isinstance(block, UNetBlock) else block(x)
                skips.append(x)

        # Decoder: concatenate a skip whenever the next block expects more channels.
        aux = tmp = None
        for name, block in self.dec.items():
            if "aux_up" in name:
                aux = block(aux)
            elif "aux_norm" in name:
                tmp = block(x)
            elif "aux_conv" in name:
                tmp = block(tF.silu(tmp))
                aux = tmp if aux is None else tmp + aux
            else:
                if x.shape[1] != block.in_channels:
                    x = torch.cat([x, skips.pop()], dim=1)
                x = block(x, emb)
        return aux


# EDM train.py's two SongUNet presets (the CIFAR-10 values; every kwarg can be overridden).
DDPMPP = dict(embedding_type="positional", encoder_type="standard", decoder_type="standard",
              channel_mult_noise=1, resample_filter=[1, 1], model_channels=128, channel_mult=[2, 2, 2])
NCSNPP = dict(embedding_type="fourier", encoder_type="residual", decoder_type="standard",
              channel_mult_noise=2, resample_filter=[1, 3, 3, 1], model_channels=128, channel_mult=[2, 2, 2])


@register_network("ddpmpp")
def ddpmpp(img_resolution: int = 32, in_channels: int = 3, out_channels: int | None = None, label_dim: int = 0,
           **kwargs) -> SongUNet:
    return SongUNet(img_resolution, in_channels, out_channels or in_channels, label_dim,
                    **{**DDPMPP, **kwargs})


@register_network("ncsnpp")
def ncsnpp(img_resolution: int = 32, in_channels: int = 3, out_channels: int | None = None, label_dim: int = 0,
           **kwargs) -> SongUNet:
    return SongUNet(img_resolution, in_channels, out_channels or in_channels, label_dim,
                    **{**NCSNPP, **kwargs})
