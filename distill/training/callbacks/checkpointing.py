"""Resumable checkpoints: `checkpoints/last.ckpt`, written atomically every k steps and at the end."""

from __future__ import annotations

import io
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from distill.export import atomic_write_bytes


class AtomicCheckpointIO(TorchCheckpointIO):
    """Serialise to memory, then tmp file + fsync + rename (FACTS.md): a kill mid-write leaves the
    previous checkpoint intact."""

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        buf = io.BytesIO()
        torch.save(checkpoint, buf)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, buf.getvalue())

    def load_checkpoint(self, path, map_location=None, weights_only=None):
        # Our own checkpoints hold tensors and plain containers only.
        return torch.load(path, map_location=map_location or "cpu", weights_only=True)


class LastCheckpoint(L.Callback):
    def __init__(self, dirpath: Path, every_n_steps: int):
        self.path = Path(dirpath) / "last.ckpt"
        self.every_n_steps = int(every_n_steps)
        self._saved_step = -1

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step  # counts optimizer steps; micro-batches of one step share it
        # Not at the last step: on_train_end saves it after the final evaluation, so a checkpoint at max_steps
        # means the end-of-training work up to it is done (distill/training/finish.py).
        last = trainer.max_steps != -1 and step >= trainer.max_steps
        if self.every_n_steps > 0 and step > 0 and step % self.every_n_steps == 0 and step != self._saved_step \
                and not last:
            trainer.save_checkpoint(self.path, weights_only=False)
            self._saved_step = step

    def on_train_end(self, trainer, pl_module):
        trainer.save_checkpoint(self.path, weights_only=False)
