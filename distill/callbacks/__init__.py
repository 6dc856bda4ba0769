"""Every side effect of training lives in a callback: EMA, checkpoints, export, guards, evaluation."""

from distill.callbacks.checkpointing import AtomicCheckpointIO, LastCheckpoint
from distill.callbacks.ema import StudentEMA
from distill.callbacks.export import ExportStudent
from distill.callbacks.nan_guard import NaNGuard

__all__ = ["AtomicCheckpointIO", "ExportStudent", "LastCheckpoint", "NaNGuard", "StudentEMA"]
