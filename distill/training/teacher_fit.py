"""`distill train-teacher`: a teacher recipe in, a run directory with teacher.safetensors + teacher.json out.

The run directory follows `distill fit`'s rules (distill/training/fit.py, whose helpers it uses): the same
config resumes from checkpoints/last.ckpt, another config exits 2 naming the keys, the network and the data
are built before the directory is created, checkpoints are atomic, randomness derives from (seed, step).
"""

from __future__ import annotations

from pathlib import Path

from distill.config import ConfigError
from distill.training.finish import complete_finished_teacher, remove_stale_tmp
from distill.training.fit import checkpoint_step, is_global_rank_zero, make_trainer, plan_run_dir, write_config


def build_teacher_trainer(cfg, run_dir: Path, resume_step: int | None = None):
    from distill.training.callbacks import LastCheckpoint
    from distill.training.callbacks.halflife_ema import HalfLifeEMA
    from distill.training.callbacks.teacher import ExportTeacher, TeacherEvaluation

    callbacks = [HalfLifeEMA(cfg.ema.halflife_kimg, cfg.ema.rampup_ratio, cfg.data.batch_size),
                 LastCheckpoint(run_dir / "checkpoints", cfg.checkpoint.every_n_steps),
                 TeacherEvaluation(cfg, run_dir),  # before the export, which records its FID
                 ExportTeacher(cfg, run_dir)]
    return make_trainer(cfg, run_dir, callbacks, resume_step, acting_every=(cfg.eval.every_n_steps,))


def prepare(cfg, start_step: int = 0):
    """(module, data module); a ConfigError for a recipe whose parts do not fit together."""
    import lightning as L

    from distill.data import DistillDataModule
    from distill.training.teacher_module import EDMTeacherTraining

    try:
        L.seed_everything(cfg.run.seed, workers=True, verbose=False)  # the network's initial weights
        module = EDMTeacherTraining(cfg)
        data = DistillDataModule(cfg, module.spec, start_step=start_step)
        if data.streamed or data.labels is None or not module.spec.num_classes:
            return module, data
        if int(data.labels.min()) < 0 or int(data.labels.max()) >= module.spec.num_classes:
            raise ValueError(f"model.num_classes={module.spec.num_classes}, but the data's labels run from "
                             f"{int(data.labels.min())} to {int(data.labels.max())}")
    except (ValueError, KeyError, TypeError) as err:
        raise ConfigError(str(err).strip("'\"")) from err
    return module, data


def fit_teacher(cfg) -> Path:
    run_dir, resume = plan_run_dir(cfg)
    resume_step = checkpoint_step(resume) if resume else None
    module, data = prepare(cfg, (resume_step or 0) * cfg.trainer.accumulate_grad_batches)
    trainer = build_teacher_trainer(cfg, run_dir, resume_step)
    if is_global_rank_zero():
        remove_stale_tmp(run_dir)
        write_config(run_dir, cfg)
    trainer.fit(module, datamodule=data, ckpt_path=str(resume) if resume else None)
    if is_global_rank_zero():
        complete_finished_teacher(trainer, module, run_dir)
    return run_dir
