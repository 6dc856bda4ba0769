"""The EDM2 UNet (Karras et al. 2024, "Analyzing and Improving the Training Dynamics"), magnitude-preserving.

Names follow NVlabs' EDM2 `.pkl` files (`emb_fourier`, `emb_noise`, `emb_label`, `enc.64x64_block0.conv_res0`,
`...emb_gain`, `out_gain`, ...). Every weight is normalised at run time (forced weight normalisation,
eq. 66): the stored float16 tensors are read as directions only. Equation numbers are the paper's.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as tF
from torch import nn

from teachers.networks import register_network
from teachers.networks.edm_layers import labels_to_onehot
from teachers.networks.forward_ad import forward_mode_active, wide


def normalize(x: torch.Tensor, dim=None, eps: float = 1e-4) -> torch.Tensor:
    """Unit magnitude over `dim` (default: all but the first), norms in float32 (float64 stays float64)."""
    dim = list(range(1, x.ndim)) if dim is None else dim
    norm = torch.linalg.vector_norm(x, dim=dim, keepdim=True, dtype=wide(x.dtype))
    norm = torch.add(eps, norm, alpha=math.sqrt(norm.numel() / x.numel()))
    return x / norm.to(x.dtype)


def resample(x: torch.Tensor, f=(1, 1), mode: str = "keep") -> torch.Tensor:
    if mode == "keep":
        return x
    f = np.float32(f)
    pad = (len(f) - 1) // 2
    f = torch.as_tensor(np.outer(f / f.sum(), f / f.sum())[None, None], dtype=x.dtype, device=x.device)
    c = x.shape[1]
    if mode == "down":
        return tF.conv2d(x, f.tile([c, 1, 1, 1]), groups=c, stride=2, padding=(pad,))
    return tF.conv_transpose2d(x, (f * 4).tile([c, 1, 1, 1]), groups=c, stride=2, padding=(pad,))


def mp_silu(x: torch.Tensor) -> torch.Tensor:
    return tF.silu(x) / 0.596  # eq. 81


def mp_sum(a: torch.Tensor, b: torch.Tensor, t: float = 0.5) -> torch.Tensor:
    return a.lerp(b, t) / math.sqrt((1 - t) ** 2 + t**2)  # eq. 88


def mp_cat(a: torch.Tensor, b: torch.Tensor, dim: int = 1, t: float = 0.5) -> torch.Tensor:
    na, nb = a.shape[dim], b.shape[dim]  # eq. 103
    c = math.sqrt((na + nb) / ((1 - t) ** 2 + t**2))
    return torch.cat([c / math.sqrt(na) * (1 - t) * a, c / math.sqrt(nb) * t * b], dim=dim)


class MPFourier(nn.Module):
    def __init__(self, num_channels: int, bandwidth: float = 1):
        super().__init__()
        self.register_buffer("freqs", 2 * math.pi * torch.randn(num_channels) * bandwidth)
        self.register_buffer("phases", 2 * math.pi * torch.rand(num_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = wide(x.dtype)
        y = x.to(dtype).ger(self.freqs.to(dtype)) + self.phases.to(dtype)
        return (y.cos() * math.sqrt(2)).to(x.dtype)  # eq. 75


class MPConv(nn.Module):
    """Magnitude-preserving conv / linear (eq. 47) with weight normalisation applied on every call."""

    def __init__(self, in_channels: int, out_channels: int, kernel):
        super().__init__()
        self.out_channels = out_channels
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, *kernel))

    def forward(self, x: torch.Tensor, gain=1) -> torch.Tensor:
        w = self.weight.to(wide(self.weight.dtype))
        if self.training:  # forced weight normalisation (eq. 66): keep the stored weights unit-norm
            with torch.no_grad():
                if not forward_mode_active():
                    self.weight.copy_(normalize(w))
                elif w.dtype == self.weight.dtype:  # w aliases the weights, which a JVP may not write (torch.func):
                    w = normalize(w)                 # take the values the write would have given them
        w = normalize(w) * (gain / math.sqrt(w[0].numel()))
        w = w.to(x.dtype)
        if w.ndim == 2:
            return x @ w.t()
        return tF.conv2d(x, w, padding=(w.shape[-1] // 2,))


class Block(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, emb_channels: int, flavor: str = "enc",
                 resample_mode: str = "keep", resample_filter=(1, 1), attention: bool = False,
                 channels_per_head: int = 64, dropout: float = 0.0, res_balance: float = 0.3,
                 attn_balance: float = 0.3, clip_act: float | None = 256):
        super().__init__()
        self.out_channels, self.flavor = out_channels, flavor
        self.resample_filter, self.resample_mode = list(resample_filter), resample_mode
        self.num_heads = out_channels // channels_per_head if attention else 0
        self.dropout, self.res_balance, self.attn_balance, self.clip_act = dropout, res_balance, attn_balance, clip_act
        self.emb_gain = nn.Parameter(torch.zeros([]))
        self.conv_res0 = MPConv(out_channels if flavor == "enc" else in_channels, out_channels, [3, 3])
        self.emb_linear = MPConv(emb_channels, out_channels, [])
        self.conv_res1 = MPConv(out_channels, out_channels, [3, 3])
        self.conv_skip = MPConv(in_channels, out_channels, [1, 1]) if in_channels != out_channels else None
        self.attn_qkv = MPConv(out_channels, out_channels * 3, [1, 1]) if self.num_heads else None
        self.attn_proj = MPConv(out_channels, out_channels, [1, 1]) if self.num_heads else None

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        x = resample(x, self.resample_filter, self.resample_mode)
        if self.flavor == "enc":
            if self.conv_skip is not None:
                x = self.conv_skip(x)
            x = normalize(x, dim=1)  # pixel norm
        y = self.conv_res0(mp_silu(x))
        c = self.emb_linear(emb, gain=self.emb_gain) + 1
        y = mp_silu(y * c[:, :, None, None].to(y.dtype))
        if self.training and self.dropout:
            y = tF.dropout(y, p=self.dropout)
        y = self.conv_res1(y)
        if self.flavor == "dec" and self.conv_skip is not None:
            x = self.conv_skip(x)
        x = mp_sum(x, y, t=self.res_balance)
        if self.num_heads:
            y = self.attn_qkv(x)
            y = y.reshape(y.shape[0], self.num_heads, -1, 3, y.shape[2] * y.shape[3])  # (heads, dim, three)
            q, k, v = normalize(y, dim=2).unbind(3)
            w = torch.einsum("nhcq,nhck->nhqk", q, k / math.sqrt(q.shape[2])).softmax(dim=3)
            y = self.attn_proj(torch.einsum("nhqk,nhck->nhcq", w, v).reshape(*x.shape))
            x = mp_sum(x, y, t=self.attn_balance)
        if self.clip_act is not None:
            x = x.clip(-self.clip_act, self.clip_act)
        return x


@register_network("edm2_unet")
class EDM2UNet(nn.Module):
    """F-network: (x_in (B, C, H, W), c_noise (B,), cond labels / one-hot / None) -> (B, C, H, W)."""

    def __init__(self, img_resolution: int, img_channels: int, label_dim: int = 0, model_channels: int = 192,
                 channel_mult=(1, 2, 3, 4), channel_mult_noise=None, channel_mult_emb=None, num_blocks: int = 3,
                 attn_resolutions=(16, 8), label_balance: float = 0.5, concat_balance: float = 0.5,
                 **block_kwargs):
        super().__init__()
        cblock = [model_channels * m for m in channel_mult]
        cnoise = model_channels * channel_mult_noise if channel_mult_noise is not None else cblock[0]
        cemb = model_channels * channel_mult_emb if channel_mult_emb is not None else max(cblock)
        self.label_dim, self.label_balance, self.concat_balance = int(label_dim), label_balance, concat_balance
        self.out_gain = nn.Parameter(torch.zeros([]))
        self.emb_fourier = MPFourier(cnoise)
        self.emb_noise = MPConv(cnoise, cemb, [])
        self.emb_label = MPConv(label_dim, cemb, []) if label_dim else None

        self.enc = nn.ModuleDict()
        cout = img_channels + 1  # a constant-one channel lets the first conv see the image border
        for level, channels in enumerate(cblock):
            res = img_resolution >> level
            if level == 0:
                cin, cout = cout, channels
                self.enc[f"{res}x{res}_conv"] = MPConv(cin, cout, [3, 3])
            else:
                self.enc[f"{res}x{res}_down"] = Block(cout, cout, cemb, "enc", "down", **block_kwargs)
            for idx in range(num_blocks):
                cin, cout = cout, channels
                self.enc[f"{res}x{res}_block{idx}"] = Block(cin, cout, cemb, "enc",
                                                            attention=res in attn_resolutions, **block_kwargs)
        self.dec = nn.ModuleDict()
        skips = [b.out_channels for b in self.enc.values()]
        for level, channels in reversed(list(enumerate(cblock))):
            res = img_resolution >> level
            if level == len(cblock) - 1:
                self.dec[f"{res}x{res}_in0"] = Block(cout, cout, cemb, "dec", attention=True, **block_kwargs)
                self.dec[f"{res}x{res}_in1"] = Block(cout, cout, cemb, "dec", **block_kwargs)
            else:
                self.dec[f"{res}x{res}_up"] = Block(cout, cout, cemb, "dec", "up", **block_kwargs)
            for idx in range(num_blocks + 1):
                cin, cout = cout + skips.pop(), channels
                self.dec[f"{res}x{res}_block{idx}"] = Block(cin, cout, cemb, "dec",
                                                            attention=res in attn_resolutions, **block_kwargs)
        self.out_conv = MPConv(cout, img_channels, [3, 3])

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, cond=None) -> torch.Tensor:
        emb = self.emb_noise(self.emb_fourier(c_noise.reshape(-1).to(x.dtype)))
        if self.emb_label is not None:
            labels = labels_to_onehot(cond, self.label_dim, x.shape[0], x.device, x.dtype)
            emb = mp_sum(emb, self.emb_label(labels * math.sqrt(self.label_dim)), t=self.label_balance)
        emb = mp_silu(emb)
        x = torch.cat([x, torch.ones_like(x[:, :1])], dim=1)
        skips = []
        for name, block in self.enc.items():
            x = block(x) if "conv" in name else block(x, emb)
            skips.append(x)
        for name, block in self.dec.items():
            if "block" in name:
                x = mp_cat(x, skips.pop(), t=self.concat_balance)
            x = block(x, emb)
        return self.out_conv(x, gain=self.out_gain)
