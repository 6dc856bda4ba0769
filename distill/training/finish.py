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


def recorded_step(weights: Path, record: Path, *keys: str) -> int | None:
    """The step a run's export records (`record`'s value at `keys`), or None when the export is missing or
    unreadable. The weights are written before the record, so a record of step k means the weights are too."""
    if not weights.is_file():
        return None
    try:
        meta = json.loads(record.read_text())
    except (OSError, ValueError):
        return None
    for key in keys:
        meta = meta.get(key) if isinstance(meta, dict) else None
    return meta if isinstance(meta, int) else None


def export_step(run_dir: Path) -> int | None:
    """The step student.json records (write_export: student.safetensors first)."""
    return recorded_step(run_dir / "student.safetensors", run_dir / "student.json", "step")


def at_last_step(trainer, module) -> bool:
    max_steps = module.cfg.trainer.max_steps
    return max_steps != -1 and trainer.global_step >= max_steps


def rerun_end(trainer, module, run_dir: Path, names: list[str]) -> list[str]:
    """Call the end-of-training hooks of the callbacks named `names`, in the trainer's order: Lightning skips
    them when a rerun resumes at max_steps."""
    module.to(trainer.strategy.root_device)  # Lightning's teardown moved it to the CPU
    written = []
    for cb in trainer.callbacks:
        if type(cb).__name__ in names:
            cb.on_train_end(trainer, module)
            written.append(type(cb).__name__)
    log.warning("run %s was complete up to step %d but its end was cut off; rewrote: %s", run_dir,
                trainer.global_step, ", ".join(written))
    return written


def final_grids(run_dir: Path, module) -> list[Path]:
    """What SampleGrid writes at the end (image students only)."""
    if len(module.student.image_shape) != 3:
        return []
    return [run_dir / "samples" / f"final_{k}step.png" for k in module.cfg.eval.steps]


def complete_finished_run(trainer, module, run_dir: Path) -> list[str]:
    """Rank 0, after trainer.fit returned normally: write the sample grids and the export if the run is
    at its last step and they are missing or older than it. Returns what was written."""
    if not at_last_step(trainer, module):
        return []
    current = export_step(run_dir) == trainer.global_step
    if current and all(p.is_file() for p in final_grids(run_dir, module)):
        return []
    return rerun_end(trainer, module, run_dir, ["SampleGrid"] + ([] if current else ["ExportStudent"]))


def complete_finished_teacher(trainer, module, run_dir: Path) -> list[str]:
    """`distill train-teacher`'s counterpart: the final evaluation and teacher.safetensors + teacher.json
    (save_edm writes the weights first; teacher.json records `training.steps`) when missing or stale."""
    recorded = recorded_step(run_dir / "teacher.safetensors", run_dir / "teacher.json", "training", "steps")
    if not at_last_step(trainer, module) or recorded == trainer.global_step:
        return []
    return rerun_end(trainer, module, run_dir, ["TeacherEvaluation", "ExportTeacher"])  # the export records the FID
