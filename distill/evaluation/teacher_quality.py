"""A teacher's own quality, and the reference FID compares against when the teacher has no exact samples.

An analytic teacher draws exact samples of its distribution. A trained network cannot; `distill train-teacher`
records in teacher.json which data it was trained on (`teachers.load` keeps that record as
`teacher.training_data`), and those images are then the reference: the distribution the network models.
In-memory sources (digits, patches, folder, zip) are rebuilt exactly as training read them; streamed shards
(webdataset) are not read back here: give reference statistics (--ref) for those.
"""

from __future__ import annotations

import torch

from distill.math.solvers import edm_sampler, teacher_sigmas
from distill.sampling import per_sample_noise

MAX_REFERENCE_IMAGES = 200_000  # teacher.json is data: its `data.size` cannot ask for more than this


def training_images(record: dict | None, image_shape) -> tuple[torch.Tensor, str] | None:
    """(images, description) of the in-memory data set a teacher.json `data` record names, or None."""
    from types import SimpleNamespace

    from distill.data.datamodule import build_pool

    if not isinstance(record, dict) or record.get("name") not in ("digits", "patches", "folder", "zip"):
        return None
    size = record.get("size") or 0
    if not isinstance(size, int) or not 0 <= size <= MAX_REFERENCE_IMAGES:  # a file's claim: bound the memory
        return None
    data = SimpleNamespace(name=record["name"], path=record.get("path"), size=int(record.get("size") or 0),
                           corrupt="skip", xflip=False)  # the data set itself, not its mirrored copies
    cfg = SimpleNamespace(data=data, run=SimpleNamespace(seed=int(record.get("seed", 0))))
    shape = SimpleNamespace(image_shape=tuple(image_shape), num_classes=0, sigma_data=0.5)
    images, _ = build_pool(cfg, shape)
    where = f" ({record['path']})" if record.get("path") else ""
    return images.float(), f"{images.shape[0]} images of the {record['name']} data{where} the teacher was trained on"


def reference_images(teacher, num: int, seed: int) -> tuple[torch.Tensor, str] | None:
    """The FID reference for a teacher and its students: `num` exact samples when the teacher can draw them,
    else the data it was trained on, else None (the caller asks for --ref)."""
    from distill.evaluation.metrics.reference import exact_samples

    if hasattr(teacher, "sample"):
        ref = exact_samples(teacher, num, seed)
        name = (getattr(teacher, "spec", None) or {}).get("name", "teacher")
        return ref, f"{ref.shape[0]} exact samples of the {name} teacher"
    return training_images(getattr(teacher, "training_data", None), teacher.image_shape)


def teacher_labels(teacher, num: int, seed: int) -> torch.Tensor | None:
    if not getattr(teacher, "num_classes", 0):
        return None
    return torch.randint(0, teacher.num_classes, (num,), generator=torch.Generator().manual_seed(seed + 0xC1A55))


@torch.no_grad()
def heun_samples(teacher, num: int, nfe: int, seed: int = 0, batch_size: int = 500) -> torch.Tensor:
    """`num` samples of the teacher's EDM Heun sampler at `nfe` (Alg. 1, Karras grid, rho 7); sample i starts
    from the noise of seed + i, as `distill eval`'s teacher rows do."""
    grid = teacher_sigmas(nfe, teacher.sigma_min, teacher.sigma_max,
                          round_sigma=getattr(teacher, "round_sigma", lambda s: s))
    labels = teacher_labels(teacher, num, seed)
    out = []
    for start in range(0, num, batch_size):
        noise = per_sample_noise(range(seed + start, seed + min(start + batch_size, num)), teacher.image_shape, 1)
        cond = None if labels is None else labels[start:start + batch_size]
        out.append(edm_sampler(teacher.denoise, noise[0], grid, cond).float().cpu())
    return torch.cat(out)
