"""A finished run whose end was cut off: the rerun completes it.

The end of training runs in order (callback list, distill/training/fit.py): final FID, the final
`checkpoints/last.ckpt`, the final sample grids, then the export. A kill after the final checkpoint left
a run whose rerun resumed at max_steps, where Lightning skips the training loop and its `on_train_end`
hooks, so the rerun exited 0 without the grids or the export. After `trainer.fit` the rerun now checks
the artefacts against the checkpoint's step (student.json records it) and writes what is missing or
stale by calling the same callbacks. Stale `*.tmp` files (a kill during an atomic
write) are removed before training. The final FID needs no repair: it precedes the final checkpoint, and
no other checkpoint is written at max_steps (LastCheckpoint, PreemptionCheckpoint).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def remove_stale_tmp(run_dir: Path) -> list[Path]:
    """`*.tmp` left by a kill during an atomic write (teachers.files.atomic_write_bytes); rank 0, before
    training, so nothing of this run is writing them."""
    found = [p for d in (run_dir, run_dir / "checkpoints", run_dir / "samples") if d.is_dir()
             for p in d.glob("*.tmp") if p.is_file()]
    for p in found:
        p.unlink()
    return found


def export_step(run_dir: Path) -> int | None:
    """The step student.json records, or None when the export is missing or unreadable. write_export
    writes student.safetensors first, so a student.json of step k means the weights beside it are too."""
    if not (run_dir / "student.safetensors").is_file():
        return None
    try:
        meta = json.loads((run_dir / "student.json").read_text())
    except (OSError, ValueError):
        return None
    step = meta.get("step") if isinstance(meta, dict) else None
    return step if isinstance(step, int) else None


def final_grids(run_dir: Path, module) -> list[Path]:
    """What SampleGrid writes at the end (image students only)."""
    if len(module.student.image_shape) != 3:
        return []
    return [run_dir / "samples" / f"final_{k}step.png" for k in module.cfg.eval.steps]


def complete_finished_run(trainer, module, run_dir: Path) -> list[str]:
    """Rank 0, after trainer.fit returned normally: write the sample grids and the export if the run is
    at its last step and they are missing or older than it. Returns what was written."""
    cfg, step = module.cfg, trainer.global_step
    if cfg.trainer.max_steps == -1 or step < cfg.trainer.max_steps:
        return []
    current = export_step(run_dir) == step
    if current and all(p.is_file() for p in final_grids(run_dir, module)):
        return []
    module.to(trainer.strategy.root_device)  # Lightning's teardown moved it to the CPU
    written = []
    for cb in trainer.callbacks:
        name = type(cb).__name__
        if name == "SampleGrid" or (name == "ExportStudent" and not current):
            cb.on_train_end(trainer, module)
            written.append(name)
    log.warning("run %s was complete up to step %d but its end was cut off; rewrote: %s", run_dir, step,
                ", ".join(written))
    return written


def teacher_export_step(run_dir: Path) -> int | None:
    """The step teacher.json records (`training.steps`), or None when the export is missing or unreadable
    (save_edm writes teacher.safetensors before teacher.json)."""
    if not (run_dir / "teacher.safetensors").is_file():
        return None
    try:
        meta = json.loads((run_dir / "teacher.json").read_text())
    except (OSError, ValueError):
        return None
    step = (meta.get("training") or {}).get("steps") if isinstance(meta, dict) else None
    return step if isinstance(step, int) else None


def complete_finished_teacher(trainer, module, run_dir: Path) -> list[str]:
    """`distill train-teacher`'s counterpart of complete_finished_run: the final evaluation and
    teacher.safetensors + teacher.json, when the run is at its last step and they are missing or stale."""
    cfg, step = module.cfg, trainer.global_step
    if cfg.trainer.max_steps == -1 or step < cfg.trainer.max_steps or teacher_export_step(run_dir) == step:
        return []
    module.to(trainer.strategy.root_device)
    written = []
    for cb in trainer.callbacks:
        name = type(cb).__name__
        if name in ("TeacherEvaluation", "ExportTeacher"):  # in this order: the export records the FID
            cb.on_train_end(trainer, module)
            written.append(name)
    log.warning("run %s was complete up to step %d but its end was cut off; rewrote: %s", run_dir, step,
                ", ".join(written))
    return written
