"""An exact RGB teacher: the Gaussian mixture centred on colour patches of scikit-learn's sample photos.

The digits teacher is grey, so colorisation (CM paper, Alg. 4 with a luminance operator) would have
nothing to run on. This one is the same closed-form mixture denoiser (teachers/analytic.py), with
components on k x k RGB patches cut at random places from `china.jpg` and `flower.jpg`, which ship
inside scikit-learn (nothing is downloaded). The photos are first shrunk by `downscale` (box filter) so
that a small patch holds edges and colour changes, not a flat wash.
"""

from __future__ import annotations

import numpy as np
import torch

from teachers.analytic import GaussianMixtureTeacher
from teachers.registry import register


def sample_image_patches(patch: int = 8, num: int = 2000, downscale: int = 4, seed: int = 0) -> np.ndarray:
    """`num` RGB patches (num, 3, patch, patch) in [-1, 1], half from each photo, at seeded positions."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(seed)
    photos = load_sample_images().images  # two (427, 640, 3) uint8 arrays
    out = []
    for i, photo in enumerate(photos):
        h, w = photo.shape[0] // downscale, photo.shape[1] // downscale
        small = np.asarray(Image.fromarray(photo).resize((w, h), Image.BOX), dtype=np.float64)
        n = num // len(photos) + (i < num % len(photos))
        ys, xs = rng.integers(0, h - patch + 1, n), rng.integers(0, w - patch + 1, n)
        out += [small[y:y + patch, x:x + patch] for y, x in zip(ys, xs)]
    patches = np.stack(out) / 127.5 - 1.0  # DESIGN.md: [0, 255] -> [-1, 1]
    return patches.transpose(0, 3, 1, 2)


@register("patches_rgb")
def patches_rgb(patch: int = 8, num: int = 2000, downscale: int = 4, seed: int = 0, sigma0: float = 0.0,
                sigma_min: float = 0.002, sigma_max: float = 80.0, sigma_data: float = 0.5) -> GaussianMixtureTeacher:
    """Mixture over `num` k x k colour patches; sigma0 = 0 is the ideal denoiser of that patch set."""
    if patch < 2 or num < 1 or downscale < 1:
        raise ValueError(f"patches_rgb: need patch >= 2, num >= 1, downscale >= 1; got {patch}, {num}, {downscale}")
    means = torch.from_numpy(sample_image_patches(patch, num, downscale, seed))
    teacher = GaussianMixtureTeacher(means, sigma0=sigma0, image_shape=(3, patch, patch), sigma_min=sigma_min,
                                     sigma_max=sigma_max, sigma_data=sigma_data)
    teacher.spec = {"name": "patches_rgb", "patch": patch, "num": num, "downscale": downscale, "seed": seed,
                    "sigma0": sigma0, "sigma_min": sigma_min, "sigma_max": sigma_max, "sigma_data": sigma_data}
    teacher.licence = ("CC BY 2.0 (scikit-learn's sample images china.jpg and flower.jpg; "
                       "sklearn/datasets/images/README.txt)")
    return teacher
