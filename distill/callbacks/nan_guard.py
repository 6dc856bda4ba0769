"""Stops training when the loss goes NaN/Inf, naming the step; the last good checkpoint is kept.

The check reads the loss on the host only every `every_n_steps` steps, so the hot loop does not wait
on the device each step; a non-finite loss is sticky (NaN propagates into the weights), so a later
check still catches it.
"""

from __future__ import annotations

import lightning as L
import torch


class NonFiniteLossError(RuntimeError):
    pass


class NaNGuard(L.Callback):
    def __init__(self, every_n_steps: int = 50, checkpoint_every_n_steps: int = 0):
        self.every_n_steps = max(1, int(every_n_steps))
        # Also checked on checkpoint steps (this callback runs first), so no NaN weights are saved.
        self.checkpoint_every = int(checkpoint_every_n_steps)
        self._bad: torch.Tensor | None = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is None:
            return
        bad = ~torch.isfinite(loss.detach())
        self._bad = bad if self._bad is None else (self._bad | bad)
        step = trainer.global_step
        due = step % self.every_n_steps == 0 or (self.checkpoint_every > 0 and step % self.checkpoint_every == 0)
        if due and bool(self._bad):
            raise NonFiniteLossError(
                f"training loss became NaN/Inf at or before step {step}; the last good checkpoint is kept. "
                "Lower optim.lr, check the teacher's outputs, or use a float32 target (method.target_dtype).")
