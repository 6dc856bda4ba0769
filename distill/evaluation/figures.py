"""Pictures people would rather look at than read: sample grids and side-by-side comparisons."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """[-1, 1] images (N, C, H, W) -> uint8 (N, H, W, C) (DESIGN.md: pixels map linearly to [-1, 1])."""
    x = ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def tile(x: torch.Tensor, cols: int | None = None, pad: int = 1) -> np.ndarray:
    """(N, C, H, W) in [-1, 1] -> one (rows*H, cols*W, C) uint8 mosaic."""
    imgs = to_uint8(x)
    n, h, w, c = imgs.shape
    cols = cols or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    canvas = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), 255, np.uint8)
    for i in range(n):
        r, q = divmod(i, cols)
        canvas[pad + r * (h + pad):pad + r * (h + pad) + h, pad + q * (w + pad):pad + q * (w + pad) + w] = imgs[i]
    return canvas


def save_grid(x: torch.Tensor, path: str | Path, cols: int | None = None) -> None:
    from PIL import Image

    arr = tile(x, cols)
    Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr).save(path)


def save_comparison(panels: dict[str, torch.Tensor], path: str | Path, title: str = "") -> None:
    """Panels side by side, one titled column each. Image data (N, C, H, W) is tiled; vectors (N, 2)
    are scattered."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.6))
    for ax, (name, x) in zip(np.atleast_1d(axes), panels.items()):
        if x.ndim == 4:
            arr = tile(x, cols=8)
            ax.imshow(arr[..., 0] if arr.shape[-1] == 1 else arr, cmap="gray", interpolation="nearest")
        else:
            pts = x.flatten(1).cpu().numpy()
            ax.scatter(pts[:, 0], pts[:, 1], s=2, alpha=0.5)
            ax.set_aspect("equal")
        ax.set_title(name, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
