"""`distill train-teacher`'s side effects: the averaged teacher's FID and sample grids, and its export.

Both read the first EMA average (`HalfLifeEMA`; the online weights when there is none), the weights
teacher.safetensors holds. The FID is that of the EDM Heun sampler at eval.nfe (35 by default, EDM's
CIFAR-10 setting) against the training images (or eval.ref), logged to metrics.csv as fid_heun<nfe> and
recorded in teacher.json.
"""

from __future__ import annotations

import copy
import logging
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_info

log = logging.getLogger(__name__)


def averaged_teacher(trainer, pl_module):
    """The teacher the run would export now: an EDMTeacher around a copy of the network with the EMA weights."""
    from teachers.edm import EDMTeacher

    net = copy.deepcopy(pl_module.net)
    ema = next((c for c in trainer.callbacks if c.__class__.__name__ == "HalfLifeEMA"), None)
    if ema is not None and ema.halflives:
        net.load_state_dict(ema.weights())
    s = pl_module.spec
    return EDMTeacher(net, sigma_min=s.sigma_min, sigma_max=s.sigma_max, sigma_data=s.sigma_data,
                      image_shape=s.image_shape, num_classes=s.num_classes).eval()


class TeacherEvaluation(L.Callback):
    def __init__(self, cfg, run_dir: Path):
        self.cfg, self.out = cfg, Path(run_dir) / "samples"
        self.result: dict | None = None
        self._ref = self._extractor = None
        self._last = None  # (step, samples, FID computed) of the last evaluation

    def on_fit_start(self, trainer, pl_module):
        from distill.evaluation.metrics.extractors import build_extractor
        from distill.evaluation.metrics.fid import add, frechet_metric, set_reference_stats
        from distill.evaluation.metrics.reference import check_compatible, load_stats

        e = self.cfg.eval
        if not e.fid or trainer.global_rank != 0:
            return
        self._extractor = build_extractor(e.features, pl_module.spec.image_shape, e.inception_path)
        metric = frechet_metric(self._extractor.module)
        if e.ref:
            stats = load_stats(e.ref)
            if stats.mu is None:
                add(metric, stats.images, real=True)
            else:
                check_compatible(stats, self._extractor.name, self._extractor.num_features, e.ref)
                set_reference_stats(metric, stats.mu, stats.sigma)
            self._ref = (metric, stats.description)
        elif getattr(trainer.datamodule, "images", None) is not None:
            images = trainer.datamodule.images
            add(metric, images, real=True)
            self._ref = (metric, f"{images.shape[0]} training images")
        else:
            log.warning("teacher FID is off: streamed data are not held in memory; set eval.ref to an .npz of "
                        "reference statistics")
            self._extractor = None

    @torch.no_grad()
    def evaluate(self, trainer, pl_module, tag: str) -> None:
        from distill.evaluation.figures import save_grid
        from distill.evaluation.metrics.fid import distance
        from distill.evaluation.teacher_quality import heun_samples

        e, step = self.cfg.eval, trainer.global_step
        if trainer.global_rank != 0:
            return
        t0 = time.perf_counter()
        num = max(e.num, e.grid_num) if self._extractor is not None else e.grid_num
        if self._last is None or self._last[0] != step:  # the end of a run may repeat the last evaluation
            self._last = (step, heun_samples(averaged_teacher(trainer, pl_module).to(pl_module.device), num,
                                             e.nfe, seed=self.cfg.run.seed), False)
        _, x, scored = self._last
        if len(pl_module.spec.image_shape) == 3:
            self.out.mkdir(parents=True, exist_ok=True)
            save_grid(x[:e.grid_num], self.out / f"{tag}_heun{e.nfe}.png", cols=8)
        if self._extractor is None or e.num < 2 or scored:
            return
        self._last = (step, x, True)
        fid = distance(self._ref[0], x[:e.num])
        self.result = {f"fid_heun{e.nfe}": fid, "num": e.num, "nfe": e.nfe, "features": self._extractor.name,
                       "reference": self._ref[1], "step": step}
        if trainer.logger is not None:
            trainer.logger.log_metrics({f"fid_heun{e.nfe}": fid}, step=step)
            trainer.logger.save()
        rank_zero_info(f"step {step}: teacher EDM Heun {e.nfe} NFE FID {fid:.4f} ({e.num} samples, "
                       f"{self._extractor.name}, against {self._ref[1]}; {time.perf_counter() - t0:.1f} s)")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        every, step = self.cfg.eval.every_n_steps, trainer.global_step
        if every > 0 and step > 0 and step % every == 0:
            self.evaluate(trainer, pl_module, f"step{step:07d}")

    def on_train_end(self, trainer, pl_module):
        self.evaluate(trainer, pl_module, "final")


class ExportTeacher(L.Callback):
    """teacher.safetensors + teacher.json (teachers/edm.py's pair), loadable as
    `teacher: {name: edm, path: RUN/teacher.safetensors}`."""

    def __init__(self, cfg, run_dir: Path):
        self.cfg, self.path = cfg, Path(run_dir) / "teacher.safetensors"

    def on_train_end(self, trainer, pl_module):
        from omegaconf import OmegaConf

        from teachers.edm import save_edm

        if trainer.global_rank != 0:
            return
        cfg, teacher = self.cfg, averaged_teacher(trainer, pl_module)
        ema = next((c for c in trainer.callbacks if c.__class__.__name__ == "HalfLifeEMA"), None)
        evaluation = next((c for c in trainer.callbacks if isinstance(c, TeacherEvaluation)), None)
        d = cfg.data
        data = {"name": d.name, "path": d.path, "size": d.size, "xflip": d.xflip, "seed": cfg.run.seed,
                "licence": d.licence}
        training = {"steps": trainer.global_step, "batch_size": d.batch_size * trainer.world_size
                    * trainer.accumulate_grad_batches, "loss": OmegaConf.to_container(cfg.loss),
                    "weights": f"ema_{ema.key(ema.halflives[0])}" if ema is not None else "online",
                    "ema": OmegaConf.to_container(cfg.ema), "optim": OmegaConf.to_container(cfg.optim)}
        s = pl_module.spec
        save_edm(teacher.backbone, self.path, sigma_min=s.sigma_min, sigma_max=s.sigma_max, sigma_data=s.sigma_data,
                 image_shape=s.image_shape, num_classes=s.num_classes, licence=d.licence,
                 extra={"data": data, "training": training,
                        "eval": evaluation.result if evaluation is not None else None})
