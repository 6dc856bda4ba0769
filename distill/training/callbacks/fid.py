"""FID of the student at 1 and 2 steps (configurable) while it trains, and a "best by FID" checkpoint.

Evaluated with the first EMA rate's weights when StudentEMA runs (the averages are what gets exported and
what the CM paper evaluates), every `eval.every_n_steps` optimizer steps and at the end of training.
Nothing runs between those steps, so the hot loop never waits on the device for this callback.

The metric is torchmetrics' FrechetInceptionDistance with the extractor's module as `feature=` (the digits
classifier, pixels, torch-fidelity's Inception). Under DDP each rank generates a contiguous share of the
`eval.num` samples (and adds a share of the reference images); sample i always uses seed run.seed + i
(distill/sampling.py), and torchmetrics adds the ranks' float64 sums up inside compute(), so every rank gets
the number a single process would, and every rank makes the same "best" decision before the (collective)
checkpoint save.
Metrics go straight to the run's logger (metrics.csv) as fid_<k>step at the current step: logging
through `pl_module.log` would only reach the file on `log_every_n_steps` boundaries.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_info

log = logging.getLogger(__name__)


class FIDCallback(L.Callback):
    def __init__(self, run_dir, *, steps=(1, 2), num: int = 1000, every_n_steps: int = 0,
                 features: str = "auto", inception_path: str | None = None, ref: str | None = None,
                 seed: int = 0, batch_size: int = 500, ref_num: int = 1000):
        self.best_path = Path(run_dir) / "checkpoints" / "best.ckpt"
        self.steps, self.num, self.every = [int(k) for k in steps], int(num), int(every_n_steps)
        self.features, self.inception_path, self.ref = features, inception_path, ref
        self.seed, self.batch_size, self.ref_num = int(seed), int(batch_size), int(ref_num)
        self.best: float = math.inf
        self.history: list[dict] = []
        self._last_step = -1
        self._metric = None  # torchmetrics' FID: the feature module, the reference side (this rank's share)

    @classmethod
    def from_config(cls, cfg, run_dir) -> FIDCallback:
        e = cfg.eval
        return cls(run_dir, steps=list(e.steps), num=e.num, every_n_steps=e.every_n_steps,
                   features=e.features, inception_path=e.inception_path, ref=e.ref, seed=cfg.run.seed,
                   ref_num=max(int(e.num), 1000))

    @property
    def state_key(self) -> str:
        return "FIDCallback"

    def state_dict(self):
        return {"best": self.best, "history": self.history}

    def load_state_dict(self, state_dict):
        self.best = float(state_dict.get("best", math.inf))
        self.history = list(state_dict.get("history", []))

    # -- setup: the metric (feature module + reference side), once per fit -------------------------------
    def _prepare(self, trainer, pl_module):
        from distill.evaluation.metrics.extractors import build_extractor
        from distill.evaluation.metrics.fid import add, frechet_metric, set_reference_stats
        from distill.evaluation.metrics.reference import check_compatible, load_stats
        from distill.evaluation.teacher_quality import reference_images

        ref = None
        if not self.ref:  # exact samples of an analytic teacher, else the data a trained teacher was trained on
            ref = reference_images(pl_module.teacher, self.ref_num, self.seed)
            if ref is None:
                log.warning("FID during training is off: the teacher has no exact samples and no recorded "
                            "in-memory training data; set eval.ref to an .npz of reference statistics")
                return
        shape = pl_module.student.image_shape
        # Rank 0 first: the digits classifier may need training and caching; the others then read the cache.
        if trainer.global_rank == 0:
            extractor = build_extractor(self.features, shape, self.inception_path)
        trainer.strategy.barrier("fid-extractor")
        if trainer.global_rank != 0:
            extractor = build_extractor(self.features, shape, self.inception_path)
        # torchmetrics allocates its D x D sums here: only once a reference exists (pixels of a 256 px
        # student would be 196,608-d).
        metric = frechet_metric(extractor.module, **strategy_sync(trainer)).to(pl_module.device)
        rank, world = trainer.global_rank, trainer.world_size
        if self.ref:
            stats = load_stats(self.ref)
            if stats.mu is None:  # an image array: its images are the reference side, each rank a share
                add(metric, share(stats.images, rank, world), real=True, batch_size=self.batch_size)
            else:
                check_compatible(stats, extractor.name, extractor.num_features, self.ref)
                set_reference_stats(metric, stats.mu, stats.sigma, rank)
        else:
            add(metric, share(ref[0], rank, world), real=True, batch_size=self.batch_size)
        self._metric = metric

    def on_fit_start(self, trainer, pl_module):
        self._prepare(trainer, pl_module)

    # -- evaluation ----------------------------------------------------------------------------------------
    def _eval_student(self, trainer, pl_module):
        student = copy.deepcopy(pl_module.student).eval().requires_grad_(False)
        ema = next((c for c in trainer.callbacks if c.__class__.__name__ == "StudentEMA"), None)
        if ema is not None and ema.rates:
            student.net.load_state_dict(ema.weights())
        s = pl_module.cfg.student
        student.sampling_sigmas = {"1": [student.sigma_max], "2": [student.sigma_max] + list(s.sigmas_2[1:]),
                                   "3": [student.sigma_max] + list(s.sigmas_3[1:])}
        return student

    @torch.no_grad()
    def compute(self, trainer, pl_module) -> dict[str, float]:
        """{"fid_<k>step": value} over all ranks' samples; every rank must call it (collective)."""
        from distill.evaluation.evaluate import sigmas_for_steps
        from distill.evaluation.metrics.fid import distance
        from distill.sampling import sample

        student = self._eval_student(trainer, pl_module)
        world, rank = trainer.world_size, trainer.global_rank
        start, stop = rank * self.num // world, (rank + 1) * self.num // world
        out = {}
        for k in self.steps:
            # Raw outputs, as `distill eval` scores them: the two numbers of one student must agree. (Clamped to
            # [-1, 1] the demo student scores 30.8 instead of 16.7: docs/evaluation.md.)
            x = sample(student, stop - start, sigmas_for_steps(student, k), seed=self.seed + start,
                       batch_size=self.batch_size, clamp=False) if stop > start else \
                torch.zeros(0, *student.image_shape)
            out[f"fid_{k}step"] = distance(self._metric, x, self.batch_size)  # a rank with no share joins
        return out

    def evaluate(self, trainer, pl_module) -> None:
        if self._metric is None or self.num < 2:
            return
        step = trainer.global_step
        t0 = time.perf_counter()
        metrics = self.compute(trainer, pl_module)
        seconds = time.perf_counter() - t0
        self._last_step = step
        self.history.append(dict(metrics, step=step, seconds=seconds))
        for logger in trainer.loggers:  # metrics.csv, and TensorBoard / W&B when the recipe adds them
            logger.log_metrics(metrics, step=step)
            logger.save()
        rank_zero_info(f"step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())
                       + f" ({self.num} samples, {seconds:.1f} s)")
        primary = metrics[f"fid_{self.steps[0]}step"]
        if primary < self.best:  # identical on every rank (all-reduced), so all ranks take this branch
            self.best = primary
            trainer.save_checkpoint(self.best_path, weights_only=False)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        if self.every > 0 and step > 0 and step % self.every == 0 and step != self._last_step:
            self.evaluate(trainer, pl_module)

    def on_train_end(self, trainer, pl_module):
        if trainer.global_step != self._last_step:
            self.evaluate(trainer, pl_module)


def share(x: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """This rank's contiguous share of x (torchmetrics adds the ranks' sums up)."""
    return x[rank * len(x) // world:(rank + 1) * len(x) // world]


def strategy_sync(trainer) -> dict:
    """torchmetrics' sync through Lightning's strategy (DDP, FSDP, ... alike): its all_gather stacks the
    ranks' tensors, torchmetrics sums them."""
    return {"dist_sync_fn": lambda t, group=None: list(trainer.strategy.all_gather(t)),
            "distributed_available_fn": lambda: trainer.world_size > 1}
