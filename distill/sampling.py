"""Multistep consistency sampling (CM paper, Alg. 1) with per-sample seeds.

Sample i draws all its noise from its own generator seeded with seed + i (as NVlabs EDM's
StackedRandomGenerator does), so images do not depend on batch size, device count or order.
"""

from __future__ import annotations

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


def labels_for(student, seeds: Sequence[int], cls: int | None = None, device="cpu") -> torch.Tensor | None:
    """Class labels for a conditional student: `cls` for all, or one per sample drawn from its own seed
    (so classes too are independent of batch size); None for an unconditional student."""
    if not student.num_classes:
        return None
    if cls is None:
        labels = [int(torch.randint(0, student.num_classes, (1,),
                                    generator=torch.Generator().manual_seed(s + 2**31)))
                  for s in seeds]
    else:
        labels = [int(cls)] * len(seeds)
    return torch.tensor(labels, device=device)


@torch.no_grad()
def consistency_sample(student, noise: list[torch.Tensor], sigmas: Sequence[float], cond=None) -> torch.Tensor:
    """CM Alg. 1: x = f(sigma_0 z_0, sigma_0); then x = f(x + sqrt(s^2 - s_min^2) z_k, s) for each s (the
    student's `noise_scales` give other families' multipliers, e.g. LCM's, distill/methods/lcm.py)."""
    dev = next(student.parameters()).device
    scales = student.noise_scales(sigmas) if hasattr(student, "noise_scales") else \
        [sigmas[0]] + [(s**2 - student.sigma_min**2) ** 0.5 for s in sigmas[1:]]
    x = student(noise[0].to(dev) * scales[0], sigmas[0], cond)
    for k, s in enumerate(sigmas[1:], start=1):
        x = student(x + scales[k] * noise[k].to(dev), s, cond)
    return x


@torch.no_grad()
def sample(student, num: int, sigmas: Sequence[float], seed: int = 0, batch_size: int = 256,
           cls: int | None = None, progress: bool = False) -> torch.Tensor:
    """`num` samples (num, *image_shape) on CPU; sample i uses seed + i."""
    sigmas = [float(s) for s in sigmas]
    if not sigmas or max(sigmas) > student.sigma_max * (1 + 1e-6) or min(sigmas) < student.sigma_min:
        raise ValueError(f"sampling sigmas {sigmas} leave the student's range "
                         f"[{student.sigma_min:g}, {student.sigma_max:g}]")
    if num < 1 or batch_size < 1:
        raise ValueError(f"num and batch_size must be positive, got {num} and {batch_size}")
    student.eval()
    dev = next(student.parameters()).device
    out = []
    with tqdm(total=num, disable=not progress, desc="sampling", unit="img") as bar:
        for start in range(0, num, batch_size):
            seeds = range(seed + start, seed + min(start + batch_size, num))
            noise = per_sample_noise(seeds, student.image_shape, len(sigmas))
            cond = labels_for(student, seeds, cls, dev)
            out.append(consistency_sample(student, noise, sigmas, cond).float().cpu())
            bar.update(len(seeds))
    return torch.cat(out)
