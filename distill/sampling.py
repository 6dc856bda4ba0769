"""Multistep consistency sampling (CM paper, Alg. 1) with per-sample seeds.

Sample i draws all its noise from its own generator seeded with seed + i (as NVlabs EDM's
StackedRandomGenerator does), so images do not depend on batch size, device count or order.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import torch
from tqdm import tqdm


def per_sample_noise(seeds: Sequence[int], shape: tuple[int, ...], count: int) -> list[torch.Tensor]:
    """`count` unit Gaussian draws of `shape` for each seed: list of (len(seeds), *shape) tensors."""
    draws = [[] for _ in range(count)]
    for s in seeds:
        g = torch.Generator().manual_seed(int(s))
        for k in range(count):
            draws[k].append(torch.randn(shape, generator=g))
    return [torch.stack(d) for d in draws]


def default_sigmas(student, steps: int) -> list[float]:
    """Sampling sigmas for 1, 2 or 3 steps from the student's metadata (student.json)."""
    table = getattr(student, "sampling_sigmas", {}) or {}
    if str(steps) in table:
        return [float(s) for s in table[str(steps)]]
    if steps == 1:
        return [student.sigma_max]
    raise ValueError(f"no default sigmas for {steps} steps; pass --sigmas (e.g. {student.sigma_max:g},2,0.5)")


def training_levels(student) -> list[float] | None:
    """The noise levels a student trained with `method.pairs: grid` saw (student.json), else None."""
    record = getattr(student, "training_sigmas", None) or {}
    return [float(s) for s in record["levels"]] if record.get("pairs") == "grid" else None


def snap_to_training_levels(student, sigmas: Sequence[float], keep_first: bool = False) -> list[float]:
    """Sigmas moved to the nearest (in log sigma) level of a grid-trained student, and said so: between its
    levels such a student was never trained and can fail badly (docs/benchmarks.md, "Continuous pairs"); OpenAI's
    code likewise samples only at training-grid indices. A student trained on continuous pairs is unchanged.
    `keep_first`: the first sigma is the noise level of given data (denoising), not a choice."""
    sigmas = [float(s) for s in sigmas]
    levels = training_levels(student)
    if not levels:
        return sigmas
    logs = [math.log(v) for v in levels]
    nearest = lambda s: levels[min(range(len(levels)), key=lambda i: abs(logs[i] - math.log(s)))]
    out = [s if (keep_first and i == 0) else nearest(s) for i, s in enumerate(sigmas)]
    moved = [f"{s:g} -> {o:g}" for s, o in zip(sigmas, out) if not math.isclose(s, o, rel_tol=1e-9)]
    if moved:
        warnings.warn(f"this student was trained on a {len(levels)}-level grid (method.pairs: grid); sampling "
                      f"at its nearest levels: {', '.join(moved)}", stacklevel=2)
    return out


def check_labels(student, cls, num: int) -> torch.Tensor | None:
    """`cls` as `num` int64 labels, checked against the student's classes: an int (every sample), or a list
    or tensor of one label per sample. None stays None (labels then come from each sample's seed)."""
    if cls is None:
        return None
    if not student.num_classes:
        raise ValueError("class labels given, but this student is unconditional")
    labels = torch.as_tensor(cls)
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"class labels must be integers, got dtype {labels.dtype}")
    labels = labels.to(torch.int64).cpu()
    if labels.ndim == 0:
        labels = labels.expand(num)
    if labels.shape != (num,):
        raise ValueError(f"give one class label per sample: {num} labels, got shape {tuple(labels.shape)}")
    bad = labels[(labels < 0) | (labels >= student.num_classes)]
    if len(bad):
        raise ValueError(f"class label {int(bad[0])} is out of range: this student has {student.num_classes} "
                         f"classes (0..{student.num_classes - 1})")
    return labels


def labels_for(student, seeds: Sequence[int], cls=None, device="cpu") -> torch.Tensor | None:
    """Class labels for a conditional student: `cls` (an int for all, or one label per seed), or one per
    sample drawn from its own seed (so classes too are independent of batch size); None for an
    unconditional student."""
    if not student.num_classes:
        return None
    if cls is None:
        labels = [int(torch.randint(0, student.num_classes, (1,),
                                    generator=torch.Generator().manual_seed(s + 2**31)))
                  for s in seeds]
        return torch.tensor(labels, device=device)
    return check_labels(student, cls, len(seeds)).to(device)


def to_image_range(student, x: torch.Tensor) -> torch.Tensor:
    """Images are clamped to [-1, 1], the range pixels map to (DESIGN.md); a one-step student overshoots it
    by a little (the digits demo's: -2.7..2.8). Vector students (toy2d) have no such range."""
    return x.clamp(-1, 1) if len(student.image_shape) == 3 else x


def noise_scales(student, sigmas: Sequence[float]) -> list[float]:
    """The noise multiplier before each student evaluation of multistep sampling: sigma_0, then
    sqrt(s^2 - s_min^2) (CM Alg. 1); the student's own `noise_scales` give other families' (LCM's,
    distill/methods/lcm.py)."""
    if hasattr(student, "noise_scales"):
        return student.noise_scales(sigmas)
    return [sigmas[0]] + [(s**2 - student.sigma_min**2) ** 0.5 for s in sigmas[1:]]


@torch.no_grad()
def consistency_sample(student, noise: list[torch.Tensor], sigmas: Sequence[float], cond=None) -> torch.Tensor:
    """CM Alg. 1: x = f(sigma_0 z_0, sigma_0); then x = f(x + sqrt(s^2 - s_min^2) z_k, s) for each s
    (multipliers from `noise_scales`)."""
    dev = next(student.parameters()).device
    scales = noise_scales(student, sigmas)
    x = student(noise[0].to(dev) * scales[0], sigmas[0], cond)
    for k, s in enumerate(sigmas[1:], start=1):
        x = student(x + scales[k] * noise[k].to(dev), s, cond)
    return x


@torch.no_grad()
def sample(student, num: int, sigmas: Sequence[float], seed: int = 0, batch_size: int = 256,
           cls=None, progress: bool = False, clamp: bool = True) -> torch.Tensor:
    """`num` samples (num, *image_shape) on CPU, images in [-1, 1]; sample i uses seed + i. `cls`: an int
    for every sample, a list or tensor of `num` labels, or None (each sample's class from its seed).
    clamp=False keeps the raw outputs: what `distill eval` scores (distill/evaluation/evaluate.py)."""
    sigmas = [float(s) for s in sigmas]
    if not sigmas or max(sigmas) > student.sigma_max * (1 + 1e-6) or min(sigmas) < student.sigma_min:
        raise ValueError(f"sampling sigmas {sigmas} leave the student's range "
                         f"[{student.sigma_min:g}, {student.sigma_max:g}]")
    sigmas = snap_to_training_levels(student, sigmas)
    if num < 1 or batch_size < 1:
        raise ValueError(f"num and batch_size must be positive, got {num} and {batch_size}")
    labels = check_labels(student, cls, num)
    student.eval()
    dev = next(student.parameters()).device
    out = []
    with tqdm(total=num, disable=not progress, desc="sampling", unit="img") as bar:
        for start in range(0, num, batch_size):
            seeds = range(seed + start, seed + min(start + batch_size, num))
            noise = per_sample_noise(seeds, student.image_shape, len(sigmas))
            cond = labels_for(student, seeds, None if labels is None else labels[start:start + len(seeds)], dev)
            x = consistency_sample(student, noise, sigmas, cond)
            out.append((to_image_range(student, x) if clamp else x).float().cpu())
            bar.update(len(seeds))
    return torch.cat(out)


@torch.no_grad()
def from_noise(student, noise, sigmas: Sequence[float] | None = None, cond=None) -> torch.Tensor:
    """Images from given unit-Gaussian noise, deterministically (CM Alg. 1): x = f(sigma_0 z_0, sigma_0), then
    x = f(x + sqrt(s^2 - s_min^2) z_k, s) for each later s. One step at sigma_max by default.

    noise: (B, *image_shape) for one step, or one such tensor per sigma (a list, or a (len(sigmas), B, ...)
    tensor). cond: class labels for a conditional student (an int, or B ints). The result is on the
    student's device, images clamped to [-1, 1].
    """
    sigmas = [float(s) for s in (sigmas if sigmas is not None else [student.sigma_max])]
    if not sigmas or max(sigmas) > student.sigma_max * (1 + 1e-6) or min(sigmas) < student.sigma_min:
        raise ValueError(f"sigmas {sigmas} leave the student's range [{student.sigma_min:g}, {student.sigma_max:g}]")
    sigmas = snap_to_training_levels(student, sigmas)
    shape = tuple(student.image_shape)
    if torch.is_tensor(noise) and tuple(noise.shape[1:]) == shape:
        noise = [noise]
    noise = [torch.as_tensor(z, dtype=torch.float32) for z in noise]
    if len(noise) != len(sigmas) or any(tuple(z.shape[1:]) != shape or len(z) != len(noise[0]) for z in noise):
        raise ValueError(f"noise: give one (B, {', '.join(map(str, shape))}) tensor per sigma ({len(sigmas)}), "
                         f"got {[tuple(z.shape) for z in noise]}")
    if student.num_classes and cond is None:
        raise ValueError(f"this student is class-conditional ({student.num_classes} classes): pass cond, "
                         "one int64 label per image")
    dev = next(student.parameters()).device
    labels = check_labels(student, cond, len(noise[0]))
    student.eval()
    x = consistency_sample(student, noise, sigmas, None if labels is None else labels.to(dev))
    return to_image_range(student, x)
