"""FID of an image folder by clean-fid's "clean" protocol (Parmar et al. 2022, "On Aliased Resizing and
Surprising Subtleties in GAN Evaluation"), against another folder or a statistics file; offline only.

clean-fid reads every image as RGB and resizes it to 299x299 with PIL's bicubic filter in float (no
quantisation after resizing); torchmetrics computes the Frechet distance of the features. The network is
torch-fidelity's Inception, loaded weights-only from a local file and handed to clean-fid as its custom
feature extractor: clean-fid's own network is a TorchScript file that it downloads, and loading TorchScript
executes it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def image_count(folder) -> int:
    """Images clean-fid will read in `folder` (recursively; or a .zip). FileNotFoundError / ValueError."""
    from cleanfid.utils import EXTENSIONS

    path = Path(folder)
    if not path.exists():
        raise FileNotFoundError(f"image folder not found: {path}")
    if path.is_file() and path.suffix.lower() == ".zip":
        import zipfile

        with zipfile.ZipFile(path) as z:
            n = sum(Path(name).suffix.lower()[1:] in EXTENSIONS for name in z.namelist())
    elif path.is_dir():
        n = sum(p.suffix.lower()[1:] in EXTENSIONS for p in path.rglob("*") if p.is_file())
    else:
        raise ValueError(f"{path}: expected a folder of images (or a .zip of them)")
    if n < 2:
        raise ValueError(f"{path}: {n} image(s) found ({', '.join(sorted(EXTENSIONS))}); FID needs at least 2")
    return n


def clean_inception(inception_path=None, device="cpu"):
    from distill.evaluation.metrics.inception import CleanInceptionFeatures, load_inception

    return CleanInceptionFeatures(load_inception(inception_path)).to(device)


def folder_features(folder, model, *, batch_size: int = 50, device="cpu") -> np.ndarray:
    """(N, 2048) pool3 features of every image in `folder`, read and resized by clean-fid."""
    from cleanfid import fid

    with torch.no_grad():
        return fid.get_folder_features(str(folder), model, num_workers=0, batch_size=batch_size,
                                       device=torch.device(device), mode="clean", verbose=False)


def folder_fid(folder, model, *, ref_folder=None, ref_stats=None, batch_size: int = 50, device="cpu") -> float:
    """FID of `folder` against `ref_folder`, or against (mu, sigma) `ref_stats`: clean-fid's features, the
    distance by torchmetrics (the formula clean-fid uses; its scipy sqrtm of a 2048x2048 matrix took minutes
    on a CPU where torchmetrics' eigenvalues took seconds)."""
    from distill.evaluation.metrics.fid import GivenFeatures, add, distance, frechet_metric, set_reference_stats

    metric = frechet_metric(GivenFeatures(model.num_features))
    if ref_folder is not None:
        add(metric, torch.from_numpy(folder_features(ref_folder, model, batch_size=batch_size, device=device)),
            real=True)
    else:
        set_reference_stats(metric, *ref_stats)
    return distance(metric, torch.from_numpy(folder_features(folder, model, batch_size=batch_size, device=device)))
