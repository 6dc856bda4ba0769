"""Sample grids of the student (EMA weights when present) at a fixed set of seeds."""

from __future__ import annotations

import copy
from pathlib import Path

import lightning as L
import torch


class SampleGrid(L.Callback):
    def __init__(self, run_dir: Path, steps, every_n_steps: int = 0, num: int = 64, seed: int = 0):
        self.out = Path(run_dir) / "samples"
        self.steps, self.every, self.num, self.seed = list(steps), int(every_n_steps), num, seed

    def _student_for_eval(self, trainer, pl_module):
        student = copy.deepcopy(pl_module.student).eval()
        ema = next((c for c in trainer.callbacks if c.__class__.__name__ == "StudentEMA"), None)
        if ema is not None and ema.rates:
            student.net.load_state_dict(ema.weights())
        student.sampling_sigmas = {"2": list(pl_module.cfg.student.sigmas_2),
                                   "3": list(pl_module.cfg.student.sigmas_3)}
        return student

    @torch.no_grad()
    def write(self, trainer, pl_module, tag: str):
        shape = pl_module.student.image_shape
        # Images only: latent students (4 channels) need their teacher's VAE and prompts (distill/evaluation/
        # text2image.py); a grid of raw latents would say nothing.
        if trainer.global_rank != 0 or len(shape) != 3 or shape[0] not in (1, 3):
            return
        from distill.evaluation.figures import save_grid
        from distill.sampling import default_sigmas, sample

        student = self._student_for_eval(trainer, pl_module)
        self.out.mkdir(parents=True, exist_ok=True)
        for k in self.steps:
            x = sample(student, self.num, default_sigmas(student, k), seed=self.seed)
            save_grid(x, self.out / f"{tag}_{k}step.png", cols=8)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        if self.every > 0 and step > 0 and step % self.every == 0:
            self.write(trainer, pl_module, f"step{step:07d}")

    def on_train_end(self, trainer, pl_module):
        self.write(trainer, pl_module, "final")
