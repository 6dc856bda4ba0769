"""Every side effect of training lives in a callback: EMA, checkpoints, export, guards, evaluation."""

from distill.training.callbacks.checkpointing import AtomicCheckpointIO, LastCheckpoint
from distill.training.callbacks.ema import StudentEMA
from distill.training.callbacks.export import ExportStudent
from distill.training.callbacks.nan_guard import NaNGuard

__all__ = ["AtomicCheckpointIO", "ExportStudent", "LastCheckpoint", "NaNGuard", "StudentEMA"]
