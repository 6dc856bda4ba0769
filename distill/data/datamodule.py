"""The Lightning DataModule for built-in, in-memory data sets (digits, toy2d, teacher samples)."""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader

from distill.data.step_batches import StepBatches, mix_seed


def build_pool(cfg, teacher) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The in-memory training set named by data.name, shaped like the teacher's images."""
    name, seed = cfg.data.name, cfg.run.seed
    gen = torch.Generator().manual_seed(mix_seed(seed, 0xDA7A))
    if name == "digits":
        from teachers.analytic import load_digits_array

        images, labels = load_digits_array()
        if tuple(images.shape[1:]) != tuple(teacher.image_shape):
            raise ValueError(f"data.name=digits gives images of shape {images.shape[1:]}, but the teacher "
                             f"expects {teacher.image_shape}; use data.name=teacher or synthetic")
        return torch.from_numpy(images).float(), torch.from_numpy(labels)
    if name in ("teacher", "toy2d"):
        if not hasattr(teacher, "sample"):
            raise ValueError(f"data.name={name} draws exact samples from the teacher, but "
                             f"{type(teacher).__name__} cannot sample; name a data set instead")
        size = cfg.data.size or 20000
        if teacher.num_classes:
            labels = torch.randint(0, teacher.num_classes, (size,), generator=gen)
            return teacher.sample(size, gen, cond=labels), labels
        return teacher.sample(size, gen), None
    if name == "synthetic":
        size = cfg.data.size or 1024
        images = torch.randn(size, *teacher.image_shape, generator=gen) * teacher.sigma_data
        labels = torch.randint(0, teacher.num_classes, (size,), generator=gen) if teacher.num_classes else None
        return images.clamp(-1, 1), labels
    raise ValueError(f"data.name: unknown data set {name!r}")


class DistillDataModule(L.LightningDataModule):
    def __init__(self, cfg, teacher, start_step: int = 0):
        super().__init__()
        self.cfg, self.teacher, self.start_step = cfg, teacher, start_step
        self.images, self.labels = build_pool(cfg, teacher)

    def train_dataloader(self):
        trainer = self.trainer
        rank = trainer.global_rank if trainer is not None else 0
        world = trainer.world_size if trainer is not None else 1
        ds = StepBatches(self.images, self.labels, self.cfg.data.batch_size, self.cfg.run.seed,
                         rank=rank, world_size=world, start_step=self.start_step)
        return DataLoader(ds, batch_size=None, num_workers=0)
