"""Reference statistics: the (mu, sigma) of true samples' features that FID compares against.

Computed from a data set or, for an analytic teacher, from its exact samples, and saved as `.npz` with
`mu`, `sigma` (float64), plus `features` (the extractor's name) and `description`, and optionally
`mu_pixel`/`sigma_pixel` for report.json's fd_pixel. Read back are also the layouts others publish:
- NVlabs EDM (`fid.py ref`): `mu`, `sigma` of 2048-d Inception pool3 features (also pytorch-fid, clean-fid);
- OpenAI ADM's evaluator reference batches: `mu`, `sigma` (pool3) beside `mu_s`, `sigma_s` (spatial
  features, unused here) and the images in `arr_0`;
- clean-fid's statistics files: `mu`, `sigma` of pool3 features after its "clean" resize;
- a bare image array `arr_0` (uint8 NHWC, as `distill sample --out x.npz` writes): the images themselves
  become the reference side, in the chosen extractor's space.
Loaded with allow_pickle=False: an .npz holding objects is refused, not unpickled.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch


@dataclass
class ReferenceStats:
    mu: np.ndarray | None
    sigma: np.ndarray | None
    features: str | None  # extractor name when recorded (our files); None for EDM/ADM (Inception pool3)
    description: str
    layout: str  # "distill", "edm", "adm" or "images"
    pixel: tuple[np.ndarray, np.ndarray] | None = None
    images: torch.Tensor | None = None  # (N, C, H, W) in [-1, 1], for the "images" layout


def save_stats(path, mu, sigma, *, features: str, description: str, pixel=None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"mu": np.asarray(mu, np.float64), "sigma": np.asarray(sigma, np.float64),
              "features": np.array(features), "description": np.array(description)}
    if pixel is not None:
        arrays.update(mu_pixel=np.asarray(pixel[0], np.float64), sigma_pixel=np.asarray(pixel[1], np.float64))
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return path


def load_stats(path) -> ReferenceStats:
    """Any of the layouts in the module docstring. Raises FileNotFoundError / ValueError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"reference statistics not found: {path} (an .npz with mu and sigma)")
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except (ValueError, OSError) as err:
        raise ValueError(f"{path}: not a readable .npz of reference statistics ({err})") from None
    text = lambda k: str(data[k]) if k in data else None
    if "mu" in data and "sigma" in data:
        mu, sigma = data["mu"].astype(np.float64), data["sigma"].astype(np.float64)
        if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
            raise ValueError(f"{path}: mu {mu.shape} and sigma {sigma.shape} do not describe one Gaussian")
        layout = "distill" if "features" in data else ("adm" if "mu_s" in data or "arr_0" in data else "edm")
        pixel = (data["mu_pixel"], data["sigma_pixel"]) if "mu_pixel" in data else None
        desc = text("description") or f"statistics in {path.name}"
        return ReferenceStats(mu, sigma, text("features"), desc, layout, pixel)
    if "arr_0" in data and data["arr_0"].ndim == 4:
        imgs = torch.from_numpy(data["arr_0"]).permute(0, 3, 1, 2).double() / 127.5 - 1  # uint8 NHWC
        return ReferenceStats(None, None, None, f"{imgs.shape[0]} images in {path.name}", "images",
                              images=imgs.float())
    raise ValueError(f"{path}: expected keys mu and sigma (EDM/ADM/distill layouts) or images in arr_0; "
                     f"found {sorted(data)}")


def check_compatible(ref: ReferenceStats, extractor_name: str, dim: int, path) -> None:
    """Refuse statistics from another feature space (`dim`: the extractor's width): the FID would be
    silently meaningless."""
    if ref.mu is not None and ref.mu.shape[0] != dim:
        raise ValueError(f"{path}: reference statistics are {ref.mu.shape[0]}-d, the {extractor_name} "
                         f"features are {dim}-d; compute the statistics with the same extractor")
    if ref.features is not None and ref.features != extractor_name:
        raise ValueError(f"{path}: statistics of {ref.features!r} features, but evaluating with "
                         f"{extractor_name!r}")


def exact_samples(teacher, num: int, seed: int) -> torch.Tensor:
    """An analytic teacher's exact samples (the same draw for a given seed everywhere in the project)."""
    if not hasattr(teacher, "sample"):
        raise ValueError(f"{type(teacher).__name__} cannot draw exact samples; give reference statistics "
                         "(--ref FILE or eval.ref)")
    return teacher.sample(num, torch.Generator().manual_seed(seed + 0x5EED))

