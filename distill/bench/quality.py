"""`distill bench quality`: the methods (cd, ct, ict, ect, scd, sct) on the digits benchmark, same budget each.

Every method starts from the demo recipe (exact digits-mixture teacher, the demo's student network, batch 128,
Adam 5e-4 with the demo's cosine decay, EMA 0.999, random initialisation: the demo's denoiser warm start is off)
and trains for the same number of optimizer steps; only the method block and its paper's loss change. The
student is then evaluated as `distill eval` does: 1- and 2-step samples from fixed noises, traj_rmse against the
exact ODE endpoint, FID in the digits-classifier feature space and fd_pixel against exact samples of the mixture.
Output: {"<method>": <report.json>} (DESIGN.md).

ECT tunes a pretrained diffusion model, and the digits teacher is a formula with no weights: it first
trains the same network as a denoiser (EDM's loss, with the mixture's exact posterior mean as the regression
target, so the "pretrained model" is as good as the budget allows) for `ect_pretrain_steps`, reported
beside the result. CD and sCD evaluate the exact teacher at every step; CT, iCT, ECT and sCT only see data.

`--teacher network` runs the workflow users run: a trained network teacher (recipes/digits_teacher.yaml,
trained once and cached, distill/bench/network_teacher.py) and students copied from its backbone
(recipes/digits_edm_cd.yaml, every method; ECT then needs no pretraining of its own). FID is then against the
digits data the teacher was trained on, and each report also holds the teacher's own 35-NFE EDM Heun row and
the student's FID as a ratio of it. `--sweep` adds the 2-step FID at second sigmas log-spaced over [0.2, 10],
the 1-step FID from the teacher's ODE endpoints re-noised to each, and what a perfect student's 2 steps score
there (the teacher's ODE from those re-noised endpoints; `Evaluator.sweep`).
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
import warnings
from pathlib import Path

import torch

from teachers.base import BackboneFeeding, Teacher

ROOT = Path(__file__).resolve().parents[2]
BASE_RECIPE = ROOT / "recipes" / "demo.yaml"
NETWORK_RECIPE = ROOT / "recipes" / "digits_edm_cd.yaml"  # students of the trained (network) teacher
TEACHER_NFE = 35  # the network teacher's own row: EDM's Heun sampler at EDM's CIFAR-10 NFE
SWEEP_SIGMAS = [round(0.2 * 50 ** (i / 9), 4) for i in range(10)]  # 10 log-spaced values over [0.2, 10]

# Each method with its paper's loss (and ECT's c = 0: the plain L2 norm over 1/(t - r), ECT's `-c 0`).
# CT uses l2 here: the CM paper's CT used LPIPS, which means nothing on 8x8 digits.
METHOD_OVERRIDES = {
    "cd": {"method": {"name": "cd"}, "loss": {"name": "l2", "weighting": "uniform"}},
    "ct": {"method": {"name": "ct"}, "loss": {"name": "l2", "weighting": "uniform"}},
    "ict": {"method": {"name": "ict"}, "loss": {"name": "pseudo_huber", "weighting": "inverse_delta"}},
    "ect": {"method": {"name": "ect"}, "loss": {"name": "pseudo_huber", "c": 0.0, "weighting": "inverse_delta"}},
    # sCM's own objective (distill/methods/scm.py); the tangent warm-up is scaled to the budget below.
    "scd": {"method": {"name": "scd"}},
    "sct": {"method": {"name": "sct"}},
}
# sCM warms the tangent up over its first 10k iterations; here over this fraction of the budget.
TANGENT_WARMUP_FRACTION = 0.1


class PretrainedTeacher(Teacher):
    """A network teacher (backbone + EDM feeding) trained here to denoise like an exact teacher."""

    def __init__(self, exact: Teacher, backbone: torch.nn.Module):
        super().__init__(sigma_min=exact.sigma_min, sigma_max=exact.sigma_max, sigma_data=exact.sigma_data,
                         image_shape=exact.image_shape, num_classes=exact.num_classes)
        self.backbone = backbone
        self.feeding = BackboneFeeding(exact.sigma_data)
        self.spec = dict(exact.spec)  # evaluation rebuilds the exact teacher from student.json
        self.licence = exact.licence
        self._exact = exact

    def sample(self, n: int, generator=None, cond=None) -> torch.Tensor:
        """Exact samples of the data it was trained on (data.name=teacher/toy2d draw from here)."""
        return self._exact.sample(n, generator, cond)


def pretrain_denoiser(exact: Teacher, network: dict, steps: int, batch: int = 128, lr: float = 1e-3,
                      seed: int = 0, p_mean: float = -1.2, p_std: float = 1.2) -> PretrainedTeacher:
    """EDM's denoiser training (EDM sec. 5: lognormal sigma, lambda = (s^2 + sd^2) / (s sd)^2), regressing
    the exact teacher's D(x, sigma) instead of x0: the same minimiser, with less variance."""
    from distill.training.student import network_spec_for
    from teachers.networks import build_network

    torch.manual_seed(seed)
    net = build_network(**network_spec_for(network, exact)).train()
    teacher = PretrainedTeacher(exact, net)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    sd = exact.sigma_data
    for _ in range(steps):
        x0 = exact.sample(batch, g)
        sigma = (p_mean + p_std * torch.randn(batch, generator=g)).exp().clamp(exact.sigma_min, exact.sigma_max)
        x = x0 + sigma.view(-1, *[1] * (x0.ndim - 1)) * torch.randn(x0.shape, generator=g)
        with torch.no_grad():
            target = exact.denoise(x, sigma)
        weight = (sigma**2 + sd**2) / (sigma * sd) ** 2
        loss = (weight * (teacher.feeding.denoise(net, x, sigma) - target).flatten(1).pow(2).mean(1)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return teacher.requires_grad_(False).eval()


def method_config(method: str, run_dir: Path, steps: int | None, seed: int, extra: list[str] = (),
                  teacher_path: Path | None = None):
    """The bench's recipe for `method`: the demo recipe (exact teacher) or, given a trained teacher's file,
    recipes/digits_edm_cd.yaml with that teacher; steps None keeps the recipe's own."""
    from omegaconf import OmegaConf

    from distill.config import load_yaml_chain, merge_blocks, to_config

    if teacher_path is None:
        data = merge_blocks(load_yaml_chain(BASE_RECIPE), METHOD_OVERRIDES[method])
        # The benchmark's own settings, pinned so docs/benchmarks.md's table stays reproducible when the demo
        # recipe changes. The 2-step sigmas are the demo's [80, 0.2]: at 1,500 steps every method's sweep is
        # within 1% of its lowest at s <= 0.5 (the bench used [80, 2] before). The network is the demo's (its
        # conv UNet until the demo moved to an MLP). The lr decays by a cosine to 5% as the demo's does: with a
        # constant lr, ECT, sCD and iCT ended 4-10x worse (FID 399, 201, 135 against 25, 40, 18 at 4,500 steps;
        # docs/benchmarks.md, "Methods on the digits benchmark"). No warm start: CT, iCT, ECT and sCT see data only.
        data = merge_blocks(data, {"data": {"batch_size": 128},
                                   "student": {"sigmas_2": [80.0, 0.2], "denoiser_fraction": 0.0},
                                   "optim": {"schedule": "cosine", "final_lr_ratio": 0.05}})
    else:
        data = merge_blocks(load_yaml_chain(NETWORK_RECIPE), METHOD_OVERRIDES[method])
        data = merge_blocks(data, {"teacher": {"name": "edm", "path": str(teacher_path)}})
    steps = steps or data["trainer"]["max_steps"]
    data = merge_blocks(data, {"run": {"dir": str(run_dir), "seed": seed},
                               "trainer": {"max_steps": steps, "enable_progress_bar": False,
                                           "log_every_n_steps": max(steps // 10, 1)},
                               "checkpoint": {"every_n_steps": steps},
                               "eval": {"fid": False}})  # evaluated once at the end, below
    if method in ("scd", "sct"):
        warmup = max(1, round(steps * TANGENT_WARMUP_FRACTION))
        data = merge_blocks(data, {"method": {"tangent_warmup_steps": warmup}})
    if extra:
        from distill.config import parse_overrides

        data = merge_blocks(data, parse_overrides(list(extra)))
    return to_config(OmegaConf.to_container(OmegaConf.create(data)))


class Evaluator:
    """`distill eval`'s report for several students of one teacher, from one set of noises.

    The exact ODE endpoints (the expensive part: a tight dopri5 solve per noise) and the reference
    statistics are computed once and shared by every method, as `distill.evaluation.evaluate.generate` would compute
    them for each: sample i uses seed + i, its first draw is the 1-step noise. The reference is exact samples
    of an analytic teacher, or the data a trained teacher was trained on (`reference_images`); a teacher
    without exact samples also gets its own EDM Heun row at `teacher_nfe`.
    """

    def __init__(self, teacher, num: int, seed: int, teacher_nfe=()):
        from distill.evaluation.evaluate import reference_tolerance
        from distill.evaluation.metrics.extractors import build_extractor
        from distill.evaluation.teacher_quality import heun_samples, reference_images
        from distill.math.solvers import reference_solution
        from distill.sampling import per_sample_noise

        self.teacher, self.num, self.seed = teacher, num, seed
        self.noise = per_sample_noise(range(seed, seed + num), teacher.image_shape, 2)
        x_t = self.noise[0].double() * teacher.sigma_max
        tol = reference_tolerance(teacher)
        self.tol = tol
        self.reference = reference_solution(teacher.denoise, x_t, teacher.sigma_max, teacher.sigma_min,
                                            rtol=tol, atol=tol)
        self.true, self.reference_name = reference_images(teacher, max(num, 1000), seed)
        self.extractor = build_extractor("auto", teacher.image_shape)
        self.teacher_rows = {n: heun_samples(teacher, num, n, seed).double() for n in teacher_nfe}

    @torch.no_grad()
    def fid(self, x: torch.Tensor) -> float:
        from distill.evaluation.metrics.fid import add, distance, frechet_metric

        if not hasattr(self, "_metric"):
            self._metric = frechet_metric(self.extractor.module)
            add(self._metric, self.true, real=True)
        return distance(self._metric, x)

    def __call__(self, run_dir: Path, sweep: bool = False) -> dict:
        from distill.evaluation.evaluate import report
        from distill.export import load_student
        from distill.sampling import consistency_sample, default_sigmas

        student = load_student(run_dir).eval()
        sigmas = {k: default_sigmas(student, k) for k in (1, 2)}
        with torch.no_grad():
            xs = {k: consistency_sample(student, self.noise, s).double().cpu() for k, s in sigmas.items()}
        samples = {"student": xs, "teacher": self.teacher_rows, "reference": self.reference, "sigmas": sigmas}
        rep = report(samples, self.true, self.reference_name, extractor=self.extractor)
        if self.teacher_rows:
            t = rep["teacher"][str(max(self.teacher_rows))]["fid"]
            rep["ratio_to_teacher"] = {k: rep["student"][k]["fid"] / t for k in rep["student"]}
        if sweep:
            rep["sweep"] = self.sweep(student)
        return rep

    @torch.no_grad()
    def sweep(self, student) -> dict:
        """2-step FID at [sigma_max, s] for s in SWEEP_SIGMAS (same noises): where the second step may go.

        `from_ode`: FID of one step from s when the step starts at the teacher's ODE endpoints re-noised to s
        (the second step's input without the first step's errors). `exact`: a perfect student's 2-step FID at s
        (`exact_sweep`), the yardstick for both: from s >= ~1.5 a perfect student's second step draws other digits,
        and that alone moves FID by several points at 1,000 samples.
        """
        from distill.sampling import consistency_sample, noise_scales

        fids = [self.fid(consistency_sample(student, self.noise, [student.sigma_max, s]).double().cpu())
                for s in SWEEP_SIGMAS]
        dev = next(student.parameters()).device
        endpoints, z = self.reference.to(dev, torch.float32), self.noise[1].to(dev)
        # The second step's own re-noising (the same multiplier as consistency_sample's), from the endpoints.
        from_ode = [self.fid(student(endpoints + noise_scales(student, [student.sigma_max, s])[1] * z, s)
                             .double().cpu()) for s in SWEEP_SIGMAS]
        exact = self.exact_sweep()
        return {"sigmas": list(SWEEP_SIGMAS), "fid": fids, "max_over_min": max(fids) / min(fids),
                "from_ode": from_ode, "exact": exact, "exact_max_over_min": max(exact) / min(exact)}

    @torch.no_grad()
    def exact_second_step(self, s: float) -> torch.Tensor:
        """A perfect consistency model's 2-step samples [sigma_max, s] on these noises: its first step is the exact
        ODE endpoint, its second the teacher's ODE from that endpoint re-noised to s (CM Alg. 1's multiplier,
        the same second noise as the student's) back to sigma_min."""
        from distill.math.solvers import reference_solution
        from distill.sampling import noise_scales

        t = self.teacher
        x_s = self.reference + noise_scales(t, [t.sigma_max, s])[1] * self.noise[1].double()
        # FID only sees which image each sample lands on: at 1e-5 the samples move by ~5e-5 from the 1e-8 solve
        # (digits, s = 10), and the solve takes a quarter of the time.
        tol = max(self.tol, 1e-5)
        return reference_solution(t.denoise, x_s, s, t.sigma_min, rtol=tol, atol=tol)

    @torch.no_grad()
    def exact_sweep(self) -> list[float]:
        """FID of `exact_second_step` at each sweep sigma: what the student's 2-step FID at s is to be compared
        with. Once the second sigma is large enough to move a sample to another digit, the 2-step samples are a
        new draw of digits, and at 1,000 samples FID moves by several points between draws of exact samples
        (docs/benchmarks.md, "What a perfect student scores"), so the 1-step FID is no yardstick there. Computed
        once per Evaluator: it does not depend on the student."""
        if not hasattr(self, "_exact_sweep"):
            self._exact_sweep = [self.fid(self.exact_second_step(s)) for s in SWEEP_SIGMAS]
        return self._exact_sweep


def run_quality(methods=("cd", "ct", "ict", "ect"), json_path: str | Path | None = None, *,
                steps: int | None = 1500, ect_pretrain_steps: int = 1000, num: int = 1000, seed: int = 0,
                extra: list[str] = (), teacher: str = "exact", sweep: bool = False, teacher_overrides=(),
                log=print) -> dict:
    """Train each method on digits for `steps` optimizer steps (None: the recipe's); {"<method>": report}
    (+ json_path). teacher: exact (the digits mixture) or network (the cached trained digits teacher;
    `teacher_overrides` apply to its recipe)."""
    import teachers
    from distill.training.fit import fit

    unknown = [m for m in methods if m not in METHOD_OVERRIDES]
    if unknown:
        raise ValueError(f"--method {','.join(unknown)}: choose from {', '.join(METHOD_OVERRIDES)}")
    if teacher not in ("exact", "network"):
        raise ValueError(f"--teacher {teacher!r}: choose exact or network")
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    # Every method's recipe first: a bad override fails here (ConfigError, exit 2), not after minutes of teacher
    # training and reference ODE solves.
    for method in methods:
        method_config(method, Path("unused"), steps, seed, extra,
                      Path("teacher.safetensors") if teacher == "network" else None)
    teacher_path = None
    if teacher == "network":
        from distill.bench.network_teacher import cached_teacher_path

        teacher_path = cached_teacher_path(overrides=teacher_overrides, log=log)
        base = teachers.load({"name": "edm", "path": str(teacher_path)})
    else:
        base = teachers.load({"name": "digits"})
    t0 = time.perf_counter()
    evaluate = Evaluator(base, num, seed, teacher_nfe=(TEACHER_NFE,) if teacher_path else ())
    log(f"reference ODE endpoints of {num} noises: {time.perf_counter() - t0:.0f} s")
    results = {}
    with tempfile.TemporaryDirectory(prefix="distill-quality-") as tmp:
        for method in methods:
            t0 = time.perf_counter()
            cfg = method_config(method, Path(tmp) / method, steps, seed, extra, teacher_path)
            trained_with, note = base, {}
            if method == "ect" and teacher_path is None:  # a network teacher already is the pretrained model
                from omegaconf import OmegaConf

                network = OmegaConf.to_container(cfg.student.network)
                trained_with = pretrain_denoiser(base, network, ect_pretrain_steps, cfg.data.batch_size, seed=seed)
                note = {"pretrain_steps": ect_pretrain_steps, "pretrain_s": round(time.perf_counter() - t0, 1)}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fit(cfg, teacher=trained_with if teacher_path is None else None)
            train_s = time.perf_counter() - t0
            rep = evaluate(Path(tmp) / method, sweep=sweep)
            rep["train"] = {"steps": cfg.trainer.max_steps, "seconds": round(train_s, 1), **note}
            if teacher_path is not None:
                rep["train"]["teacher"] = str(teacher_path)
            results[method] = rep
            log(summary(method, rep, train_s))
    if json_path is not None:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(results, indent=2) + "\n")
    return results


def summary(method: str, rep: dict, train_s: float) -> str:
    s1, s2 = rep["student"]["1"], rep["student"]["2"]
    line = (f"{method}: 1 step fid {s1['fid']:.3f} traj_rmse {s1['traj_rmse']:.4f} | 2 steps fid {s2['fid']:.3f} | "
            f"fd_pixel {s1['fd_pixel']:.3f}/{s2['fd_pixel']:.3f} ({train_s:.0f} s)")
    if "ratio_to_teacher" in rep:
        t = rep["teacher"][str(TEACHER_NFE)]["fid"]
        r = rep["ratio_to_teacher"]
        line += f" | teacher {TEACHER_NFE} NFE fid {t:.3f}: ratios {r['1']:.2f} / {r['2']:.2f}"
    if "sweep" in rep:
        sw = rep["sweep"]
        line += f" | sweep max/min {sw['max_over_min']:.2f} (a perfect student's {sw['exact_max_over_min']:.2f})"
    return line


def format_methods_table(results: dict) -> str:
    """Markdown rows for docs/benchmarks.md (with the teacher's FID and the ratios for a network teacher)."""
    network = any("ratio_to_teacher" in rep for rep in results.values())
    head = "| method | FID 1 step | FID 2 steps | fd_pixel 1 / 2 | traj_rmse 1 step | train s |"
    if network:
        head += f" teacher FID ({TEACHER_NFE} NFE) | ratio 1 / 2 |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for m, rep in results.items():
        s1, s2 = rep["student"]["1"], rep["student"]["2"]
        row = (f"| {m} | {s1['fid']:.3f} | {s2['fid']:.3f} | {s1['fd_pixel']:.3f} / {s2['fd_pixel']:.3f} | "
               f"{s1['traj_rmse']:.4f} | {rep['train']['seconds']:.0f} |")
        if network:
            r = rep["ratio_to_teacher"]
            row += f" {rep['teacher'][str(TEACHER_NFE)]['fid']:.3f} | {r['1']:.2f} / {r['2']:.2f} |"
        lines.append(row)
    sweeps = {m: rep["sweep"] for m, rep in results.items() if "sweep" in rep}
    if sweeps:
        sigmas = next(iter(sweeps.values()))["sigmas"]
        lines += ["", "| 2-step FID at second sigma | " + " | ".join(f"{s:g}" for s in sigmas) + " | max/min |",
                  "|---|" + "---|" * (len(sigmas) + 1)]
        lines += [f"| {m} | " + " | ".join(f"{f:.2f}" for f in sw["fid"]) + f" | {sw['max_over_min']:.2f} |"
                  for m, sw in sweeps.items()]
        lines += [f"| {m}, 1 step from the ODE endpoints at s | " + " | ".join(f"{f:.2f}" for f in sw["from_ode"])
                  + " | |" for m, sw in sweeps.items()]
        exact = next((sw for sw in sweeps.values() if "exact" in sw), None)
        if exact is not None:
            lines.append("| a perfect student (the teacher's ODE), 2 steps | "
                         + " | ".join(f"{f:.2f}" for f in exact["exact"]) + f" | {exact['exact_max_over_min']:.2f} |")
    return "\n".join(lines)
