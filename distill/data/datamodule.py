"""The Lightning DataModule: in-memory sets served by step (exact resume) or webdataset shards (clusters).

In memory: digits, toy2d, teacher samples, synthetic, patches (scikit-learn's sample photos), folder
(class = subfolder), zip (EDM dataset zip) and captions (image + .txt pairs, distill/data/captions.py).
Streamed: webdataset (distill/data/webdataset_source.py).
A latent teacher (teachers/diffusers_latent.py) reads pixels of its `data_shape`; they are encoded into its
latent space on the device, after the batch is moved there (`on_after_batch_transfer`); latents stored in
shards (`distill shards --latents`) pass through unchanged.
"""

from __future__ import annotations

import logging

import lightning as L
import torch
from torch.utils.data import DataLoader

from distill.data.step_batches import StepBatches, mix_seed

log = logging.getLogger("distill.data")


def data_shape(teacher) -> tuple[int, ...]:
    """The shape data loaders decode images to: the teacher's pixels (latent teachers) or its images."""
    return tuple(getattr(teacher, "data_shape", teacher.image_shape))


def build_pool(cfg, teacher) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The in-memory training set named by data.name, shaped like the teacher's images."""
    name, seed = cfg.data.name, cfg.run.seed
    if name == "captions":
        from distill.data.captions import load_caption_folder

        if not cfg.data.path:
            raise ValueError("data.name=captions needs data.path (a folder of images with a .txt caption each)")
        images, captions, skipped = load_caption_folder(cfg.data.path, data_shape(teacher),
                                                        strict=cfg.data.corrupt == "strict")
        if skipped:
            log.warning("data.path %s: skipped %d undecodable images (data.corrupt=skip)", cfg.data.path, skipped)
        return _with_xflip(cfg, images, captions)
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
    if name in ("folder", "zip"):
        from distill.data.folders import load_images

        if not cfg.data.path:
            raise ValueError(f"data.name={name} needs data.path (an image folder or an EDM dataset zip)")
        images, labels, skipped = load_images(cfg.data.path, data_shape(teacher),
                                              strict=cfg.data.corrupt == "strict")
        if skipped:
            log.warning("data.path %s: skipped %d undecodable images (data.corrupt=skip)",
                        cfg.data.path, skipped)
        return _with_xflip(cfg, images, labels)
    if name == "patches":
        from distill.data.builtin import sample_image_patches

        images = sample_image_patches(tuple(teacher.image_shape), cfg.data.size or 10000, gen)
        return _with_xflip(cfg, images, None)
    if name == "synthetic":
        size = cfg.data.size or 1024
        images = torch.randn(size, *teacher.image_shape, generator=gen) * teacher.sigma_data
        labels = (torch.randint(0, teacher.num_classes, (size,), generator=gen) if teacher.num_classes
                  else None)
        if getattr(teacher, "text_conditional", False):
            from distill.data.captions import synthetic_captions

            labels = synthetic_captions(size)
        return images.clamp(-1, 1), labels
    raise ValueError(f"data.name: unknown data set {name!r}")


def _with_xflip(cfg, images, labels):
    """EDM's --xflip: the mirrored copies join the pool, so the data stay a pure function of the step."""
    if not cfg.data.xflip:
        return images, labels
    if labels is not None:
        labels = labels + labels if not isinstance(labels, torch.Tensor) else torch.cat([labels, labels])
    return torch.cat([images, images.flip(-1)]), labels


class DistillDataModule(L.LightningDataModule):
    def __init__(self, cfg, teacher, start_step: int = 0):
        super().__init__()
        self.cfg, self.teacher, self.start_step = cfg, teacher, start_step
        self.streamed = cfg.data.name == "webdataset"
        if self.streamed:
            from distill.data.webdataset_source import expand_urls

            if not cfg.data.path:
                raise ValueError("data.name=webdataset needs data.path (shards, e.g. "
                                 "data/train-{0000..0099}.tar)")
            self.urls = expand_urls(cfg.data.path)
        else:
            self.images, self.labels = build_pool(cfg, teacher)
            if self.labels is None and getattr(teacher, "num_classes", 0):
                raise ValueError(f"the teacher is class-conditional but data.name={cfg.data.name} has no "
                                 "labels; put each class in its own subfolder, or give dataset.json labels")
            if getattr(teacher, "text_conditional", False) and isinstance(self.labels, torch.Tensor | None):
                raise ValueError(f"the teacher is text-conditional but data.name={cfg.data.name} has no captions; "
                                 "use data.name=captions (images with .txt files) or webdataset shards with .txt")

    def train_dataloader(self):
        trainer = self.trainer
        rank = trainer.global_rank if trainer is not None else 0
        world = trainer.world_size if trainer is not None else 1
        if self.streamed:
            return self._shard_loader(rank, world)
        ds = StepBatches(self.images, self.labels, self.cfg.data.batch_size, self.cfg.run.seed,
                         rank=rank, world_size=world, start_step=self.start_step)
        return DataLoader(ds, batch_size=None, num_workers=0)

    def _shard_loader(self, rank: int, world: int):
        from distill.data.webdataset_source import ShardSamples, build_loader

        d = self.cfg.data
        samples = ShardSamples(self.urls, data_shape(self.teacher), rank=rank, world_size=world,
                               resampled=d.resampled, seed=self.cfg.run.seed, start_step=self.start_step,
                               shuffle_buffer=d.shuffle_buffer, xflip=d.xflip, corrupt=d.corrupt,
                               need_labels=bool(getattr(self.teacher, "num_classes", 0)),
                               captions=bool(getattr(self.teacher, "text_conditional", False)),
                               latent_shape=tuple(self.teacher.image_shape))
        return build_loader(samples, d.batch_size, d.num_workers, d.epoch_batches)

    def on_after_batch_transfer(self, batch, dataloader_idx: int = 0):
        """Pixels of a latent teacher become its x0 here, on the training device (the VAE is the teacher's)."""
        x, labels = batch
        encode = getattr(self.teacher, "encode_pixels", None)
        if encode is not None and tuple(x.shape[1:]) == data_shape(self.teacher) != tuple(self.teacher.image_shape):
            x = encode(x)
        return x, labels
