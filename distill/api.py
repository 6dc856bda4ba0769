"""The student as users hold it: `distill.load_student(path)` -> a module that samples and edits.

It is the ConsistencyStudent itself (same weights, same forward), with the free functions of
`distill.sampling` and `distill.editing` as methods, so a notebook needs one import:

    student = distill.load_student("runs/demo")
    x = student.sample(16, steps=2, seed=0)
    given = student.from_noise(torch.randn(16, *student.image_shape))  # 1 step at sigma_max
    filled = student.inpaint(x, mask)

Everything comes from student.safetensors + student.json; the teacher is never loaded.
"""

from __future__ import annotations

import torch

from distill import editing
from distill.math.precond import ConsistencyStudent
from distill.sampling import default_sigmas
from distill.sampling import from_noise as _from_noise
from distill.sampling import sample as _sample


class Student(ConsistencyStudent):
    """A ConsistencyStudent with sampling (CM Alg. 1) and zero-shot editing (CM Alg. 4) methods."""

    def sample(self, num: int, steps: int = 1, seed: int = 0, sigmas=None, cls=None,
               batch_size: int = 256, progress: bool = False) -> torch.Tensor:
        """`num` images (num, *image_shape) in [-1, 1] on the CPU; image i uses seed + i. `sigmas` overrides
        the default schedule for `steps` recorded in student.json. `cls` (conditional students): one class
        for all (an int), one per image (a list or tensor of `num` ints), or None (from each image's seed);
        labels out of range raise ValueError."""
        sigmas = sigmas if sigmas is not None else default_sigmas(self, steps)
        return _sample(self, num, sigmas, seed=seed, batch_size=batch_size, cls=cls, progress=progress)

    def from_noise(self, noise, sigmas=None, cond=None) -> torch.Tensor:
        return _from_noise(self, noise, sigmas, cond)

    def inpaint(self, image, mask, **kw) -> torch.Tensor:
        return editing.inpaint(self, image, mask, **kw)

    def colorize(self, grey, **kw) -> torch.Tensor:
        return editing.colorize(self, grey, **kw)

    def superres(self, low, **kw) -> torch.Tensor:
        return editing.superres(self, low, **kw)

    def stroke(self, strokes, **kw) -> torch.Tensor:
        return editing.stroke(self, strokes, **kw)

    def denoise(self, noisy, sigma: float, **kw) -> torch.Tensor:
        return editing.denoise(self, noisy, sigma, **kw)

    def interpolate(self, seed_a: int, seed_b: int, num: int = 8, **kw) -> torch.Tensor:
        return editing.interpolate(self, seed_a, seed_b, num, **kw)

    inpaint.__doc__ = editing.inpaint.__doc__
    colorize.__doc__ = editing.colorize.__doc__
    superres.__doc__ = editing.superres.__doc__
    stroke.__doc__ = editing.stroke.__doc__
    denoise.__doc__ = editing.denoise.__doc__
    interpolate.__doc__ = editing.interpolate.__doc__
    from_noise.__doc__ = _from_noise.__doc__
