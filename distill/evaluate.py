"""The quality report (DESIGN.md, report.json): the student at 1, 2, ... steps against the teacher's EDM
Heun sampler at several NFE, from the same noise.

fd_pixel: Frechet distance of raw pixels against true samples. traj_rmse: RMS error of an output against
the exact ODE endpoint from the same noise (reference solver, tight tolerance) for the 1-step student
and every teacher NFE.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm import tqdm

from distill.metrics.frechet import frechet_distance, gaussian_stats
from distill.sampling import consistency_sample, default_sigmas, per_sample_noise
from distill.solvers import edm_sampler, reference_solution, teacher_sigmas


def rms(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).pow(2).mean().sqrt())


def true_samples(teacher, num: int, seed: int) -> torch.Tensor:
    if not hasattr(teacher, "sample"):
        raise ValueError(f"{type(teacher).__name__} cannot draw exact samples; give reference statistics")
    return teacher.sample(num, torch.Generator().manual_seed(seed + 0x5EED))


@torch.no_grad()
def generate(student, teacher, *, steps: Sequence[int], teacher_nfe: Sequence[int], num: int, seed: int,
             batch_size: int = 500, sigmas_override: dict | None = None, progress: bool = True) -> dict:
    """Samples of every row from one set of noises: {"student": {k: x}, "teacher": {nfe: x}, "reference": x}.

    Sample i uses seed + i for its noise, so student and teacher rows start from the same x_T.
    """
    sigmas_by_step = {k: (sigmas_override or {}).get(k) or default_sigmas(student, k) for k in steps}
    draws = max(len(s) for s in sigmas_by_step.values()) if steps else 1
    smin, smax = student.sigma_min, student.sigma_max
    out = {"student": {k: [] for k in steps}, "teacher": {n: [] for n in teacher_nfe}, "reference": []}
    labels_all = None
    if student.num_classes:
        g = torch.Generator().manual_seed(seed + 0xC1A55)
        labels_all = torch.randint(0, student.num_classes, (num,), generator=g)
    bar = tqdm(range(0, num, batch_size), disable=not progress, desc="evaluating", unit="batch")
    for start in bar:
        seeds = range(seed + start, seed + min(start + batch_size, num))
        noise = per_sample_noise(seeds, student.image_shape, draws)
        cond = None if labels_all is None else labels_all[start:start + len(seeds)]
        for k in steps:
            out["student"][k].append(consistency_sample(student, noise, sigmas_by_step[k], cond).double().cpu())
        for nfe in teacher_nfe:
            grid = teacher_sigmas(nfe, smin, smax, round_sigma=getattr(teacher, "round_sigma", lambda s: s))
            out["teacher"][nfe].append(edm_sampler(teacher.denoise, noise[0], grid, cond).double().cpu())
        if 1 in steps or teacher_nfe:
            x_t = noise[0].double() * smax
            out["reference"].append(reference_solution(teacher.denoise, x_t, smax, smin, cond).cpu())
    cat = lambda xs: torch.cat(xs) if xs else None
    return {"student": {k: cat(v) for k, v in out["student"].items()},
            "teacher": {n: cat(v) for n, v in out["teacher"].items()},
            "reference": cat(out["reference"]), "labels": labels_all, "sigmas": sigmas_by_step}


def report(samples: dict, reference_images: torch.Tensor, reference_name: str) -> dict:
    """report.json's shape from generated samples and true samples."""
    mu_r, s_r = gaussian_stats(reference_images.flatten(1))
    ref_end = samples["reference"]

    def row(x, with_traj):
        mu, s = gaussian_stats(x.flatten(1))
        entry = {"fd_pixel": frechet_distance(mu, s, mu_r, s_r)}
        if with_traj and ref_end is not None:
            entry["traj_rmse"] = rms(x, ref_end)
        return entry

    num = next(iter(samples["student"].values()), ref_end).shape[0]
    return {
        "student": {str(k): row(x, k == 1) for k, x in samples["student"].items()},
        "teacher": {str(n): row(x, True) for n, x in samples["teacher"].items()},
        "num_samples": int(num),
        "features": "pixel",
        "reference": reference_name,
        "student_sigmas": {str(k): list(map(float, v)) for k, v in samples["sigmas"].items()},
    }


def format_table(rep: dict) -> str:
    lines = [f"{'sampler':<22}{'fd_pixel':>12}{'traj_rmse':>12}" + (f"{'fid':>12}" if any(
        "fid" in e for part in ("student", "teacher") for e in rep[part].values()) else "")]
    for part, label in (("student", "student, {} step(s)"), ("teacher", "teacher Heun, NFE {}")):
        for key, e in rep[part].items():
            traj = f"{e['traj_rmse']:.4f}" if "traj_rmse" in e else "-"
            fid = f"{e['fid']:12.4f}" if "fid" in e else ""
            lines.append(f"{label.format(key):<22}{e['fd_pixel']:>12.4f}{traj:>12}{fid}")
    lines.append(f"({rep['num_samples']} samples; reference: {rep['reference']})")
    return "\n".join(lines)
