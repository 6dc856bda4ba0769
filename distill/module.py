"""Consistency distillation as a LightningModule (CM paper, Alg. 2).

The teacher is held outside the module's registered children: it is not wrapped by DDP, not averaged
by EMA and not saved in checkpoints (FACTS.md, ecosystem), and the module moves it to the device.
All randomness of a step comes from a generator seeded by (run.seed, global_step, rank), so a resumed
run draws the same noise as an uninterrupted one (Lightning does not restore RNG state).
"""

from __future__ import annotations

import copy

import lightning as L
import torch

from distill.data.step_batches import mix_seed
from distill.losses import DISTANCES, weighting
from distill.schedules import cd_grid, index_probabilities, sample_indices
from distill.student import build_student
from distill.targets import cd_target


class ConsistencyDistillation(L.LightningModule):
    def __init__(self, cfg, teacher):
        super().__init__()
        self.cfg = cfg
        object.__setattr__(self, "teacher", teacher)  # unregistered on purpose (see module docstring)
        self.student = build_student(cfg, teacher)
        # theta^-: a separate copy only when mu > 0; mu = 0 is the stop-gradient student itself.
        self.target = copy.deepcopy(self.student).requires_grad_(False) if cfg.method.mu > 0 else None
        grid = cd_grid(cfg.method.N, self.student.sigma_min, self.student.sigma_max, cfg.method.rho)
        grid = torch.as_tensor(getattr(teacher, "round_sigma", lambda s: s)(grid), dtype=torch.float64)
        self.register_buffer("grid", grid, persistent=False)
        self.register_buffer("index_probs", index_probabilities(grid, cfg.method.index_sampling),
                             persistent=False)
        self.distance = DISTANCES[cfg.loss.name]

    # -- the algorithm ---------------------------------------------------------------------------------
    def step_generator(self) -> torch.Generator:
        seed = mix_seed(self.cfg.run.seed, self.global_step, self.global_rank)
        return torch.Generator(device=self.device).manual_seed(seed)

    def training_step(self, batch, batch_idx):
        x0, labels = batch
        cond = labels if self.student.num_classes else None
        gen = self.step_generator()
        # CM Alg. 2: n ~ U{1..N-1} (or lognormal, iCT); the pair (t_n, t_{n+1}).
        n = sample_indices(self.index_probs, x0.shape[0], gen)
        sigma_cur, sigma_next = self.grid[n].to(x0.dtype), self.grid[n + 1].to(x0.dtype)
        z = torch.randn(x0.shape, generator=gen, device=self.device, dtype=x0.dtype)
        x_next = x0 + sigma_next.view(-1, *[1] * (x0.ndim - 1)) * z
        # One teacher ODE step from t_{n+1} down to t_n.
        x_cur = cd_target(self.teacher.denoise, x_next, sigma_next, sigma_cur, cond,
                          solver=self.cfg.method.solver, dtype=getattr(torch, self.cfg.method.target_dtype))
        pred = self.student(x_next, sigma_next, cond)
        with torch.no_grad():
            target_net = self.target if self.target is not None else self.student
            target = target_net(x_cur, sigma_cur, cond)
        lam = weighting(self.cfg.loss.weighting, sigma_next, sigma_cur, self.student.sigma_data)
        per_sample = self.distance(pred, target, c=self.cfg.loss.c)
        loss = (lam * per_sample).mean()
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx):
        # theta^- <- mu theta^- + (1 - mu) theta (CM paper, Alg. 2); one fused op over all tensors.
        if self.target is not None:
            tgt, src = list(self.target.parameters()), list(self.student.parameters())
            torch._foreach_lerp_(tgt, src, 1.0 - self.cfg.method.mu)

    # -- plumbing --------------------------------------------------------------------------------------
    def configure_optimizers(self):
        o = self.cfg.optim
        cls = {"adam": torch.optim.Adam, "radam": torch.optim.RAdam, "adamw": torch.optim.AdamW}[o.name]
        opt = cls(self.student.parameters(), lr=o.lr, betas=tuple(o.betas), eps=o.eps,
                  weight_decay=o.weight_decay)
        if o.warmup_steps <= 0:
            return opt
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: min(1.0, (k + 1) / o.warmup_steps))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_fit_start(self):
        if hasattr(self.teacher, "to"):
            self.teacher.to(self.device)
        if hasattr(self.teacher, "eval"):
            self.teacher.eval()

    def on_save_checkpoint(self, checkpoint):
        from distill.export import student_metadata

        checkpoint["distill"] = student_metadata(self.cfg, self.teacher, self.student)
