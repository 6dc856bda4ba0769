"""Writes student.safetensors + student.json at the end of training (rank 0), recording the step."""

from __future__ import annotations

from pathlib import Path

import lightning as L

from distill.export import student_metadata, write_export


class ExportStudent(L.Callback):
    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)

    def on_train_end(self, trainer, pl_module):
        if trainer.global_rank != 0:
            return
        ema = next((c for c in trainer.callbacks if c.__class__.__name__ == "StudentEMA"), None)
        if ema is not None and ema.rates:
            state, weights = ema.weights(), f"ema_{ema.rates[0]}"
        else:
            state, weights = pl_module.student.net.state_dict(), "online"
        meta = dict(student_metadata(pl_module.cfg, pl_module.teacher, pl_module.student), step=trainer.global_step)
        write_export(self.run_dir, meta, state, weights)
