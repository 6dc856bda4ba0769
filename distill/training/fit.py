"""`distill fit`: a recipe in, a run directory out (DESIGN.md, "Command line").

Order matters for the contract "bad input never leaves a half-written run behind": the teacher,
data and student are built and checked first (distill/training/preflight.py), and only then is the run
directory created. A run that fails before its first checkpoint removes the directory it created (there
is nothing to resume), and a directory whose run never saved a checkpoint or an export does not block
the corrected rerun. A rerun of a finished run completes what a kill cut off (distill/training/finish.py).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import torch
import yaml

from distill import safe_yaml
from distill.config import ConfigError, blocking_differences, to_plain


def is_global_rank_zero() -> bool:
    """True in the launching process. torchrun sets RANK; srun sets SLURM_PROCID; Lightning's ddp launcher
    re-runs the command with LOCAL_RANK and NODE_RANK set (lightning 2.6, strategies/launchers/
    subprocess_script.py)."""
    for var in ("RANK", "SLURM_PROCID"):
        if var in os.environ and (var != "SLURM_PROCID" or int(os.environ.get("SLURM_NTASKS", 1)) > 1):
            return int(os.environ[var]) == 0
    return int(os.environ.get("LOCAL_RANK", 0)) == 0 and int(os.environ.get("NODE_RANK", 0)) == 0


def check_run_dir_path(raw: str) -> Path:
    """run.dir as a path that can become a directory: no unexpanded `~`, not a file, not under one."""
    if str(raw).startswith("~"):
        raise ConfigError(f"run.dir {raw}: '~' is not expanded in a recipe; write the full path (e.g. "
                          f"{Path(str(raw)).expanduser()}) or a relative one")
    run_dir = Path(raw)
    for p in (run_dir, *run_dir.parents):
        if p.exists() and not p.is_dir():
            where = "is a file" if p == run_dir else f"is under {p}, which is a file"
            raise ConfigError(f"run.dir {run_dir} {where}; choose a directory path")
    return run_dir


def never_saved(run_dir: Path) -> bool:
    """A run directory whose run stopped before its first checkpoint and export: nothing to resume or keep."""
    return not (run_dir / "checkpoints" / "last.ckpt").is_file() and not (run_dir / "student.safetensors").is_file()


def clear_leftovers(run_dir: Path) -> None:
    """What a run that never saved left (killed before its first checkpoint): a new run starts over."""
    for name in ("config.yaml", "metrics.csv", "student.json"):
        (run_dir / name).unlink(missing_ok=True)
    for name in ("samples", "checkpoints"):
        shutil.rmtree(run_dir / name, ignore_errors=True)


def plan_run_dir(cfg) -> tuple[Path, Path | None]:
    """(run_dir, checkpoint to resume or None). Raises ConfigError if the directory holds another run."""
    run_dir = check_run_dir_path(cfg.run.dir)
    saved = run_dir / "config.yaml"
    if saved.is_file():
        if never_saved(run_dir):
            return run_dir, None  # it starts over, whatever its config was
        try:
            old = safe_yaml.load(saved.read_text()) or {}
        except (yaml.YAMLError, ValueError, OSError) as err:
            raise ConfigError(f"{saved}: unreadable ({err}); restore it, or use another run.dir") from None
        diff = blocking_differences(old, to_plain(cfg)) if isinstance(old, dict) else ["(all)"]
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
    """The step of a resumable checkpoint (train-teacher; `distill fit` checks more: preflight.py)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        step = ckpt["global_step"]
    except Exception as err:  # noqa: BLE001 - truncated, foreign or not a checkpoint at all
        raise ConfigError(f"{path}: cannot be read as a checkpoint ({type(err).__name__}: "
                          f"{str(err).splitlines()[0][:200] if str(err) else ''}); delete it to start this run "
                          "over, or restore the file") from None
    if not isinstance(step, int) or step < 0:
        raise ConfigError(f"{path}: global_step {step!r} is not a step; delete it to start over")
    return step


def build_trainer(cfg, run_dir: Path, callbacks_extra=(), resume_step: int | None = None):
    """The distillation trainer: EMA of the student, FID, checkpoints, sample grids, the student export."""
    from distill.training.callbacks import ExportStudent, LastCheckpoint, StudentEMA
    from distill.training.callbacks.plot import TrainingPlot
    from distill.training.callbacks.sample_grid import SampleGrid

    callbacks = []
    if cfg.ema.rates:
        callbacks.append(StudentEMA(cfg.ema.rates))
    if cfg.eval.fid:  # after StudentEMA, so it evaluates averages that include this step
        from distill.training.callbacks.fid import FIDCallback

        callbacks.append(FIDCallback.from_config(cfg, run_dir))
    callbacks.append(TrainingPlot(run_dir, cfg.eval.every_n_steps if cfg.eval.fid else 0))
    callbacks += list(callbacks_extra)
    callbacks += [LastCheckpoint(run_dir / "checkpoints", cfg.checkpoint.every_n_steps),
                  SampleGrid(run_dir, cfg.eval.steps, cfg.eval.grid_every_n_steps, num=cfg.eval.grid_num,
                             seed=cfg.run.seed),
                  ExportStudent(run_dir)]
    return make_trainer(cfg, run_dir, callbacks, resume_step,
                        acting_every=(cfg.eval.every_n_steps, cfg.eval.grid_every_n_steps))


def make_trainer(cfg, run_dir: Path, callbacks, resume_step: int | None = None, acting_every=()):
    """A Lightning Trainer for any run directory (distillation or teacher training): the recipe's `trainer`
    block, atomic checkpoints, its loggers (metrics.csv survives resume), a NaN guard first and the preemption
    checkpoint last around the run's own `callbacks`; `acting_every`: the periods at which they act."""
    import lightning as L
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    from distill.training.callbacks import AtomicCheckpointIO, NaNGuard
    from distill.training.callbacks.preemption import PreemptionCheckpoint
    from distill.training.callbacks.progress import StepProgress
    from distill.training.csv_logger import AppendingCSVLogger
    from distill.training.loggers import build_loggers
    from distill.training.scaling import check_strategy

    t = cfg.trainer
    check_strategy(t)
    loggers = build_loggers(cfg, run_dir, resume_step) if "log" in cfg else AppendingCSVLogger(run_dir, resume_step)
    plugins = [AtomicCheckpointIO()]
    if SLURMEnvironment.detect():  # our PreemptionCheckpoint requeues; Lightning's saves inside its handler
        plugins.append(SLURMEnvironment(auto_requeue=False))
    last = run_dir / "checkpoints" / "last.ckpt"
    # First, so that on every step where a later callback acts, NaN is caught before it saves or samples.
    callbacks = [NaNGuard(also_every=(cfg.checkpoint.every_n_steps, *acting_every), checkpoint_path=last),
                 *callbacks, *([StepProgress()] if t.enable_progress_bar else []),
                 # Last: it saves once every other callback has finished the step (EMA included).
                 PreemptionCheckpoint(last)]
    return L.Trainer(
        max_steps=t.max_steps, accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes,
        strategy=t.strategy, precision=t.precision, accumulate_grad_batches=t.accumulate_grad_batches,
        gradient_clip_val=t.gradient_clip_val, log_every_n_steps=t.log_every_n_steps,
        enable_progress_bar=t.enable_progress_bar, enable_checkpointing=False, enable_model_summary=False,
        logger=loggers, callbacks=callbacks,
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
    from teachers.base import check_attributes

    spec = dict(teacher_spec)
    autocast = bool(spec.pop("autocast", False))
    teacher = teachers.load(teacher if teacher is not None else spec)
    check_attributes(teacher)  # a NaN sigma_data trains a NaN student; refuse it before building on it
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


def resume_message(step: int, max_steps: int, checkpoint: Path) -> str:
    if max_steps != -1 and step >= max_steps:
        return f"already finished at step {step}; raise trainer.max_steps to train longer"
    return f"resuming at step {step} of {max_steps} (from {checkpoint})"


def prepare(cfg, teacher=None):
    """(run_dir, resume checkpoint, resume step, teacher, module, datamodule): everything checked, nothing
    created. Bad input raises ConfigError / TeacherSpecError / FileNotFoundError (exit 2)."""
    from distill.data import DistillDataModule
    from distill.training.preflight import check_data, check_resume_checkpoint, probe_teacher, target_dtype
    from teachers.registry import TeacherSpecError

    run_dir, resume = plan_run_dir(cfg)
    spec = to_plain(cfg)["teacher"]
    try:
        teacher, module = prepare_teacher_and_student(cfg, spec, teacher)
        probe_teacher(teacher, target_dtype(module), spec)
        resume_step = check_resume_checkpoint(resume, module) if resume else None
        start = (resume_step or 0) * cfg.trainer.accumulate_grad_batches
        data = DistillDataModule(cfg, teacher, start_step=start)
        if data.streamed:  # in-memory sets were just read whole; shards are read until a first good sample
            check_data(cfg, teacher)
    except TeacherSpecError:
        raise
    except (ValueError, KeyError) as err:  # a recipe that names things that do not fit together
        raise ConfigError(str(err).strip("'\"")) from err
    return run_dir, resume, resume_step, teacher, module, data


def fit(cfg, teacher=None):
    """Train as the recipe says. `teacher` may be any Denoiser object (overrides the recipe's block).

    Raises `distill.training.callbacks.preemption.Preempted` after a preemption checkpoint (the caller exits)."""
    from distill.quiet import quiet_third_party
    from distill.training.finish import complete_finished_run, remove_stale_tmp
    from distill.training.loggers import check_available

    quiet_third_party()
    check_available(cfg.log.loggers)  # before the teacher and data are built: seconds sooner
    run_dir, resume, resume_step, teacher, module, data = prepare(cfg, teacher)
    trainer = build_trainer(cfg, run_dir, resume_step=resume_step)
    rank_zero = is_global_rank_zero()
    created = not run_dir.exists() or not any(run_dir.iterdir())
    if rank_zero:
        remove_stale_tmp(run_dir)
        if resume is None and (run_dir / "config.yaml").is_file() and never_saved(run_dir):
            clear_leftovers(run_dir)
        write_config(run_dir, cfg)
        if resume_step is not None:
            print(resume_message(resume_step, cfg.trainer.max_steps, resume), file=sys.stderr, flush=True)
    try:
        trainer.fit(module, datamodule=data, ckpt_path=str(resume) if resume else None)
    except BaseException:
        if rank_zero and created and never_saved(run_dir):
            shutil.rmtree(run_dir, ignore_errors=True)  # failed before its first checkpoint: nothing to keep
        raise
    if rank_zero:
        complete_finished_run(trainer, module, run_dir)
    return run_dir
