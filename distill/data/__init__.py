"""Training data: x0 batches (+ labels), indexed by step so a resumed run sees the same batches."""

from distill.data.datamodule import DistillDataModule, build_pool

__all__ = ["DistillDataModule", "build_pool"]
