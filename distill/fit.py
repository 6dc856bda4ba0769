"""`distill fit`: a recipe in, a run directory out (DESIGN.md, "Command line").

Order matters for the contract "bad input never leaves a half-written run behind": the teacher,
data and student are built first, and only then is the run directory created.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import yaml

from distill.config import ConfigError, blocking_differences, to_plain


def is_global_rank_zero() -> bool:
    """True in the launching process; Lightning's ddp launcher re-runs the command with these set."""
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", 0))) == 0 and \
        int(os.environ.get("NODE_RANK", 0)) == 0


def plan_run_dir(cfg) -> tuple[Path, Path | None]:
    """(run_dir, checkpoint to resume or None). Raises ConfigError if the directory holds another run."""
    run_dir = Path(cfg.run.dir)
    saved = run_dir / "config.yaml"
    if saved.is_file():
        old = yaml.safe_load(saved.read_text()) or {}
        diff = blocking_differences(old, to_plain(cfg))
        if diff:
            raise ConfigError(f"{run_dir} holds a run with a different config (keys: {', '.join(diff)}); "
                              "use another run.dir, or delete that directory to start over")
        last = run_dir / "checkpoints" / "last.ckpt"
        return run_dir, (last if last.is_file() else None)
    if run_dir.exists() and any(run_dir.iterdir()):
        raise ConfigError(f"run.dir {run_dir} exists and is not a distill run (no config.yaml); "
                          "choose an empty or new directory")
    return run_dir, None


def checkpoint_step(path: Path) -> int:
    ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return int(ckpt.get("global_step", 0))


def build_trainer(cfg, run_dir: Path, callbacks_extra=()):
    import lightning as L
    from lightning.pytorch.loggers import CSVLogger

    from distill.callbacks import AtomicCheckpointIO, ExportStudent, LastCheckpoint, NaNGuard, StudentEMA
    from distill.callbacks.sample_grid import SampleGrid

    t = cfg.trainer
    callbacks = [NaNGuard(checkpoint_every_n_steps=cfg.checkpoint.every_n_steps)]
    if cfg.ema.rates:
        callbacks.append(StudentEMA(cfg.ema.rates))
    callbacks += list(callbacks_extra)
    callbacks += [LastCheckpoint(run_dir / "checkpoints", cfg.checkpoint.every_n_steps),
                  SampleGrid(run_dir, cfg.eval.steps, cfg.eval.grid_every_n_steps, seed=cfg.run.seed),
                  ExportStudent(run_dir)]
    return L.Trainer(
        max_steps=t.max_steps, accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes,
        strategy=t.strategy, precision=t.precision, accumulate_grad_batches=t.accumulate_grad_batches,
        gradient_clip_val=t.gradient_clip_val, log_every_n_steps=t.log_every_n_steps,
        enable_progress_bar=t.enable_progress_bar, enable_checkpointing=False, enable_model_summary=False,
        logger=CSVLogger(save_dir=str(run_dir), name="", version=""), callbacks=callbacks,
        plugins=[AtomicCheckpointIO()], default_root_dir=str(run_dir), max_epochs=-1,
        num_sanity_val_steps=0, use_distributed_sampler=False,
    )


def fit(cfg, teacher=None):
    """Train as the recipe says. `teacher` may be any Denoiser object (overrides the recipe's block)."""
    import lightning as L

    import teachers
    from distill.data import DistillDataModule
    from distill.module import ConsistencyDistillation

    run_dir, resume = plan_run_dir(cfg)
    try:
        teacher = teachers.load(teacher if teacher is not None else to_plain(cfg)["teacher"])
        L.seed_everything(cfg.run.seed, workers=True, verbose=False)
        module = ConsistencyDistillation(cfg, teacher)
        start = checkpoint_step(resume) * cfg.trainer.accumulate_grad_batches if resume else 0
        data = DistillDataModule(cfg, teacher, start_step=start)
    except (ValueError, KeyError) as err:  # a recipe that names things that do not fit together
        raise ConfigError(str(err).strip("'\"")) from err
    trainer = build_trainer(cfg, run_dir)
    if is_global_rank_zero():
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(to_plain(cfg), sort_keys=False))
    trainer.fit(module, datamodule=data, ckpt_path=str(resume) if resume else None)
    return run_dir
