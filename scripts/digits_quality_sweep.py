"""Recipe experiments on the digits demo (docs/benchmarks.md, "Continuous pairs, smooth noise embeddings").

Each argument is "NAME key=value ...": train recipes/demo.yaml with those overrides into OUT/runs/NAME (reused
when it already finished), then measure on `distill eval`'s 1,000 fixed noises: 1-step FID (digits features),
fd_pixel and traj_rmse; the 2-step FID at [80, s] over SWEEP; and the "cliff", FID of f(x0 + s z, s) on exact data
at grid and off-grid s. One JSON line per run is appended to OUT/results.jsonl.

    python scripts/digits_quality_sweep.py --out runs/sweep "base" "cosine optim.schedule=cosine"
"""

from __future__ import annotations

import argparse
import json
import logging
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
NUM = 1000
SWEEP = [0.2, 0.35, 0.6, 1.0, 1.7, 2.9, 5.0, 10.0]
CLIFF = [1.92, 2.0, 2.41, 2.5, 3.26]  # 1.92 and 3.26 are levels of the 18-level Karras grid; the rest are not


def pixel_fd(x: torch.Tensor, ref: torch.Tensor) -> float:
    from distill.evaluation.evaluate import reference_metric
    from distill.evaluation.metrics.extractors import build_extractor
    from distill.evaluation.metrics.fid import distance

    pixels = build_extractor("pixel", tuple(ref.shape[1:]))
    return distance(reference_metric(pixels, ref), pixels(x))


class Measure:
    def __init__(self, cache: Path):
        import teachers
        from distill.evaluation.metrics.extractors import build_extractor
        from distill.evaluation.metrics.fid import add, frechet_metric
        from distill.math.solvers import reference_solution
        from distill.sampling import per_sample_noise

        exact = teachers.load({"name": "digits"})
        self.extractor = build_extractor("auto", exact.image_shape)
        self.true = exact.sample(NUM, torch.Generator().manual_seed(0x5EED))
        self.metric = frechet_metric(self.extractor.module)
        add(self.metric, self.true, real=True)
        self.noise = per_sample_noise(range(NUM), exact.image_shape, 2)
        if cache.is_file():
            self.reference = torch.load(cache, weights_only=True)
        else:  # the exact ODE endpoints of the 1-step noises (dopri5), shared by every run
            self.reference = reference_solution(exact.denoise, self.noise[0].double() * 80.0, 80.0, 0.002)
            torch.save(self.reference, cache)

    def fid(self, x: torch.Tensor) -> float:
        from distill.evaluation.metrics.fid import distance

        return distance(self.metric, x.float())

    @torch.no_grad()
    def __call__(self, student) -> dict:
        from distill.sampling import consistency_sample

        x1 = consistency_sample(student, self.noise, [80.0]).double()
        out = {"fid1": self.fid(x1), "fdpix1": pixel_fd(x1.float(), self.true),
               "traj": float((x1 - self.reference).pow(2).mean().sqrt()),
               "sweep": {s: self.fid(consistency_sample(student, self.noise, [80.0, s])) for s in SWEEP}}
        z = torch.randn(self.true.shape, generator=torch.Generator().manual_seed(1))
        out["cliff"] = {s: self.fid(student(self.true + s * z, s)) for s in CLIFF}
        values = list(out["sweep"].values())
        out["sweep_ratio"], out["fid2_best"] = max(values) / min(values), min(values)
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help='"NAME key=value ..." per run')
    parser.add_argument("--out", default="runs/digits_quality_sweep")
    parser.add_argument("--recipe", default=str(ROOT / "recipes" / "demo.yaml"))
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)

    from distill.config import resolve
    from distill.export import load_student
    from distill.training.fit import fit

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    measure = Measure(out / "reference.pt")
    for spec in args.runs:
        name, *overrides = spec.split()
        run = out / "runs" / name
        t0 = time.time()
        if not (run / "student.json").exists():
            fit(resolve(args.recipe, [f"run.dir={run}", "trainer.enable_progress_bar=false", "eval.fid=false",
                                      *overrides]))
        res = {"name": name, "overrides": overrides, "train_s": round(time.time() - t0),
               **measure(load_student(run).eval())}
        with open(out / "results.jsonl", "a") as f:
            f.write(json.dumps(res) + "\n")
        sweep = " ".join(f"{s}:{v:.1f}" for s, v in res["sweep"].items())
        cliff = " ".join(f"{s}:{v:.1f}" for s, v in res["cliff"].items())
        print(f"{name}: fid1 {res['fid1']:.2f} fdpix1 {res['fdpix1']:.3f} traj {res['traj']:.3f} | 2-step {sweep} "
              f"(max/min {res['sweep_ratio']:.2f}) | cliff {cliff}", flush=True)


if __name__ == "__main__":
    main()
