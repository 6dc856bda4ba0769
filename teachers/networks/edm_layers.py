"""Layers of NVlabs' EDM networks (Karras et al. 2022), with the parameter names of their `.pkl` files.

SongUNet and DhariwalUNet are built from these, so that a state dict read from an EDM pickle loads by
name: `enc.16x16_block0.norm0.weight`, `...conv0.resample_filter`, `...qkv.weight` and so on
(FACTS.md, "Checkpoint formats"). Written from the published architecture description; the details
that decide numerical parity are noted where they are coded.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as tF
from torch import nn

from teachers.networks.forward_ad import wide


def weight_init(shape, mode: str, fan_in: int, fan_out: int) -> torch.Tensor:
    """The four initialisations EDM's configurations name (xavier/kaiming, uniform/normal)."""
    if mode == "xavier_uniform":
        return math.sqrt(6 / (fan_in + fan_out)) * (torch.rand(*shape) * 2 - 1)
    if mode == "xavier_normal":
        return math.sqrt(2 / (fan_in + fan_out)) * torch.randn(*shape)
    if mode == "kaiming_uniform":
        return math.sqrt(3 / fan_in) * (torch.rand(*shape) * 2 - 1)
    if mode == "kaiming_normal":
        return math.sqrt(1 / fan_in) * torch.randn(*shape)
    raise ValueError(f"unknown init mode {mode!r}")


class Linear(nn.Module):
    def __init__(self, in_features: int, out_features: int, bias: bool = True, init_mode: str = "kaiming_normal",
                 init_weight: float = 1.0, init_bias: float = 0.0):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        fans = dict(mode=init_mode, fan_in=in_features, fan_out=out_features)
        self.weight = nn.Parameter(weight_init([out_features, in_features], **fans) * init_weight)
        self.bias = nn.Parameter(weight_init([out_features], **fans) * init_bias) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.bias.to(x.dtype) if self.bias is not None else None
        return tF.linear(x, self.weight.to(x.dtype), b)


class Conv2d(nn.Module):
    """Convolution with optional 2x up/downsampling by a separable FIR filter.

    `kernel=0` is a pure resampler (the skip path of ADM-style up/down blocks). The filter is a buffer
    named `resample_filter`, present only when the layer resamples, as in EDM's files.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: int, bias: bool = True, up: bool = False,
                 down: bool = False, resample_filter=(1, 1), fused_resample: bool = False,
                 init_mode: str = "kaiming_normal", init_weight: float = 1.0, init_bias: float = 0.0):
        assert not (up and down)
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.up, self.down, self.fused_resample = up, down, fused_resample
        fans = dict(mode=init_mode, fan_in=in_channels * kernel * kernel, fan_out=out_channels * kernel * kernel)
        self.weight = nn.Parameter(weight_init([out_channels, in_channels, kernel, kernel], **fans) * init_weight) \
            if kernel else None
        self.bias = nn.Parameter(weight_init([out_channels], **fans) * init_bias) if kernel and bias else None
        f = torch.as_tensor(list(resample_filter), dtype=torch.float32)
        f = f.ger(f)[None, None] / f.sum().square()  # (1, 1, k, k), sums to 1
        self.register_buffer("resample_filter", f if up or down else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.to(x.dtype) if self.weight is not None else None
        f = self.resample_filter.to(x.dtype) if self.resample_filter is not None else None
        w_pad = w.shape[-1] // 2 if w is not None else 0
        f_pad = (f.shape[-1] - 1) // 2 if f is not None else 0
        if self.fused_resample and self.up and w is not None:
            x = tF.conv_transpose2d(x, f.mul(4).tile([self.in_channels, 1, 1, 1]), groups=self.in_channels,
                                    stride=2, padding=w_pad + f_pad)
            x = tF.conv2d(x, w)
        elif self.fused_resample and self.down and w is not None:
            # NCSN++'s residual encoder path: convolve first, then filter and decimate.
            x = tF.conv2d(x, w, padding=w_pad + f_pad)
            x = tF.conv2d(x, f.tile([self.out_channels, 1, 1, 1]), groups=self.out_channels, stride=2)
        else:
            if self.up:
                x = tF.conv_transpose2d(x, f.mul(4).tile([self.in_channels, 1, 1, 1]), groups=self.in_channels,
                                        stride=2, padding=f_pad)
            if self.down:
                x = tF.conv2d(x, f.tile([self.in_channels, 1, 1, 1]), groups=self.in_channels, stride=2,
                              padding=f_pad)
            if w is not None:
                x = tF.conv2d(x, w, padding=w_pad)
        if self.bias is not None:
            x = x + self.bias.to(x.dtype).reshape(1, -1, 1, 1)
        return x


class GroupNorm(nn.Module):
    """GroupNorm with groups = min(32, C // 4) (FACTS.md, "port gotchas")."""

    def __init__(self, num_channels: int, num_groups: int = 32, min_channels_per_group: int = 4, eps: float = 1e-5):
        super().__init__()
        self.num_groups = max(1, min(num_groups, num_channels // min_channels_per_group))
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return tF.group_norm(x, self.num_groups, self.weight.to(x.dtype), self.bias.to(x.dtype), self.eps)


class UNetBlock(nn.Module):
    """Residual block with optional up/downsampling and self-attention (the union of DDPM++, NCSN++, ADM).

    Attention reads qkv channels laid out (heads, dim, three) as EDM's files store them.
    """

    def __init__(self, in_channels: int, out_channels: int, emb_channels: int, up: bool = False,
                 down: bool = False, attention: bool = False, num_heads: int | None = None,
                 channels_per_head: int = 64, dropout: float = 0.0, skip_scale: float = 1.0, eps: float = 1e-5,
                 resample_filter=(1, 1), resample_proj: bool = False, adaptive_scale: bool = True,
                 init: dict | None = None, init_zero: dict | None = None, init_attn: dict | None = None):
        super().__init__()
        init = init or {}
        init_zero = init_zero if init_zero is not None else dict(init_weight=0)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.num_heads = 0 if not attention else (num_heads if num_heads is not None
                                                  else out_channels // channels_per_head)
        self.dropout, self.skip_scale, self.adaptive_scale = dropout, float(skip_scale), adaptive_scale
        self.norm0 = GroupNorm(in_channels, eps=eps)
        self.conv0 = Conv2d(in_channels, out_channels, 3, up=up, down=down, resample_filter=resample_filter,
                            **init)
        self.affine = Linear(emb_channels, out_channels * (2 if adaptive_scale else 1), **init)
        self.norm1 = GroupNorm(out_channels, eps=eps)
        self.conv1 = Conv2d(out_channels, out_channels, 3, **init_zero)
        self.skip = None
        if out_channels != in_channels or up or down:
            kernel = 1 if resample_proj or out_channels != in_channels else 0
            self.skip = Conv2d(in_channels, out_channels, kernel, up=up, down=down,
                               resample_filter=resample_filter, **init)
        if self.num_heads:
            self.norm2 = GroupNorm(out_channels, eps=eps)
            self.qkv = Conv2d(out_channels, out_channels * 3, 1, **(init_attn if init_attn is not None else init))
            self.proj = Conv2d(out_channels, out_channels, 1, **init_zero)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        orig = x
        x = self.conv0(tF.silu(self.norm0(x)))
        params = self.affine(emb)[:, :, None, None].to(x.dtype)
        if self.adaptive_scale:  # ADM: scale-and-shift norm
            scale, shift = params.chunk(2, dim=1)
            x = tF.silu(torch.addcmul(shift, self.norm1(x), scale + 1))
        else:  # DDPM++/NCSN++: additive embedding
            x = tF.silu(self.norm1(x + params))
        x = self.conv1(tF.dropout(x, p=self.dropout, training=self.training))
        x = (x + (self.skip(orig) if self.skip is not None else orig)) * self.skip_scale
        if self.num_heads:
            b, c, h, w = x.shape
            qkv = self.qkv(self.norm2(x)).reshape(b * self.num_heads, c // self.num_heads, 3, h * w)
            q, k, v = qkv.unbind(2)  # each (B*heads, dim, HW)
            # Softmax in float32 whatever the activation dtype, as EDM's AttentionOp does (float64 stays so).
            q32, k32 = q.to(wide(q.dtype)), k.to(wide(k.dtype))
            logits = torch.einsum("ncq,nck->nqk", q32, k32 / math.sqrt(k.shape[1]))
            attn = logits.softmax(dim=2).to(q.dtype)
            a = torch.einsum("nqk,nck->ncq", attn, v)
            x = (self.proj(a.reshape(b, c, h, w)) + x) * self.skip_scale
        return x


class PositionalEmbedding(nn.Module):
    """Transformer sinusoids of the noise label, returned as [cos, sin] (DDPM++ and ADM)."""

    def __init__(self, num_channels: int, max_positions: int = 10000, endpoint: bool = False):
        super().__init__()
        self.num_channels, self.max_positions, self.endpoint = num_channels, max_positions, endpoint

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = self.num_channels // 2
        freqs = torch.arange(half, dtype=torch.float32, device=x.device) / (half - (1 if self.endpoint else 0))
        freqs = (1 / self.max_positions) ** freqs
        x = x.ger(freqs.to(x.dtype))
        return torch.cat([x.cos(), x.sin()], dim=1)


class FourierEmbedding(nn.Module):
    """Random Fourier features of the noise label (NCSN++); `freqs` is a saved buffer."""

    def __init__(self, num_channels: int, scale: float = 16):
        super().__init__()
        self.register_buffer("freqs", torch.randn(num_channels // 2) * scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.ger((2 * math.pi * self.freqs).to(x.dtype))
        return torch.cat([x.cos(), x.sin()], dim=1)


def labels_to_onehot(cond, label_dim: int, batch: int, device, dtype) -> torch.Tensor | None:
    """Class labels (B,) ints, or already one-hot/soft (B, label_dim), or None -> (B, label_dim) or None.

    None on a conditional net gives the all-zero vector: EDM's convention for "no class", which is what
    label-dropout (classifier-free guidance) training saw.
    """
    if not label_dim:
        return None
    if cond is None:
        return torch.zeros(batch, label_dim, device=device, dtype=dtype)
    cond = torch.as_tensor(cond, device=device)
    if cond.ndim == 1:
        return tF.one_hot(cond.long(), label_dim).to(dtype)
    return cond.to(dtype).reshape(-1, label_dim)
