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
        self._first_bad: torch.Tensor | None = None  # on the device: first bad step, -1 while none

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is None:
            return
        step = trainer.global_step
        if self._first_bad is None:
            self._first_bad = torch.full((), -1, dtype=torch.int64, device=loss.device)
        # Device-side bookkeeping only (no .item()): remember the first step whose loss was not finite.
        # global_step has already counted this batch's optimizer step, so the batch trained step - 1.
        bad = ~torch.isfinite(loss.detach()).all()
        self._first_bad = torch.where(bad & (self._first_bad < 0), step - 1, self._first_bad)
        due = step % self.every_n_steps == 0 or (
            self.checkpoint_every > 0 and step % self.checkpoint_every == 0)
        if due and (first := int(self._first_bad)) >= 0:
            raise NonFiniteLossError(
                f"training loss became NaN/Inf at step {first} (stopped at step {step}); the last good "
                "checkpoint is kept. Lower optim.lr, check the teacher's outputs, or use a float32 target "
                "(method.target_dtype).")
