"""Text-to-image evaluation of a latent consistency student (`distill eval PATH --captions FOLDER`).

For the first `num` image-caption pairs of a caption folder (distill/data/captions.py): the student samples
each caption at 1, 2, 4 steps (LCMScheduler's sigmas from student.json, per-sample seeds), the teacher with
its guided EDM Heun sampler at `teacher_nfe` (25 Heun steps = NFE 49 by default; each NFE is one batched
conditional + unconditional UNet pass), all decoded by the teacher's VAE. Reported per row:
- `fid`: Frechet distance of the `features` (Inception when its weights file is given) against the folder's images;
- `clip_score`: torchmetrics' CLIPScore against the captions, from a local CLIP folder (`--clip`).
The teacher (and its VAE and text encoder) is rebuilt from the spec in student.json.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from distill.evaluation.metrics.fid import add, distance, frechet_metric
from distill.math.solvers import edm_sampler, teacher_sigmas
from distill.sampling import consistency_sample, per_sample_noise


def _decode(teacher, latents: torch.Tensor) -> torch.Tensor:
    return teacher.decode_latents(latents).cpu()


@torch.no_grad()
def generate_text2image(student, teacher, captions: list[str], *, steps: Sequence[int], teacher_nfe: Sequence[int],
                        w: float, seed: int = 0, batch_size: int = 16, device="cpu") -> dict:
    """{"student": {k: images}, "teacher": {nfe: images}}; image i uses seed + i for its noise."""
    out = {"student": {k: [] for k in steps}, "teacher": {n: [] for n in teacher_nfe}}
    shape = tuple(student.image_shape)
    for start in range(0, len(captions), batch_size):
        prompts = list(captions[start:start + batch_size])
        seeds = range(seed + start, seed + start + len(prompts))
        cond = teacher.encode_text(prompts, w=w)
        for k in steps:
            sigmas = student.sampling_sigmas[str(k)]
            noise = per_sample_noise(seeds, shape, len(sigmas))
            out["student"][k].append(_decode(teacher, consistency_sample(student, noise, sigmas, cond)))
        for nfe in teacher_nfe:
            x_t = per_sample_noise(seeds, shape, 1)[0].to(device)
            grid = teacher_sigmas(nfe, teacher.sigma_min, teacher.sigma_max, round_sigma=teacher.round_sigma)
            x = edm_sampler(teacher.denoise, x_t, grid, cond, round_sigma=teacher.round_sigma)
            out["teacher"][nfe].append(_decode(teacher, x.float()))
    return {row: {k: torch.cat(v) for k, v in entries.items()} for row, entries in out.items()}


def text2image_report(samples: dict, reference: torch.Tensor, captions: list[str], *, extractor=None,
                      clip=None) -> dict:
    """report.json-shaped: {"student": {k: {...}}, "teacher": {nfe: {...}}, "num_samples", "features", ...}."""
    from distill.evaluation.clip_score import clip_score

    metric = None
    if extractor is not None:  # torchmetrics' FID in the extractor's feature space, the captions' images as real
        metric = frechet_metric(extractor.module)
        add(metric, reference, real=True)
    rep = {"student": {}, "teacher": {}, "num_samples": int(reference.shape[0]),
           "features": extractor.name if extractor is not None else None,
           "reference": "the caption folder's images; CLIP score against its captions"}
    for row in ("student", "teacher"):
        for key, images in samples[row].items():
            entry = {}
            if extractor is not None:
                entry["fid"] = distance(metric, images)
            if clip is not None:
                entry["clip_score"] = clip_score(images, captions, clip)
            rep[row][str(key)] = entry
    return rep
