"""Built-in data sets that need no download: RGB patches cut from scikit-learn's two sample photos.

(digits and toy2d come with their analytic teachers: teachers/analytic.py.)
"""

from __future__ import annotations

import numpy as np
import torch


def sample_image_patches(shape: tuple[int, ...], count: int, generator: torch.Generator) -> torch.Tensor:
    """`count` patches of (C, H, W) in [-1, 1] at random positions of china.jpg and flower.jpg
    (sklearn.datasets.load_sample_images, shipped with scikit-learn), alternating between the two."""
    from sklearn.datasets import load_sample_images

    if len(shape) != 3 or shape[0] not in (1, 3):
        raise ValueError(f"data.name=patches gives 1- or 3-channel images; the teacher expects "
                         f"{tuple(shape)}")
    channels, height, width = shape
    photos = [torch.from_numpy(np.asarray(img, dtype=np.float32)) for img in load_sample_images().images]
    out = torch.empty(count, channels, height, width)
    for i in range(count):
        photo = photos[i % len(photos)]  # (H, W, 3)
        ph, pw = photo.shape[:2]
        if height > ph or width > pw:
            raise ValueError(f"data.name=patches: {height}x{width} patches do not fit the {ph}x{pw} photos")
        top = int(torch.randint(0, ph - height + 1, (), generator=generator))
        left = int(torch.randint(0, pw - width + 1, (), generator=generator))
        patch = photo[top:top + height, left:left + width].permute(2, 0, 1)
        if channels == 1:  # ITU-R 601 luma, as PIL's convert("L")
            patch = (patch * torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)).sum(0, keepdim=True)
        out[i] = patch / 127.5 - 1.0
    return out
