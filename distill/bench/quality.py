"""`distill bench quality`: the methods (cd, ct, ict, ect, scd, sct) on the digits benchmark, same budget each.

Every method starts from the demo recipe (exact digits-mixture teacher, small conv UNet, batch 128, Adam,
EMA 0.999) and trains for the same number of optimizer steps; only the method block and its paper's loss
change. The student is then evaluated as `distill eval` does: 1- and 2-step samples from fixed noises,
traj_rmse against the exact ODE endpoint, FID in the digits-classifier feature space and fd_pixel against
exact samples of the mixture. Output: {"<method>": <report.json>} (DESIGN.md).

ECT tunes a pretrained diffusion model, and the digits teacher is a formula with no weights: it first
trains the same UNet as a denoiser (EDM's loss, with the mixture's exact posterior mean as the regression
target, so the "pretrained model" is as good as the budget allows) for `ect_pretrain_steps`, reported
beside the result. CD and sCD evaluate the exact teacher at every step; CT, iCT, ECT and sCT only see data.
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


def method_config(method: str, run_dir: Path, steps: int, seed: int, extra: list[str] = ()):
    from omegaconf import OmegaConf

    from distill.config import load_yaml_chain, merge_blocks, to_config

    data = merge_blocks(load_yaml_chain(BASE_RECIPE), METHOD_OVERRIDES[method])
    data = merge_blocks(data, {"run": {"dir": str(run_dir), "seed": seed},
                               "trainer": {"max_steps": steps, "enable_progress_bar": False,
                                           "log_every_n_steps": max(steps // 10, 1)},
                               "checkpoint": {"every_n_steps": steps},
                               # The benchmark's own settings, pinned so docs/benchmarks.md's table stays
                               # reproducible when the demo recipe changes (it moved to batch 64).
                               "data": {"batch_size": 128}, "student": {"sigmas_2": [80.0, 2.0]},
                               "eval": {"fid": False}})  # evaluated once at the end, below
    if method in ("scd", "sct"):
        data = merge_blocks(data, {"method": {"tangent_warmup_steps": max(1, round(steps * TANGENT_WARMUP_FRACTION))}})
    if extra:
        from distill.config import parse_overrides

        data = merge_blocks(data, parse_overrides(list(extra)))
    return to_config(OmegaConf.to_container(OmegaConf.create(data)))


class Evaluator:
    """`distill eval`'s report for several students of one teacher, from one set of noises.

    The exact ODE endpoints (the expensive part: a tight dopri5 solve per noise) and the reference
    statistics are computed once and shared by every method, as `distill.evaluation.evaluate.generate` would compute
    them for each: sample i uses seed + i, its first draw is the 1-step noise.
    """

    def __init__(self, exact: Teacher, num: int, seed: int):
        from distill.evaluation.metrics.extractors import build_extractor
        from distill.math.solvers import reference_solution
        from distill.sampling import per_sample_noise

        self.exact, self.num, self.seed = exact, num, seed
        self.noise = per_sample_noise(range(seed, seed + num), exact.image_shape, 2)
        x_t = self.noise[0].double() * exact.sigma_max
        self.reference = reference_solution(exact.denoise, x_t, exact.sigma_max, exact.sigma_min)
        self.true = exact.sample(max(num, 1000), torch.Generator().manual_seed(seed + 0x5EED))
        self.extractor = build_extractor("auto", exact.image_shape)

    def __call__(self, run_dir: Path) -> dict:
        from distill.evaluation.evaluate import report
        from distill.export import load_student
        from distill.sampling import consistency_sample, default_sigmas

        student = load_student(run_dir).eval()
        sigmas = {k: default_sigmas(student, k) for k in (1, 2)}
        with torch.no_grad():
            xs = {k: consistency_sample(student, self.noise, s).double().cpu() for k, s in sigmas.items()}
        samples = {"student": xs, "teacher": {}, "reference": self.reference, "sigmas": sigmas}
        return report(samples, self.true, f"{self.true.shape[0]} exact samples of the digits teacher",
                      extractor=self.extractor)


def run_quality(methods=("cd", "ct", "ict", "ect"), json_path: str | Path | None = None, *, steps: int = 1500,
                ect_pretrain_steps: int = 1000, num: int = 1000, seed: int = 0, extra: list[str] = (),
                log=print) -> dict:
    """Train each method on digits for `steps` optimizer steps; {"<method>": report} (+ json_path)."""
    import teachers
    from distill.training.fit import fit

    unknown = [m for m in methods if m not in METHOD_OVERRIDES]
    if unknown:
        raise ValueError(f"--method {','.join(unknown)}: choose from {', '.join(METHOD_OVERRIDES)}")
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    exact = teachers.load({"name": "digits"})
    t0 = time.perf_counter()
    evaluate = Evaluator(exact, num, seed)
    log(f"reference ODE endpoints of {num} noises: {time.perf_counter() - t0:.0f} s")
    results = {}
    with tempfile.TemporaryDirectory(prefix="distill-quality-") as tmp:
        for method in methods:
            t0 = time.perf_counter()
            cfg = method_config(method, Path(tmp) / method, steps, seed, extra)
            teacher, note = exact, {}
            if method == "ect":
                from omegaconf import OmegaConf

                network = OmegaConf.to_container(cfg.student.network)
                teacher = pretrain_denoiser(exact, network, ect_pretrain_steps, cfg.data.batch_size, seed=seed)
                note = {"pretrain_steps": ect_pretrain_steps, "pretrain_s": round(time.perf_counter() - t0, 1)}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fit(cfg, teacher=teacher)
            train_s = time.perf_counter() - t0
            rep = evaluate(Path(tmp) / method)
            rep["train"] = {"steps": steps, "seconds": round(train_s, 1), **note}
            results[method] = rep
            s1, s2 = rep["student"]["1"], rep["student"]["2"]
            log(f"{method}: 1 step fid {s1['fid']:.3f} traj_rmse {s1['traj_rmse']:.4f} | 2 steps fid "
                f"{s2['fid']:.3f} | fd_pixel {s1['fd_pixel']:.3f}/{s2['fd_pixel']:.3f} ({train_s:.0f} s)")
    if json_path is not None:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(results, indent=2) + "\n")
    return results


def format_methods_table(results: dict) -> str:
    """Markdown rows for docs/benchmarks.md."""
    lines = ["| method | FID 1 step | FID 2 steps | fd_pixel 1 / 2 | traj_rmse 1 step | train s |",
             "|---|---|---|---|---|---|"]
    for m, rep in results.items():
        s1, s2 = rep["student"]["1"], rep["student"]["2"]
        lines.append(f"| {m} | {s1['fid']:.3f} | {s2['fid']:.3f} | {s1['fd_pixel']:.3f} / {s2['fd_pixel']:.3f} | "
                     f"{s1['traj_rmse']:.4f} | {rep['train']['seconds']:.0f} |")
    return "\n".join(lines)
