"""A small UNet for CPU students: any image size, configurable width and depth, F-parameterised."""

from __future__ import annotations

import torch
import torch.nn.functional as tF
from torch import nn

from teachers.networks import register_network
from teachers.networks.embeddings import ConditionEmbedding


def _norm(ch: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, ch // 4) or 1, ch)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, emb_dim: int, dropout: float):
        super().__init__()
        self.norm0, self.conv0 = _norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.affine = nn.Linear(emb_dim, cout * 2)  # scale and shift from the noise embedding
        self.norm1, self.conv1 = _norm(cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.dropout = nn.Dropout(dropout)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()
        nn.init.zeros_(self.conv1.weight)
        nn.init.zeros_(self.conv1.bias)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv0(tF.silu(self.norm0(x)))
        scale, shift = self.affine(emb)[:, :, None, None].chunk(2, dim=1)
        h = tF.silu(self.norm1(h) * (1 + scale) + shift)
        return self.skip(x) + self.conv1(self.dropout(h))


@register_network("small_unet")
class SmallUNet(nn.Module):
    """Input (B, C, H, W), c_noise (B,), cond (B,) labels or None -> (B, C, H, W).

    `channel_mult` sets the number of resolutions (each level halves H and W with a strided conv);
    `num_blocks` residual blocks per level; the decoder mirrors the encoder with skip connections.
    `embedding_scale`: the noise embedding's top frequency (teachers/networks/embeddings.py); 1 is EDM's.
    """

    def __init__(self, in_channels: int = 1, width: int = 32, channel_mult: list[int] | tuple = (1, 2),
                 num_blocks: int = 1, num_classes: int = 0, dropout: float = 0.0, embedding_scale: float = 1.0):
        super().__init__()
        emb_dim = width * 2
        self.embed = ConditionEmbedding(width, num_classes, scale=embedding_scale)
        self.conv_in = nn.Conv2d(in_channels, width, 3, padding=1)
        chans = [width * m for m in channel_mult]
        self.down_blocks, self.downsamples = nn.ModuleList(), nn.ModuleList()
        skip_ch, ch = [width], width
        for level, c in enumerate(chans):
            blocks = nn.ModuleList()
            for _ in range(num_blocks):
                blocks.append(ResBlock(ch, c, emb_dim, dropout))
                ch = c
                skip_ch.append(ch)
            self.down_blocks.append(blocks)
            last = level == len(chans) - 1
            self.downsamples.append(nn.Identity() if last else nn.Conv2d(ch, ch, 3, stride=2, padding=1))
            if not last:
                skip_ch.append(ch)
        self.mid = ResBlock(ch, ch, emb_dim, dropout)
        self.up_blocks = nn.ModuleList()
        for level, c in reversed(list(enumerate(chans))):
            blocks = nn.ModuleList()
            for _ in range(num_blocks + (1 if level < len(chans) - 1 else 0)):
                blocks.append(ResBlock(ch + skip_ch.pop(), c, emb_dim, dropout))
                ch = c
            self.up_blocks.append(blocks)
        blocks_last = ResBlock(ch + skip_ch.pop(), width, emb_dim, dropout)
        self.up_blocks.append(nn.ModuleList([blocks_last]))
        self.norm_out = _norm(width)
        self.conv_out = nn.Conv2d(width, in_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, cond: torch.Tensor | None = None):
        emb = self.embed(c_noise, cond).to(x.dtype)
        h = self.conv_in(x)
        skips = [h]
        for blocks, down in zip(self.down_blocks, self.downsamples):
            for block in blocks:
                h = block(h, emb)
                skips.append(h)
            if not isinstance(down, nn.Identity):
                h = down(h)
                skips.append(h)
        h = self.mid(h, emb)
        for blocks in self.up_blocks:
            for block in blocks:
                skip = skips.pop()
                if h.shape[-2:] != skip.shape[-2:]:
                    h = tF.interpolate(h, size=skip.shape[-2:], mode="nearest")
                h = block(torch.cat([h, skip], dim=1), emb)
        return self.conv_out(tF.silu(self.norm_out(h)))
