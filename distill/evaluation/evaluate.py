"""The quality report (DESIGN.md, report.json): the student at 1, 2, ... steps against the teacher's EDM
Heun sampler at several NFE, from the same noise.

Entry fields: fd_pixel (Frechet distance of raw pixels against true samples); fid (Frechet distance in
the named feature space, `features`), both by torchmetrics; precision/recall (Kynkaanniemi et al. 2019,
k = 3, in that feature space, by torch-fidelity) when reference images are at hand; traj_rmse (RMS error
of an output against the exact ODE endpoint from the same noise, reference solver at tight tolerance) for
the 1-step student and every teacher NFE.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm import tqdm

from distill.evaluation.metrics.reference import ReferenceStats, exact_samples
from distill.math.solvers import edm_sampler, reference_solution, teacher_sigmas
from distill.sampling import consistency_sample, per_sample_noise, snap_to_training_levels


def rms(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).pow(2).mean().sqrt())


def true_samples(teacher, num: int, seed: int) -> torch.Tensor:
    return exact_samples(teacher, num, seed)


def sigmas_for_steps(student, steps: int) -> list[float]:
    """The student's sampling sigmas for `steps` (student.json's table: 1, 2, 3 steps); more steps than the
    table holds fall back to the Karras levels of steps + 1 points without the last (sigma_min)."""
    table = getattr(student, "sampling_sigmas", {}) or {}
    if str(steps) in table:
        return [float(s) for s in table[str(steps)]]
    if steps == 1:
        return [student.sigma_max]
    from distill.math.schedules import karras_sigmas

    return [float(s) for s in karras_sigmas(steps + 1, student.sigma_min, student.sigma_max)[:-1]]


def reference_tolerance(teacher) -> float:
    """rtol = atol of the reference ODE solve: 1e-8 for teachers computed in float64 (the analytic ones); a
    float32 network's own rounding makes tighter than ~1e-5 meaningless, and it costs ~8x the evaluations
    (a digits UNet teacher: 116 vs 962 per solve at 1e-5 vs 1e-8)."""
    backbone = getattr(teacher, "backbone", None)
    param = next(backbone.parameters(), None) if backbone is not None else None
    return 1e-5 if param is not None and param.dtype != torch.float64 else 1e-8


@torch.no_grad()
def generate(student, teacher, *, steps: Sequence[int], teacher_nfe: Sequence[int], num: int, seed: int,
             batch_size: int = 500, sigmas_override: dict | None = None, progress: bool = True) -> dict:
    """Samples of every row from one set of noises: {"student": {k: x}, "teacher": {nfe: x}, "reference": x}.

    Sample i uses seed + i for its noise, so student and teacher rows start from the same x_T.
    """
    asked = {k: (sigmas_override or {}).get(k) or sigmas_for_steps(student, k) for k in steps}
    sigmas_by_step = {k: snap_to_training_levels(student, s) for k, s in asked.items()}
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
            x = consistency_sample(student, noise, sigmas_by_step[k], cond)
            out["student"][k].append(x.double().cpu())
        for nfe in teacher_nfe:
            grid = teacher_sigmas(nfe, smin, smax, round_sigma=getattr(teacher, "round_sigma", lambda s: s))
            out["teacher"][nfe].append(edm_sampler(teacher.denoise, noise[0], grid, cond).double().cpu())
        if 1 in steps or teacher_nfe:
            x_t = noise[0].double() * smax
            tol = reference_tolerance(teacher)
            out["reference"].append(reference_solution(teacher.denoise, x_t, smax, smin, cond, rtol=tol,
                                                       atol=tol).cpu())
    cat = lambda xs: torch.cat(xs) if xs else None
    return {"student": {k: cat(v) for k, v in out["student"].items()},
            "teacher": {n: cat(v) for n, v in out["teacher"].items()},
            "reference": cat(out["reference"]), "labels": labels_all, "sigmas": sigmas_by_step}


def reference_metric(extractor, images=None, stats=None, features=None):
    """torchmetrics' FID over features given to it (`GivenFeatures`), its reference side from `stats`
    ((mu, sigma) of a file) or else from `features` (extracted beforehand) or `images`."""
    from distill.evaluation.metrics.fid import GivenFeatures, add, frechet_metric, set_reference_stats

    metric = frechet_metric(GivenFeatures(extractor.num_features))
    if stats is not None:
        set_reference_stats(metric, *stats)
    else:
        add(metric, features if features is not None else extractor(images), real=True)
    return metric


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 3) -> dict[str, float]:
    """Improved precision/recall (Kynkaanniemi et al. 2019) by torch-fidelity: each set's manifold is the
    union of balls reaching every point's k-th nearest neighbour in its set; precision = share of `fake`
    inside the real manifold, recall = share of `real` inside the generated one.

    Each manifold is built from its set's distinct points, and every point of the other set is counted. A point
    that repeats k times is its own k-th neighbour at distance 0 and adds no ball: 10,000 exact samples of the
    digits teacher (sigma_0 = 0) repeat its 1,797 digits, and a student's precision read 0.086 against them
    (0.63 at 1,000 samples; docs/benchmarks.md, "What a perfect student scores"). A set of at most k distinct
    points keeps its repeats (balls of radius 0: the points themselves)."""
    from torch_fidelity.metric_prc import prc_features_to_metric

    def manifold(x):
        distinct = torch.unique(x, dim=0)
        return distinct if k < len(distinct) < len(x) else x

    def prc(fake_set, real_set):
        return prc_features_to_metric(fake_set, real_set, prc_neighborhood=k, save_cpu_ram=True, verbose=False)

    real_balls, fake_balls = manifold(real), manifold(fake)
    if real_balls is real and fake_balls is fake:  # no repeats (the usual case): one pass gives both
        out = prc(fake, real)
        precision, recall = out["precision"], out["recall"]
    else:
        precision = prc(fake, real_balls)["precision"]
        recall = prc(fake_balls, real)["recall"]
    # Both are shares of points, averaged in float32 there: back to the exact fraction count / N.
    return {"precision": round(precision * len(fake)) / len(fake), "recall": round(recall * len(real)) / len(real)}


def report(samples: dict, reference_images: torch.Tensor | None, reference_name: str, *, extractor=None,
           ref_stats: ReferenceStats | None = None, pr_k: int | None = 3) -> dict:
    """report.json's shape from generated samples and the reference.

    `extractor` (distill.evaluation.metrics.extractors.Extractor; None = pixels) names the FID feature space.
    `ref_stats` (from --ref) replaces the statistics of `reference_images` in that space; its pixel
    statistics, when recorded, serve fd_pixel when `reference_images` is None. precision/recall need reference
    images (k-NN manifolds): `reference_images`, else the images of an image-array `ref_stats`.
    """
    from distill.evaluation.metrics.extractors import build_extractor
    from distill.evaluation.metrics.fid import distance

    ref_end = samples["reference"]
    shape = next(iter(samples["student"].values()), ref_end).shape[1:]
    extractor = extractor or build_extractor("pixel", shape)
    pixels = build_extractor("pixel", shape)
    # FID's reference: --ref when given (statistics or images), else the true samples. fd_pixel and
    # precision/recall need images: the true samples when at hand, else --ref's (or its pixel statistics).
    given = ref_stats.images if ref_stats is not None else None
    ref_images = reference_images if reference_images is not None else given
    ref_feats = extractor(ref_images) if ref_images is not None else None
    if ref_stats is not None and ref_stats.mu is not None:
        fid = reference_metric(extractor, stats=(ref_stats.mu, ref_stats.sigma))
    elif given is not None:
        fid = reference_metric(extractor, features=ref_feats if ref_images is given else extractor(given))
    elif ref_feats is not None:
        fid = reference_metric(extractor, features=ref_feats)
    else:
        raise ValueError("no reference: give true samples or reference statistics (--ref FILE)")
    pixel = reference_metric(pixels, ref_images) if ref_images is not None else \
        (reference_metric(pixels, stats=ref_stats.pixel) if ref_stats is not None and ref_stats.pixel else None)

    def row(x, with_traj):
        entry = {}
        if pixel is not None:
            entry["fd_pixel"] = distance(pixel, pixels(x))
        feats = extractor(x)
        entry["fid"] = distance(fid, feats)
        if pr_k and ref_feats is not None and min(len(ref_feats), len(feats)) > pr_k:
            entry.update(precision_recall(ref_feats, feats, k=pr_k))
        if with_traj and ref_end is not None:
            entry["traj_rmse"] = rms(x, ref_end)
        return entry

    num = next(iter(samples["student"].values()), ref_end).shape[0]
    described = ref_stats is not None and (ref_stats.mu is not None or ref_stats.images is not None)
    return {
        "student": {str(k): row(x, k == 1) for k, x in samples["student"].items()},
        "teacher": {str(n): row(x, True) for n, x in samples["teacher"].items()},
        "num_samples": int(num),
        "features": extractor.name,
        "reference": ref_stats.description if described else reference_name,
        "student_sigmas": {str(k): list(map(float, v)) for k, v in samples["sigmas"].items()},
    }


COLUMNS = ("fid", "fd_pixel", "traj_rmse", "precision", "recall")


def format_table(rep: dict) -> str:
    entries = [e for part in ("student", "teacher") for e in rep[part].values()]
    cols = [c for c in COLUMNS if any(c in e for e in entries)]
    lines = [f"{'sampler':<22}" + "".join(f"{c:>12}" for c in cols)]
    for part, label in (("student", "student, {} step(s)"), ("teacher", "teacher Heun, NFE {}")):
        for key, e in rep[part].items():
            cells = "".join(f"{e[c]:>12.4f}" if c in e else f"{'-':>12}" for c in cols)
            lines.append(f"{label.format(key):<22}{cells}")
    lines.append(f"({rep['num_samples']} samples; features: {rep['features']}; "
                 f"reference: {rep['reference']})")
    return "\n".join(lines)


def plot_fid_vs_nfe(rep: dict, path: str | Path, metric: str = "fid") -> Path:
    """FID against network evaluations: the student at k steps (k NFE) as points, the teacher's Heun
    sampler as a line; log x axis (and log y, FID spans orders of magnitude across NFE)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(5.5, 4))
    t = sorted((int(n), e[metric]) for n, e in rep["teacher"].items() if metric in e)
    s = sorted((int(k), e[metric]) for k, e in rep["student"].items() if metric in e)
    if t:
        ax.plot(*zip(*t, strict=True), "o-", color="tab:blue", label="teacher (EDM Heun)")
    if s:
        ax.plot(*zip(*s, strict=True), "s--", color="tab:red", markersize=8, label="student (consistency)")
        for k, v in s:
            ax.annotate(f"{k} step{'s' if k > 1 else ''}", (k, v), textcoords="offset points", xytext=(6, 4),
                        fontsize=8)
    ax.set_xscale("log")
    ax.set_xticks(sorted({n for n, _ in t + s}))  # label the NFE measured, not powers of ten
    ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    if all(v > 0 for _, v in t + s):
        ax.set_yscale("log")
    ax.set_xlabel("network evaluations (NFE)")
    ax.set_ylabel(f"{metric.upper() if metric == 'fid' else metric} ({rep['features']})", fontsize=8)
    ax.set_title(f"{metric} vs NFE, {rep['num_samples']} samples", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
