"""Batches indexed by the global step, for data held in memory.

Lightning does not restore a plain dataloader's position on resume (it replays the epoch), so the
batch for step k is a pure function of (seed, k, rank): the pool is shuffled once per epoch with a
generator seeded by (seed, epoch), and step k takes global-batch slice k of that order; rank r takes
its part of the global batch. A run resumed at step k therefore continues exactly, and a run on R
ranks with batch B sees the same global batch as one rank with batch R*B.
"""

from __future__ import annotations

import torch
from torch.utils.data import IterableDataset


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers (splitmix64-style), so (seed, step, rank) streams do not collide."""
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = (h ^ (int(p) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h & 0x7FFFFFFFFFFFFFFF


class StepBatches(IterableDataset):
    def __init__(self, images: torch.Tensor, labels: torch.Tensor | None, batch_size: int, seed: int,
                 rank: int = 0, world_size: int = 1, start_step: int = 0):
        self.images, self.labels = images, labels
        self.batch_size, self.seed = batch_size, seed
        self.rank, self.world_size, self.start_step = rank, world_size, start_step

    def batch_indices(self, step: int) -> torch.Tensor:
        n, global_batch = self.images.shape[0], self.batch_size * self.world_size
        first = step * global_batch + self.rank * self.batch_size
        idx = torch.arange(first, first + self.batch_size)
        epochs, pos = idx // n, idx % n
        out = torch.empty_like(idx)
        for e in epochs.unique().tolist():
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(mix_seed(self.seed, e)))
            sel = epochs == e
            out[sel] = perm[pos[sel]]
        return out

    def __iter__(self):
        if torch.utils.data.get_worker_info() is not None:
            raise RuntimeError("StepBatches is indexed by step and runs in the main process: set "
                               "data.num_workers=0 for in-memory data sets")
        step = self.start_step
        while True:
            idx = self.batch_indices(step)
            labels = self.labels[idx] if self.labels is not None else torch.full((len(idx),), -1)
            yield self.images[idx], labels
            step += 1
