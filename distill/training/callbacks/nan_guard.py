"""Stops training when the loss or the weights go NaN/Inf, naming the step and the likely cause; never lets
non-finite weights into a checkpoint or the export.

The loss is read on the host only on due steps (every `every_n_steps`, and on every step where another
callback acts: checkpoints, evaluation, sample grids), so the hot loop does not wait on the device each
step; a non-finite loss is sticky (NaN propagates into the weights), so a later check still catches it.
Two checks do not depend on due steps: at the end of training (before the final checkpoint and export,
which run later in the callback list), and inside every checkpoint save (`on_save_checkpoint`, which
Lightning calls before the file is written: a preemption or "best" checkpoint on any step is covered).
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch


class NonFiniteLossError(RuntimeError):
    pass


def all_finite(tensors) -> bool:
    """One host sync for a whole state dict's floating tensors."""
    flags = [torch.isfinite(t).all() for t in tensors if t.is_floating_point()]
    return bool(torch.stack([f.to(flags[0].device) for f in flags]).all()) if flags else True


class NaNGuard(L.Callback):
    def __init__(self, every_n_steps: int = 50, also_every=(), checkpoint_path: Path | None = None):
        self.every_n_steps = max(1, int(every_n_steps))
        self.also_every = [int(p) for p in also_every if p and int(p) > 0]  # steps where others act
        self.checkpoint_path = Path(checkpoint_path) if checkpoint_path else None
        self._first_bad: torch.Tensor | None = None  # on the device: first bad step, -1 while none
        self._batch = None  # the last batch, for the diagnosis

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is None:
            return
        step = trainer.global_step
        self._batch = batch
        if self._first_bad is None:
            self._first_bad = torch.full((), -1, dtype=torch.int64, device=loss.device)
        # Device-side bookkeeping only (no .item()): remember the first step whose loss was not finite.
        # global_step has already counted this batch's optimizer step, so the batch trained step - 1.
        bad = ~torch.isfinite(loss.detach()).all()
        self._first_bad = torch.where(bad & (self._first_bad < 0), step - 1, self._first_bad)
        if step % self.every_n_steps == 0 or any(step % p == 0 for p in self.also_every):
            self.check(trainer, pl_module)

    def on_train_end(self, trainer, pl_module):
        self.check(trainer, pl_module)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        ema = (checkpoint.get("callbacks") or {}).get("StudentEMA") or {}
        tensors = list(checkpoint.get("state_dict", {}).values())
        tensors += [t for avg in (ema.get("averages") or {}).values() for t in avg.values()]
        if not all_finite(tensors):
            raise NonFiniteLossError(self.message(trainer, pl_module, "the weights to be saved hold NaN/Inf"))

    def check(self, trainer, pl_module) -> None:
        first = int(self._first_bad) if self._first_bad is not None else -1
        if first >= 0:
            raise NonFiniteLossError(self.message(trainer, pl_module, f"training loss became NaN/Inf at step {first}"))
        # The student's weights (distillation), or the network's (train-teacher: the module is the network).
        trained = pl_module.student if hasattr(pl_module, "student") else pl_module
        if not all_finite(trained.parameters()):
            raise NonFiniteLossError(self.message(trainer, pl_module, "the trained weights became NaN/Inf"))

    # -- the message: what happened, what is kept, the likely cause --------------------------------------
    def message(self, trainer, pl_module, what: str) -> str:
        return (f"{what} (stopped at step {trainer.global_step}); {self._kept()} {self._cause(pl_module)}")

    def _kept(self) -> str:
        path = self.checkpoint_path
        if path is None or not path.is_file():
            return "no checkpoint had been written yet, so there is nothing to resume."
        step = torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("global_step")
        return f"{path} (step {step}, finite weights) is kept."

    @torch.no_grad()
    def _cause(self, pl_module) -> str:
        lr = pl_module.cfg.optim.lr
        diverged = (f"The data and the teacher's outputs are finite, so the student diverged: lower optim.lr "
                    f"(now {lr:g}), or add optim.warmup_steps or trainer.gradient_clip_val.")
        if self._batch is None:
            return diverged
        x0, labels = self._batch
        x0 = x0[:8]
        if not bool(torch.isfinite(x0).all()):
            return "Likely cause: the training data hold NaN/Inf values; check data.path."
        target = getattr(getattr(pl_module, "plan", None), "target", None)
        if not getattr(target, "uses_teacher", False):
            return diverged.replace(" and the teacher's outputs are", " are")
        teacher = pl_module.teacher
        cond = labels[:8] if pl_module.student.num_classes else None
        z = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0)).to(x0.device)
        for sigma in (teacher.sigma_max, (teacher.sigma_max * teacher.sigma_min) ** 0.5, teacher.sigma_min):
            x = (x0 + sigma * z).to(target.dtype)
            out = teacher.denoise(x, torch.full((x.shape[0],), sigma, dtype=x.dtype, device=x.device), cond)
            if not bool(torch.isfinite(out).all()):
                return (f"Likely cause: the teacher returns NaN/Inf (at sigma {sigma:g} on this batch); check its "
                        "weights and sigma range (`distill fit --dry-run` calls it once).")
        return diverged
