"""webdataset shards for cluster training (DESIGN.md, "Scaling out"; FACTS.md, webdataset).

data.path: a local path, a brace pattern (`shards/train-{000000..000127}.tar`), several joined by `::`,
or a `pipe:` command (`pipe:aws s3 cp s3://bucket/train-000001.tar -`), as webdataset opens them.
Samples are `KEY.png|jpg|...` plus an optional `KEY.cls` (class label), as `distill shards` writes them;
for text-to-image teachers `KEY.txt` (the caption), and `KEY.npy` (float16 latents, `distill shards --latents`)
may stand in for the image.

- Splitting: shards go to ranks, then to DataLoader workers, by the rank and worker numbers passed in
  (not read back from the environment in the worker), and RANK/WORLD_SIZE are also exported before the
  loader starts, because webdataset's own helpers read them and spawned workers otherwise all think they
  are rank 0 of 1 (silent duplication; FACTS.md).
- resampled=true (training default): every worker draws shards with replacement, forever; `with_epoch`
  cuts each rank's epoch at the same number of batches, so no rank runs out first and hangs DDP.
  resampled=false: one pass, each shard read by exactly one (rank, worker) (evaluation, `count`).
- Randomness (shard draws, shuffle buffer, x-flips) comes from (seed, start step, epoch, rank, worker):
  a resumed run draws a fresh, reproducible stream; it does not replay the interrupted one sample for
  sample (use an in-memory source for bit-exact resume).
- Corrupt data: `skip` counts each bad sample or shard per shard and logs the first few, then summary
  lines (distill/data/corrupt.py); once every shard has been read since the last good sample without
  giving one, it raises CorruptSampleError naming the shards (nothing could ever come). `strict` raises
  CorruptSampleError at the first bad sample, naming it. A pass (or an epoch) with no sample at all raises
  too, instead of training on nothing.
"""

from __future__ import annotations

import os
import random
import tarfile
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, IterableDataset

from distill.data.corrupt import CorruptSampleError, Progress, SkipLog
from distill.data.images import IMAGE_EXTENSIONS, UndecodableImage, decode_image, decode_label
from distill.data.step_batches import mix_seed

__all__ = ["CorruptSampleError", "ShardSamples", "build_loader", "expand_urls", "first_sample"]


def expand_urls(path: str) -> list[str]:
    """`a-{000..007}.tar::b.tar` -> the list of shard URLs (webdataset's own expansion)."""
    from webdataset.shardlists import expand_urls as wds_expand

    urls = wds_expand(str(path))
    if not urls:
        raise FileNotFoundError(f"data.path {path!r} names no shards")
    return urls


class TruncatedShard(OSError):
    pass


class _TailStream:
    """Reads through a shard stream, remembering its last 1 KiB. Python's tarfile, reading a stream,
    takes a shard cut off at a header for a normal end (tarfile.py, TarFile.next: TruncatedHeaderError
    and EmptyHeaderError past offset 0 end the archive), so a half-uploaded shard loses samples silently.
    A complete tar ends with two zero blocks (POSIX ustar), which is checked after the last member."""

    def __init__(self, raw):
        self.raw, self.tail = raw, b""

    def read(self, n=-1):
        data = self.raw.read(n)
        self.tail = (self.tail + data)[-1024:]
        return data

    def check_complete(self, url: str) -> None:
        while self.read(1 << 16):
            pass
        if len(self.tail) < 1024 or any(self.tail):
            raise TruncatedShard(f"truncated tar file (no end-of-archive blocks): {url}")

    def close(self):
        try:  # a failed `pipe:` command raises here too; check_complete has already reported it
            self.raw.close()
        except (OSError, AttributeError):
            pass


def _worker() -> tuple[int, int]:
    info = torch.utils.data.get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


class ShardSamples(IterableDataset):
    """(x0, label) samples from shards, split by rank and worker; see the module docstring."""

    def __init__(self, urls: list[str], shape: tuple[int, ...], *, rank: int = 0, world_size: int = 1,
                 resampled: bool = True, seed: int = 0, start_step: int = 0, shuffle_buffer: int = 1000,
                 xflip: bool = False, corrupt: str = "skip", need_labels: bool = False, captions: bool = False,
                 latent_shape: tuple[int, ...] | None = None):
        if corrupt not in ("skip", "strict"):
            raise ValueError(f"data.corrupt: {corrupt!r} is not skip or strict")
        self.urls, self.shape = list(urls), tuple(shape)
        self.rank, self.world_size, self.resampled = rank, world_size, resampled
        self.seed, self.start_step, self.shuffle_buffer = seed, start_step, shuffle_buffer
        self.xflip, self.corrupt, self.need_labels = xflip, corrupt, need_labels
        self.captions, self.latent_shape = captions, latent_shape
        self.epoch = 0  # bumped in the main process by EpochLoader before workers start
        self.skips = SkipLog()  # in this process; workers count and log theirs

    @property
    def skipped(self):
        return self.skips.skipped

    # -- policy ----------------------------------------------------------------------------------------
    def _bad(self, what: str, url: str, key: str, reason: str) -> None:
        if self.corrupt == "strict":
            where = f"shard {url}" + (f", sample {key!r}" if key else "")
            raise CorruptSampleError(f"{where}: {reason} (data.corrupt=strict; set data.corrupt=skip to skip "
                                     "corrupt samples, or rewrite the shard with `distill shards`)")
        self.skips.record(what, url, key, reason)

    def _samples(self, shards: Iterator[dict], progress: Progress) -> Iterator[dict]:
        """webdataset's tar reading (gopen, tar_file_iterator, group_by_keys), one shard at a time, so
        that an unreadable or truncated shard is reported with its URL. Until a read has given one good
        sample, its samples are decoded here, before the shuffle buffer, so that `progress` learns of a
        dead read when the read ends (the samples that follow are decoded after the shuffle, as usual)."""
        from webdataset.gopen import gopen
        from webdataset.tariterators import group_by_keys, reraise_exception, tar_file_iterator

        check = random.Random(0)  # the pre-check's own x-flip draws, so the stream's draws stay as they were
        for shard in shards:
            url, found_good = shard["url"], False
            stream = None
            try:
                stream = _TailStream(gopen(url))
                files = ({**f, "__url__": url} for f in tar_file_iterator(stream, handler=reraise_exception))
                for sample in group_by_keys(files):
                    if not found_good:
                        found_good = self._decode(sample, check) is not None
                        if not found_good:
                            continue  # counted and logged by _decode
                    yield sample
                stream.check_complete(url)
            except (tarfile.TarError, OSError, EOFError, ValueError, KeyError) as exn:
                self._bad("shards", url, "", f"{type(exn).__name__}: {exn}")
            finally:
                if stream is not None:
                    stream.close()
            progress.shard_done(url, found_good)
            if progress.stuck():
                raise progress.error(self.skips)

    # -- stages ----------------------------------------------------------------------------------------
    def _my_urls(self, worker: int, num_workers: int) -> list[str]:
        """Resampled: every shard. One pass: rank r takes every world_size-th, then worker w every
        num_workers-th of those."""
        return self.urls if self.resampled else self.urls[self.rank::self.world_size][worker::num_workers]

    def _shards(self, rng: random.Random, urls: list[str]) -> Iterator[dict]:
        if self.resampled:
            while True:
                yield {"url": rng.choice(urls)}
        for url in urls:
            yield {"url": url}

    def _decode(self, sample: dict, rng: random.Random) -> tuple[torch.Tensor, int | str] | None:
        url, key = sample.get("__url__", "?"), sample.get("__key__", "?")
        ext = "npy" if "npy" in sample and self.latent_shape else next((e for e in IMAGE_EXTENSIONS if e in sample),
                                                                        None)
        if ext is None:
            self._bad("samples", url, key, f"no image file (one of {', '.join(IMAGE_EXTENSIONS)})")
            return None
        if self.captions and "txt" not in sample:
            self._bad("samples", url, key, "no .txt caption, but the teacher is text-conditional")
            return None
        try:
            x = decode_latent(sample[ext], self.latent_shape) if ext == "npy" else decode_image(sample[ext], self.shape)
            label = sample["txt"].decode("utf-8").strip() if self.captions else decode_label(sample.get("cls"))
        except (UndecodableImage, ValueError) as err:
            self._bad("samples", url, key, f"cannot decode {ext}: {err}")
            return None
        if self.need_labels and label < 0:
            self._bad("samples", url, key, "no .cls label, but the teacher is class-conditional")
            return None
        if self.xflip and rng.random() < 0.5:
            x = x.flip(-1)
        return x, label

    def __iter__(self):
        import webdataset as wds

        worker, num_workers = _worker()
        rng = random.Random(mix_seed(self.seed, self.start_step, self.epoch, self.rank, worker))
        urls = self._my_urls(worker, num_workers)
        # One pass: a worker whose few shards are all bad just ends; the epoch check (EpochLoader) speaks
        # for the whole pass. Resampled: every worker draws from every shard, so it can judge alone.
        progress = Progress(urls if self.resampled else [])
        stream = self._samples(self._shards(rng, urls), progress)
        if self.shuffle_buffer > 1:
            stream = wds.shuffle(self.shuffle_buffer, initial=min(100, self.shuffle_buffer), rng=rng)(stream)
        for sample in stream:
            out = self._decode(sample, rng)
            if out is not None:
                yield out


def decode_latent(data: bytes, shape) -> torch.Tensor:
    """A `.npy` latent (numpy's format, read without pickle) of the teacher's latent shape, as float32."""
    import io

    import numpy as np

    arr = np.load(io.BytesIO(data), allow_pickle=False)
    if tuple(arr.shape) != tuple(shape):
        raise ValueError(f"latent of shape {arr.shape}, the teacher expects {tuple(shape)} (other VAE or resolution?)")
    return torch.from_numpy(arr.astype(np.float32))


def _collate(samples):
    xs, labels = zip(*samples, strict=True)
    return torch.stack(xs), (list(labels) if isinstance(labels[0], str) else torch.tensor(labels))


class EpochLoader(DataLoader):
    """A DataLoader that bumps the samples' epoch before its workers start, so each pass draws a new
    stream (a worker's copy of the dataset cannot carry a counter back)."""

    def __init__(self, samples: ShardSamples, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.samples = samples

    def __iter__(self):
        self.samples.epoch += 1
        count = 0
        for batch in super().__iter__():
            count += 1
            yield batch
        if count == 0:  # a whole pass over the shards gave nothing: training would loop over empty epochs
            urls = self.samples.urls
            shown = ", ".join(urls[:3]) + (", ..." if len(urls) > 3 else "")
            raise CorruptSampleError(f"no usable sample in the {len(urls)} shards ({shown}) for rank "
                                     f"{self.samples.rank}: every sample was undecodable, unlabelled or unreadable "
                                     "(see the warnings above); check data.path")


def build_loader(dataset: ShardSamples, batch_size: int, num_workers: int, epoch_batches: int):
    """webdataset's WebLoader is DataPipeline(DataLoader(...)); built here around EpochLoader so the epoch
    bump above applies. `.with_epoch(n)`: n batches per rank per epoch, the same on every rank."""
    import webdataset as wds

    os.environ["RANK"], os.environ["WORLD_SIZE"] = str(dataset.rank), str(dataset.world_size)
    batches = wds.DataPipeline(dataset, wds.batched(batch_size, collation_fn=_collate,
                                                    partial=not dataset.resampled))
    loader = EpochLoader(dataset, batches, batch_size=None, num_workers=num_workers)
    pipeline = wds.DataPipeline(loader)
    if epoch_batches > 0:
        pipeline = pipeline.with_epoch(epoch_batches)
    return pipeline


def first_sample(path: str, shape: tuple[int, ...], corrupt: str = "skip", need_labels: bool = False):
    """(x, label) of the first good sample of the shards at `path`, read in order (`distill fit --dry-run`
    and the start of a real run). Raises CorruptSampleError when no shard has one."""
    samples = ShardSamples(expand_urls(path), shape, resampled=False, shuffle_buffer=0, corrupt=corrupt,
                           need_labels=need_labels)
    for x, label in samples:
        return x, label
    raise CorruptSampleError(f"data.path {path}: no usable sample in its {len(samples.urls)} shards "
                             f"({samples.skips.summary()}); check the path, or rewrite the shards with "
                             "`distill shards`")
