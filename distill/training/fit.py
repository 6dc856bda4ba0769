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
    """True in the launching process. torchrun sets RANK; srun sets SLURM_PROCID; Lightning's ddp launcher
    re-runs the command with LOCAL_RANK and NODE_RANK set (lightning 2.6, strategies/launchers/
    subprocess_script.py)."""
    for var in ("RANK", "SLURM_PROCID"):
        if var in os.environ and (var != "SLURM_PROCID" or int(os.environ.get("SLURM_NTASKS", 1)) > 1):
            return int(os.environ[var]) == 0
    return int(os.environ.get("LOCAL_RANK", 0)) == 0 and int(os.environ.get("NODE_RANK", 0)) == 0


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
    # Other ranks may look while rank 0 is creating the directory; only rank 0 judges it.
    if run_dir.exists() and any(run_dir.iterdir()) and is_global_rank_zero():
        raise ConfigError(f"run.dir {run_dir} exists and is not a distill run (no config.yaml); "
                          "choose an empty or new directory")
    return run_dir, None


def checkpoint_step(path: Path) -> int:
    ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return int(ckpt.get("global_step", 0))


def build_trainer(cfg, run_dir: Path, callbacks_extra=(), resume_step: int | None = None):
    """The distillation trainer: EMA of the student, FID, checkpoints, sample grids, the student export."""
    from distill.training.callbacks import ExportStudent, LastCheckpoint, StudentEMA
    from distill.training.callbacks.sample_grid import SampleGrid

    callbacks = []
    if cfg.ema.rates:
        callbacks.append(StudentEMA(cfg.ema.rates))
    if cfg.eval.fid:  # after StudentEMA, so it evaluates averages that include this step
        from distill.training.callbacks.fid import FIDCallback

        callbacks.append(FIDCallback.from_config(cfg, run_dir))
    callbacks += list(callbacks_extra)
    callbacks += [LastCheckpoint(run_dir / "checkpoints", cfg.checkpoint.every_n_steps),
                  SampleGrid(run_dir, cfg.eval.steps, cfg.eval.grid_every_n_steps, num=cfg.eval.grid_num,
                             seed=cfg.run.seed),
                  ExportStudent(run_dir)]
    return make_trainer(cfg, run_dir, callbacks, resume_step)


def make_trainer(cfg, run_dir: Path, callbacks, resume_step: int | None = None):
    """A Lightning Trainer for any run directory (distillation or teacher training): the recipe's `trainer`
    block, atomic checkpoints, metrics.csv that survives resume, a NaN guard first and the preemption
    checkpoint last around the run's own `callbacks`."""
    import lightning as L
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    from distill.training.callbacks import AtomicCheckpointIO, NaNGuard
    from distill.training.callbacks.preemption import PreemptionCheckpoint
    from distill.training.csv_logger import AppendingCSVLogger
    from distill.training.scaling import check_strategy

    t = cfg.trainer
    check_strategy(t)
    plugins = [AtomicCheckpointIO()]
    if SLURMEnvironment.detect():  # our PreemptionCheckpoint requeues; Lightning's saves inside its handler
        plugins.append(SLURMEnvironment(auto_requeue=False))
    callbacks = [NaNGuard(checkpoint_every_n_steps=cfg.checkpoint.every_n_steps), *callbacks,
                 # Last: it saves once every other callback has finished the step (EMA included).
                 PreemptionCheckpoint(run_dir / "checkpoints" / "last.ckpt")]
    return L.Trainer(
        max_steps=t.max_steps, accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes,
        strategy=t.strategy, precision=t.precision, accumulate_grad_batches=t.accumulate_grad_batches,
        gradient_clip_val=t.gradient_clip_val, log_every_n_steps=t.log_every_n_steps,
        enable_progress_bar=t.enable_progress_bar, enable_checkpointing=False, enable_model_summary=False,
        logger=AppendingCSVLogger(run_dir, resume_step), callbacks=callbacks,
        plugins=plugins, default_root_dir=str(run_dir), max_epochs=-1,
        num_sanity_val_steps=0, use_distributed_sampler=False,
    )


def prepare_teacher_and_student(cfg, teacher_spec, teacher=None):
    """The teacher (kept in its precision under mixed precision unless `teacher.autocast: true`) and
    the module, with the recipe's compile / activation-checkpointing switches applied in place."""
    import lightning as L

    import teachers
    from distill.training.module import ConsistencyDistillation
    from distill.training.scaling import checkpoint_blocks, compile_student, teacher_outside_autocast

    spec = dict(teacher_spec)
    autocast = bool(spec.pop("autocast", False))
    teacher = teachers.load(teacher if teacher is not None else spec)
    L.seed_everything(cfg.run.seed, workers=True, verbose=False)  # the student's initial weights
    if "mixed" in str(cfg.trainer.precision) and not autocast:
        teacher_outside_autocast(teacher)
    module = ConsistencyDistillation(cfg, teacher)
    if cfg.student.checkpointing:
        checkpoint_blocks(module.student.net)
    if cfg.student.compile:
        compile_student(module.student)
    return teacher, module


def write_config(run_dir: Path, cfg) -> None:
    """Rank 0 only; idempotent (rewritten only when it changed, e.g. a longer max_steps on resume), atomic
    (other ranks may read it while it is written)."""
    from distill.export import atomic_write_bytes

    text = yaml.safe_dump(to_plain(cfg), sort_keys=False)
    path = run_dir / "config.yaml"
    run_dir.mkdir(parents=True, exist_ok=True)
    if not path.is_file() or path.read_text() != text:
        atomic_write_bytes(path, text.encode())


def fit(cfg, teacher=None):
    """Train as the recipe says. `teacher` may be any Denoiser object (overrides the recipe's block).

    Raises `distill.training.callbacks.preemption.Preempted` after a preemption checkpoint (the caller exits)."""
    from distill.data import DistillDataModule

    run_dir, resume = plan_run_dir(cfg)
    try:
        teacher, module = prepare_teacher_and_student(cfg, to_plain(cfg)["teacher"], teacher)
        resume_step = checkpoint_step(resume) if resume else None
        start = (resume_step or 0) * cfg.trainer.accumulate_grad_batches
        data = DistillDataModule(cfg, teacher, start_step=start)
    except (ValueError, KeyError) as err:  # a recipe that names things that do not fit together
        raise ConfigError(str(err).strip("'\"")) from err
    trainer = build_trainer(cfg, run_dir, resume_step=resume_step)
    if is_global_rank_zero():
        write_config(run_dir, cfg)
    trainer.fit(module, datamodule=data, ckpt_path=str(resume) if resume else None)
    return run_dir
