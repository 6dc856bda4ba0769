"""Zero-shot editing with a consistency model (Song et al. 2023, Sec. 6 and appendix D, Alg. 4).

Alg. 4 is multistep consistency sampling (Alg. 1) in which, after every step, the part of the image
that is known is put back. "Known" is defined through an invertible linear operator A and a mask over
A's output: the coordinates of A x that are observed. With (1 - Omega) = `known`,

    y <- A^-1[(A y) * known]                          (keep only what is observed of the reference)
    x <- f(y + s_1 z, s_1);  x <- A^-1[(A y) * known + (A x) * (1 - known)]
    for s in s_2..s_N:  x <- f(x + sqrt(s^2 - s_min^2) z, s);  project x again.

Every A here is orthogonal (A^-1 = A^T), so the projection changes nothing but the observed part:
  inpainting     A = I, known = the mask;
  colorisation   A rotates RGB into a basis whose first axis is the luminance direction, known = it;
  super-res      A rotates each k x k block into a basis whose first axis is the block mean, known = it.
Stroke-guided generation (SDEdit, Meng et al. 2022, with a consistency model) starts from the stroke
image at an intermediate sigma and projects nothing; denoising starts from the noisy image itself at
its known sigma; interpolation runs Alg. 1 from spherical interpolants of two noises (appendix D).

Every function takes a loaded student (`distill.load_student`) and images in [-1, 1], (B, C, H, W),
and returns the edited images on the CPU. Image i draws its noise from seed + i, as in sampling.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from distill.sampling import labels_for, noise_scales, per_sample_noise, snap_to_training_levels, to_image_range

# Luminance weights (ITU-R BT.601, as the CM reference code uses), scaled to sum to one so that a grey
# pixel (v, v, v) has luminance v exactly.
LUMA = (0.2989, 0.5870, 0.1140)
TASKS = ("inpaint", "colorize", "superres", "stroke", "denoise", "interpolate")


# ---- the operators A and their known coordinates ----

@dataclass
class Observation:
    """Alg. 4's operator A (orthogonal: A^-1 = A^T) and `known` = 1 - Omega over A's output."""
    A: Callable[[torch.Tensor], torch.Tensor]
    A_inv: Callable[[torch.Tensor], torch.Tensor]
    known: torch.Tensor  # bool, broadcastable to A(x)

    def project(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """A^-1[(A y) * known + (A x) * (1 - known)]: x with its observed part replaced by y's."""
        known = self.known.to(x.device)
        return self.A_inv(torch.where(known, self.A(y), self.A(x)))


def basis_with_first(v: torch.Tensor) -> torch.Tensor:
    """An orthogonal (d, d) matrix whose first column is v / |v| (QR of [v, e_2, ..., e_d])."""
    m = torch.eye(len(v), dtype=torch.float64)
    m[:, 0] = v.double() / v.double().norm()
    q, _ = torch.linalg.qr(m)
    return q if q[:, 0].sum() > 0 else -q


def mask_observation(mask: torch.Tensor) -> Observation:
    """Inpainting: A = I; `mask` is True (or 1) where the pixel is known."""
    return Observation(lambda x: x, lambda z: z, mask.bool())


def luminance_observation(channels: int = 3) -> Observation:
    """Colorisation: channel coordinates in a basis whose first axis is the luminance direction."""
    q = basis_with_first(torch.tensor(LUMA[:channels]))
    known = torch.zeros(1, channels, 1, 1, dtype=torch.bool)
    known[:, 0] = True
    return Observation(lambda x: torch.einsum("bchw,cd->bdhw", x, q.to(x)),
                       lambda z: torch.einsum("bdhw,cd->bchw", z, q.to(z)), known)


def block_mean_observation(factor: int) -> Observation:
    """Super-resolution: each factor x factor block in a basis whose first axis is the block mean."""
    k = factor
    q = basis_with_first(torch.ones(k * k))

    def A(x):  # (B, C, H, W) -> (B, C, H/k, W/k, k*k) in the rotated basis
        b, c, h, w = x.shape
        blocks = x.reshape(b, c, h // k, k, w // k, k).permute(0, 1, 2, 4, 3, 5).reshape(b, c, h // k, w // k, k * k)
        return blocks @ q.to(x)

    def A_inv(z):
        b, c, hb, wb, _ = z.shape
        blocks = (z @ q.to(z).T).reshape(b, c, hb, wb, k, k).permute(0, 1, 2, 4, 3, 5)
        return blocks.reshape(b, c, hb * k, wb * k)

    known = torch.zeros(k * k, dtype=torch.bool)
    known[0] = True
    return Observation(A, A_inv, known)


def luminance(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 1, H, W), with the weights of LUMA normalised to sum to one."""
    w = torch.tensor(LUMA, dtype=x.dtype, device=x.device)
    return torch.einsum("bchw,c->bhw", x, w / w.sum())[:, None]


def block_mean(x: torch.Tensor, factor: int) -> torch.Tensor:
    return torch.nn.functional.avg_pool2d(x, factor)


# ---- sigma schedules ----

# Where the re-projecting steps live, in units of sigma_data. Tuned on the digits mixture with an exact
# consistency function (the teacher's ODE solution), inpainting the bottom half: from one step (masked
# RMSE 0.77) to [sigma_max] + 7 steps from 2 sd down to 0.4 sd (0.58). Above ~2 sd the noise hides what
# is known; below ~0.4 sd f barely moves x, so a step there cannot reconcile the two parts.
REFINE_FROM, REFINE_TO = 2.0, 0.4
DEFAULT_STEPS = {"inpaint": 8, "colorize": 8, "superres": 8, "stroke": 3, "denoise": 1, "interpolate": 1}
STROKE_SIGMA = 4.0  # x sigma_data: SDEdit's start, enough noise to hide the strokes' flat colours


def edit_sigmas(student, task: str, steps: int | None = None, sigma: float | None = None) -> list[float]:
    """A task's default schedule of `steps` sigmas: the start (sigma_max; for stroke and denoise `sigma`),
    then geometric steps from 2 sigma_data to 0.4 sigma_data (capped at the start)."""
    if task not in TASKS:
        raise ValueError(f"unknown editing task {task!r}; choose one of {', '.join(TASKS)}")
    steps = DEFAULT_STEPS[task] if steps is None else int(steps)
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    sd = student.sigma_data
    if task == "denoise":
        if sigma is None:
            raise ValueError("denoise needs the noise level of the input: give sigma (--sigma)")
        start = float(sigma)
    elif task == "stroke":
        start = STROKE_SIGMA * sd if sigma is None else float(sigma)
    else:
        start = student.sigma_max
    if not student.sigma_min <= start <= student.sigma_max * (1 + 1e-6):
        raise ValueError(f"sigma {start:g} is outside the student's range [{student.sigma_min:g}, "
                         f"{student.sigma_max:g}]")
    hi = min(start, REFINE_FROM * sd)
    lo = min(hi, max(student.sigma_min, REFINE_TO * sd))
    tail = torch.logspace(math.log10(hi), math.log10(lo), steps - 1, dtype=torch.float64) if steps > 1 else []
    return [start] + [float(s) for s in tail]


# ---- Alg. 4 ----

@torch.no_grad()
def consistency_edit(student, y: torch.Tensor, obs: Observation | None, sigmas: Sequence[float],
                     noise: list[torch.Tensor], cond=None, clip: bool = True,
                     noisy_start: bool = False) -> torch.Tensor:
    """CM Alg. 4 for one batch. obs None projects nothing (stroke, denoise); noisy_start means y is
    already x_{s_1} (denoising), so no noise is added before the first step."""
    dev = next(student.parameters()).device
    y = y.to(dev, torch.float32)
    bound = (lambda x: x.clamp(-1, 1)) if clip else (lambda x: x)  # clamp as the reference code does
    if obs is not None:
        y = obs.project(torch.zeros_like(y), y)  # y <- A^-1[(A y) * known]
    s0 = float(sigmas[0])
    x = student(y if noisy_start else y + s0 * noise[0].to(dev), s0, cond)
    x = bound(x) if obs is None else obs.project(bound(x), y)
    # The re-noising multipliers of sampling (CM Alg. 1, or a family's own: LCM's), so an edit and a sample
    # re-noise alike; the first step noises the observation y itself, data + s0 z.
    scales = noise_scales(student, [float(s) for s in sigmas])
    for k, s in enumerate(sigmas[1:], start=1):
        x_hat = x + scales[k] * noise[k].to(dev)
        x = bound(student(x_hat, float(s), cond))
        if obs is not None:
            x = obs.project(x, y)
    if clip and obs is not None:
        x = into_range(x, y, obs)
    return x.float().cpu()


def into_range(x: torch.Tensor, y: torch.Tensor, obs: Observation, iters: int = 200, tol: float = 1e-4):
    """The last projection can leave [-1, 1] (a dark block whose generated detail dips below black), and
    writing a PNG would then clip away the exactness. Alternate clamping and projecting (POCS onto the
    box and the affine set of images that match the observation: both convex, and they meet whenever y
    is a valid image), ending on a projection, so the result matches y and leaves the box by very little.
    Per image, so that an image's result does not depend on its batch."""
    for _ in range(iters):
        out = x.flatten(1).abs().amax(1) > 1 + tol  # (B,)
        if not bool(out.any()):
            break
        x = torch.where(out.view(-1, *[1] * (x.ndim - 1)), obs.project(x.clamp(-1, 1), y), x)
    return x


def _run(student, y, obs, sigmas, seed, cls, batch_size, **kw) -> torch.Tensor:
    """Alg. 4 over batches; image i draws its noise (and, for a conditional student, its class) from
    seed + i. `obs` is an Observation, None, or a function of the batch's slice giving one."""
    student.eval()
    # A grid-trained student is evaluated at its levels; a denoising start is the data's own noise level.
    sigmas = snap_to_training_levels(student, sigmas, keep_first=bool(kw.get("noisy_start")))
    dev = next(student.parameters()).device
    out = []
    for start in range(0, y.shape[0], batch_size):
        seeds = range(seed + start, seed + min(start + batch_size, y.shape[0]))
        noise = per_sample_noise(seeds, student.image_shape, len(sigmas))
        rows = slice(start, start + len(seeds))
        out.append(consistency_edit(student, y[rows], obs(rows) if callable(obs) else obs, sigmas, noise,
                                    cond=labels_for(student, seeds, cls, dev), **kw))
    return torch.cat(out)


def _check(student, x: torch.Tensor, what: str, shape=None) -> torch.Tensor:
    x = torch.as_tensor(x, dtype=torch.float32)
    if x.ndim == 3:
        x = x[None]
    shape = tuple(student.image_shape) if shape is None else tuple(shape)
    if tuple(x.shape[1:]) != shape:
        raise ValueError(f"{what} has shape {tuple(x.shape[1:])}, expected {shape} (C, H, W)")
    return x


# ---- the tasks ----

def inpaint(student, image, mask, sigmas=None, seed=0, cls=None, batch_size=256, steps=None) -> torch.Tensor:
    """Fill the pixels where `mask` is False/0; those where it is True/1 come back unchanged.
    mask: (H, W), (C, H, W) or (B, C, H, W)."""
    image = _check(student, image, "image")
    mask = torch.as_tensor(mask).bool()
    while mask.ndim < 4:
        mask = mask[None]
    try:
        mask = mask.expand_as(image)
    except RuntimeError:
        raise ValueError(f"mask of shape {tuple(mask.shape)} does not fit images of shape "
                         f"{tuple(image.shape)}") from None
    sigmas = sigmas or edit_sigmas(student, "inpaint", steps)
    return _run(student, image, lambda rows: mask_observation(mask[rows]), sigmas, seed, cls, batch_size)


def colorize(student, grey, sigmas=None, seed=0, cls=None, batch_size=256, steps=None) -> torch.Tensor:
    """grey: luminance (B, 1, H, W) in [-1, 1] -> RGB whose `luminance` equals it."""
    c, h, w = student.image_shape
    if c != 3:
        raise ValueError(f"colorize needs an RGB student; this one makes {c}-channel images")
    grey = _check(student, grey, "grey image", (1, h, w))
    y = grey.expand(-1, 3, -1, -1)  # (v, v, v) has luminance v: the reference for Alg. 4
    sigmas = sigmas or edit_sigmas(student, "colorize", steps)
    return _run(student, y, luminance_observation(3), sigmas, seed, cls, batch_size)


def superres(student, low, sigmas=None, seed=0, cls=None, batch_size=256, steps=None) -> torch.Tensor:
    """low: (B, C, H/k, W/k) -> (B, C, H, W) at the student's resolution whose k x k block means equal it."""
    c, h, w = student.image_shape
    low = torch.as_tensor(low, dtype=torch.float32)
    low = low[None] if low.ndim == 3 else low
    lh, lw = low.shape[-2:]
    if low.shape[1] != c or h % lh or w % lw or h // lh != w // lw or h // lh < 2:
        raise ValueError(f"superres takes a low-resolution image of {c} channel(s) whose size divides "
                         f"{h}x{w} by one integer factor >= 2 (e.g. {h // 2}x{w // 2}); got "
                         f"{low.shape[1]} channel(s) at {lh}x{lw}")
    factor = h // lh
    y = low.repeat_interleave(factor, -2).repeat_interleave(factor, -1)  # its block means are `low`
    sigmas = sigmas or edit_sigmas(student, "superres", steps)
    return _run(student, y, block_mean_observation(factor), sigmas, seed, cls, batch_size)


def stroke(student, strokes, sigmas=None, seed=0, cls=None, batch_size=256, steps=None,
           sigma: float | None = None) -> torch.Tensor:
    """SDEdit with a consistency model: noise the stroke painting to sigmas[0], then Alg. 1 from there."""
    strokes = _check(student, strokes, "stroke image")
    sigmas = sigmas or edit_sigmas(student, "stroke", steps, sigma)
    return _run(student, strokes, None, sigmas, seed, cls, batch_size)


def denoise(student, noisy, sigma: float, sigmas=None, seed=0, cls=None, batch_size=256,
            steps=None) -> torch.Tensor:
    """noisy = x_0 + sigma n with sigma known: f(noisy, sigma), refined by more steps if asked."""
    noisy = _check(student, noisy, "noisy image")
    sigmas = sigmas or edit_sigmas(student, "denoise", steps, sigma)
    return _run(student, noisy, None, sigmas, seed, cls, batch_size, noisy_start=True)


def slerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """Spherical interpolation between two noises (CM paper, appendix D), per sample."""
    af, bf = a.flatten(1).double(), b.flatten(1).double()
    cos = (af * bf).sum(1) / (af.norm(dim=1) * bf.norm(dim=1))
    psi = cos.clamp(-1, 1).arccos()[:, None]
    out = (torch.sin((1 - t) * psi) * af + torch.sin(t * psi) * bf) / torch.sin(psi)
    return out.reshape(a.shape).to(a.dtype)


@torch.no_grad()
def interpolate(student, seed_a: int, seed_b: int, num: int = 8, sigmas=None, cls=None,
                steps=None) -> torch.Tensor:
    """`num` images along the slerp between the noises of seeds a and b; the ends are `sample`'s images
    for those seeds (every noise of a multistep schedule is interpolated alike)."""
    from distill.sampling import consistency_sample

    if num < 2:
        raise ValueError(f"interpolate needs at least 2 images, got {num}")
    sigmas = snap_to_training_levels(student, sigmas or edit_sigmas(student, "interpolate", steps))
    student.eval()
    dev = next(student.parameters()).device
    ends = per_sample_noise([seed_a, seed_b], student.image_shape, len(sigmas))  # [(2, C, H, W)] per step
    ts = torch.linspace(0, 1, num, dtype=torch.float64).tolist()
    noise = [torch.cat([z[:1] if t == 0 else z[1:] if t == 1 else slerp(z[:1], z[1:], t) for t in ts])
             for z in ends]
    cond = labels_for(student, [seed_a] * num, cls, dev)
    return to_image_range(student, consistency_sample(student, noise, sigmas, cond)).float().cpu()
