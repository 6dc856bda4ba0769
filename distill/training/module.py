"""Consistency distillation and training as a LightningModule (CM paper, Alg. 2 and 3; iCT; ECT; sCD/sCT).

The method block (distill/methods/plan.py) decides where the target comes from (a teacher ODE step or
x0 + t_n z), how the pairs (t_n, t_{n+1}) are drawn at step k (curricula, distill/methods/curriculum.py) and the
target network's rate; this module runs the step those pieces describe.
The teacher is held outside the module's registered children: it is not wrapped by DDP, not averaged
by EMA and not saved in checkpoints (FACTS.md, ecosystem), and the module moves it to the device.
All randomness of a step comes from a generator seeded by (run.seed, global_step, micro-batch), drawn for
the global batch and sliced by rank, so a resumed run draws the same noise as an uninterrupted one
(Lightning does not restore RNG state) and R ranks draw what one process with R times the batch draws.
"""

from __future__ import annotations

import copy
import functools
from contextlib import contextmanager, nullcontext

import lightning as L
import torch
from torch import nn

from distill.config import warm_start_steps
from distill.data.step_batches import mix_seed
from distill.math.schedules import cd_grid
from distill.methods.denoiser import denoiser_loss, edm_sigmas
from distill.methods.losses import build_distance, weighting
from distill.methods.plan import method_steps, plan
from distill.training.lr_schedule import lr_factor
from distill.training.student import build_student
from teachers.base import expand_like


def dropout_rates(net: nn.Module) -> list[float]:
    """Every dropout rate in the network: nn.Dropout layers and float `dropout` attributes (EDM's UNetBlock)."""
    return [m.p if isinstance(m, nn.Dropout) else m.dropout for m in net.modules()
            if isinstance(m, nn.Dropout) or isinstance(getattr(m, "dropout", None), float)]


def set_dropout(net: nn.Module, rate: float) -> None:
    """method.dropout: the rate of every dropout of the student's network, whether an nn.Dropout layer or a
    block that keeps its rate as a float `dropout` attribute for F.dropout (NVlabs EDM's UNetBlock)."""
    found = 0
    for m in net.modules():
        if isinstance(m, nn.Dropout):
            m.p, found = float(rate), found + 1
        elif isinstance(getattr(m, "dropout", None), float):
            m.dropout, found = float(rate), found + 1
    if rate > 0 and not found:
        raise ValueError(f"method.dropout={rate}, but the student's network has no dropout layers")


@contextmanager
def dropout_masks(seed: int, device: torch.device):
    """Run a pass under a forked RNG seeded with `seed`: two passes of equal structure draw equal dropout
    masks (the CM code shares them between student and target); the caller's RNG stream is untouched."""
    cuda = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.random.default_generator.manual_seed(seed)
        if cuda:
            torch.cuda.manual_seed(seed)  # the current device only, the one forked above
        yield


class ConsistencyDistillation(L.LightningModule):
    def __init__(self, cfg, teacher):
        super().__init__()
        self.cfg = cfg
        object.__setattr__(self, "teacher", teacher)  # unregistered on purpose (see module docstring)
        self.student = build_student(cfg, teacher)
        if cfg.method.dropout is not None:
            set_dropout(self.student.net, cfg.method.dropout)
        self.has_dropout = any(r > 0 for r in dropout_rates(self.student.net))  # else no RNG fork per pass
        self.plan = plan(cfg, teacher, self.student.sigma_min, self.student.sigma_max)
        # theta^-: a separate copy only when mu can be > 0; otherwise the stop-gradient student itself.
        self.target = copy.deepcopy(self.student).requires_grad_(False) if self.plan.has_target_network \
            else None
        # LPIPS is a frozen network: unregistered like the teacher (not in checkpoints, EMA or DDP).
        object.__setattr__(self, "distance", build_distance(cfg.loss, smoke=cfg.run.smoke))
        pairs = self.plan.pairs
        grid = pairs.grid(self.plan.levels(0))[0] if hasattr(pairs, "grid") else \
            cd_grid(cfg.method.N, self.student.sigma_min, self.student.sigma_max, cfg.method.rho)
        self.register_buffer("grid", grid.clone(), persistent=False)  # the step-0 grid (benchmarks probe it)
        self._mu = self.plan.mu(0)
        # Recorded in student.json: sampling snaps to the levels of a student trained on a grid.
        self.student.training_sigmas = self.plan.training_sigmas(method_steps(cfg))
        self.denoiser_steps = warm_start_steps(cfg)
        # sCD/sCT's objective holds the learned weighting w_phi: registered (optimised, checkpointed, in DDP).
        self.objective = self.plan.objective

    # -- the algorithm ---------------------------------------------------------------------------------
    def step_generator(self, micro: int = 0) -> torch.Generator:
        # Seeded by (seed, step, micro-batch), the same on every rank: each rank draws the whole global
        # batch's noise and keeps its slice (`rank_part`), so R ranks x batch B draw exactly what one
        # process with batch R*B draws, as StepBatches does for the data (DDP == 1 process, resume exact).
        seed = mix_seed(self.cfg.run.seed, self.global_step, micro)
        return torch.Generator(device=self.device).manual_seed(seed)

    def rank_part(self, draw, batch: int):
        """draw(global_batch) -> this rank's `batch` rows of it."""
        world = self.trainer.world_size if self._trainer is not None else 1
        return draw(batch * world)[self.global_rank * batch:(self.global_rank + 1) * batch]

    def training_step(self, batch, batch_idx):
        x0, labels = batch
        accumulate = self.trainer.accumulate_grad_batches if self._trainer is not None else 1
        gen = self.step_generator(batch_idx % accumulate)
        if self.global_step < self.denoiser_steps:
            return self.denoiser_step(x0, self.condition(labels, gen, x0.shape[0]), gen)
        k = self.global_step - self.denoiser_steps  # the method's step: curricula start after the warm start
        # From integers, not a draw read back with int(): that would wait for the device every step, and a
        # CUDA generator cannot fill the CPU tensor torch.randint makes without device= (it raises).
        dropout_seed = mix_seed(self.cfg.run.seed, k, batch_idx % accumulate, 0xD80, self.global_rank)
        if self.objective is not None:  # sCD / sCT: continuous t, no pairs (distill/methods/scm.py)
            loss = self.continuous_loss(x0, self.condition(labels, gen, x0.shape[0]), gen, k, dropout_seed)
            self._log_loss("train/loss", loss)
            return loss
        # The pair (t_n, t_{n+1}) per sample from step k's curriculum (CM Alg. 2/3; iCT lognormal; ECT r(t)).
        pair = self.rank_part(lambda b: torch.stack(self.plan.pairs.sample(k, b, gen), 1), x0.shape[0])
        sigma_cur, sigma_next = pair.to(x0.dtype).unbind(1)
        z = self.rank_part(lambda b: torch.randn((b, *x0.shape[1:]), generator=gen, device=self.device,
                                                 dtype=x0.dtype), x0.shape[0])
        x_next = x0 + expand_like(sigma_next, x0) * z
        cond = self.condition(labels, gen, x0.shape[0])
        # CD: the teacher's ODE from t_{n+1} down to t_n; CT/iCT/ECT: x0 + t_n z with the same z.
        x_cur = self.plan.target(x0, z, x_next, sigma_next, sigma_cur, cond)
        pred, target = self.consistency_pair(x_next, sigma_next, x_cur, sigma_cur, cond, dropout_seed)
        # lambda(t_n) d(f(x_next, t_{n+1}), f^-(x_cur, t_n)), weighted per sample, averaged here only.
        lam = weighting(self.cfg.loss.weighting, sigma_next, sigma_cur, self.student.sigma_data)
        loss = (lam * self.distance(pred, target)).mean()
        self._mu = self.plan.mu(k)  # theta^-'s rate for this step's update (on_train_batch_end)
        self._log_loss("train/loss", loss)
        return loss

    def denoiser_step(self, x0, cond, gen):
        """Warm start (distill/methods/denoiser.py): EDM's denoiser loss for the student's network F, regressed
        on the teacher's D(x, sigma). theta^- follows the student exactly meanwhile (mu = 0)."""
        s = self.student
        sigma = self.rank_part(lambda b: edm_sigmas(b, s.sigma_min, s.sigma_max, gen, self.device, x0.dtype),
                               x0.shape[0])
        z = self.rank_part(lambda b: torch.randn((b, *x0.shape[1:]), generator=gen, device=self.device,
                                                 dtype=x0.dtype), x0.shape[0])
        x = x0 + expand_like(sigma, x0) * z
        with torch.no_grad():
            target = self.teacher.denoise(x, sigma, cond).to(x0.dtype)
        loss = denoiser_loss(s.feeding.denoise(s.net, x, sigma, cond), target, sigma, s.sigma_data).mean()
        self._mu = 0.0
        self._log_loss("train/denoiser_loss", loss)
        return loss

    def continuous_loss(self, x0, cond, gen, k: int, dropout_seed: int):
        """sCD / sCT: sigma = sd tan t from sCM's proposal and unit noise, drawn for the global batch like the
        pairs above; the objective (which also learns the weighting w_phi) does the rest."""
        sigma = self.rank_part(lambda b: self.plan.pairs.sample(k, b, gen), x0.shape[0]).to(x0.dtype)
        z = self.rank_part(lambda b: torch.randn((b, *x0.shape[1:]), generator=gen, device=self.device,
                                                 dtype=x0.dtype), x0.shape[0])
        return self.objective(self.student, x0, z, sigma, cond, k, self.masks(dropout_seed)).mean()

    def _log_loss(self, name: str, loss: torch.Tensor) -> None:
        if self._log_due():
            # Lightning reads every prog_bar metric back to the host after every batch (.item(), a device
            # sync), logged this step or not: only when a progress bar is there to show it.
            bar = self._trainer is not None and self.trainer.progress_bar_callback is not None
            self.log(name, loss, prog_bar=bar)

    def condition(self, labels, gen: torch.Generator, batch: int):
        """Class labels; or, for a teacher that builds its own condition (text: captions -> encoder states),
        that condition, with one uniform per sample for the guidance scale it draws (LCM Alg. 1)."""
        build = getattr(self.teacher, "training_condition", None)
        if build is None:
            return labels if self.student.num_classes else None
        u = self.rank_part(lambda b: torch.rand(b, generator=gen, device=self.device, dtype=torch.float64), batch)
        return build(labels, u)

    def _log_due(self) -> bool:
        """Whether Lightning writes logs after this step (every trainer.log_every_n_steps steps).

        self.log costs ~0.6 ms of Python per call (~1% of a demo step on a CPU, docs/benchmarks.md) and its
        value is read only on those steps; the progress bar shows the last logged loss in between."""
        connector = getattr(self._trainer, "_logger_connector", None)
        return bool(getattr(connector, "should_update_logs", True))

    def consistency_pair(self, x_next, sigma_next, x_cur, sigma_cur, cond, dropout_seed: int):
        """f_theta(x_next, t_{n+1}) and the stop-gradient f_theta-(x_cur, t_n), with equal dropout masks."""
        masks = self.masks(dropout_seed)
        with masks():
            pred = self.student(x_next, sigma_next, cond)
        with torch.no_grad(), masks():
            target_net = self.target if self.target is not None else self.student
            target = target_net(x_cur, sigma_cur, cond)
        return pred, target

    def masks(self, dropout_seed: int):
        """A context factory: every pass entered under it draws the same dropout masks."""
        return (lambda: dropout_masks(dropout_seed, self.device)) if self.has_dropout else nullcontext

    def on_train_batch_end(self, outputs, batch, batch_idx):
        # theta^- <- mu theta^- + (1 - mu) theta (CM paper, Alg. 2), once per optimizer step; one fused op.
        accumulate = self.trainer.accumulate_grad_batches if self._trainer is not None else 1
        if self.target is not None and (batch_idx + 1) % accumulate == 0:
            tgt, src = list(self.target.parameters()), list(self.student.parameters())
            torch._foreach_lerp_(tgt, src, 1.0 - self._mu)

    # -- plumbing --------------------------------------------------------------------------------------
    def configure_optimizers(self):
        o = self.cfg.optim
        cls = {"adam": torch.optim.Adam, "radam": torch.optim.RAdam, "adamw": torch.optim.AdamW}[o.name]
        # One fused kernel for all parameters instead of torch's per-tensor loop on CPU (the demo
        # student's Adam step: ~12 ms -> ~0.6 ms; docs/benchmarks.md). Lightning refuses gradient clipping
        # with a fused optimizer under mixed precision (it unscales inside step), so those get foreach.
        t = self.cfg.trainer
        fused = o.name in ("adam", "adamw") and not (t.gradient_clip_val and "16" in str(t.precision))
        params = [{"params": list(self.student.parameters())}]
        if self.objective is not None:  # sCD/sCT's weighting w_phi, at its own rate (method.weighting_lr)
            params.append({"params": list(self.objective.parameters()), "lr": self.cfg.method.weighting_lr})
        opt = cls(params, lr=o.lr, betas=tuple(o.betas), eps=o.eps,
                  weight_decay=o.weight_decay, **({"fused": True} if fused else {"foreach": True}))
        if o.warmup_steps <= 0 and o.schedule == "constant":
            return opt
        factor = functools.partial(lr_factor, warmup=o.warmup_steps, total=t.max_steps, schedule=o.schedule,
                                   final_ratio=o.final_lr_ratio)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_fit_start(self):
        for frozen in (self.teacher, self.distance):
            if hasattr(frozen, "to"):
                frozen.to(self.device)
        if hasattr(self.teacher, "eval"):
            self.teacher.eval()

    def on_save_checkpoint(self, checkpoint):
        from distill.export import student_metadata

        checkpoint["distill"] = student_metadata(self.cfg, self.teacher, self.student)
