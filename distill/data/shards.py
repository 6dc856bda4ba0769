"""Writing webdataset shards from an image folder or an EDM dataset zip (`distill shards`).

Each sample is `KEY.<ext>` (the original bytes, not re-encoded) and, when labelled, `KEY.cls`; keys are
running numbers, because webdataset splits a file name at its first dot to find the key. The prefix is a
plain file name, so every shard lands in OUT; what is read from SRC follows `distill.data.folders.iter_raw`
(no links out of SRC, no file over `max_bytes`).
Caption folders (images with a .txt each, distill/data/captions.py) give `KEY.<ext>` + `KEY.txt`, or, with a
latent teacher, `KEY.npy` (its VAE's latents, float16, encoded once here) + `KEY.txt`; the same rules apply.
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path

from distill.data.folders import MAX_MEMBER_BYTES, iter_raw, read_capped

PREFIX = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def check_prefix(prefix: str) -> None:
    if not PREFIX.fullmatch(prefix):
        raise ValueError(f"--prefix {prefix!r}: a shard name prefix is a plain file name (letters, digits, '.', "
                         "'_', '-'; no separator, not starting with '.'), so that every shard lands in OUT")


def write_shards(src: str | Path, out: str | Path, shard_size: int, prefix: str = "shard",
                 max_bytes: int = MAX_MEMBER_BYTES) -> list[Path]:
    """Shards `OUT/{prefix}-000000.tar, ...` of `shard_size` samples each; returns their paths."""
    import webdataset as wds

    if shard_size < 1:
        raise ValueError(f"--shard-size must be positive, got {shard_size}")
    check_prefix(prefix)
    samples = iter_raw(src, max_bytes)
    first = next(samples, None)  # links and sizes are checked for every file here, before OUT is created
    if first is None:
        raise FileNotFoundError(f"{src}: no images (png, jpg, webp, ...) to write")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)  # ShardWriter does not create its folder (FACTS.md)
    pattern = str(out / f"{prefix}-%06d.tar")
    with wds.ShardWriter(pattern, maxcount=shard_size, verbose=0) as sink:
        for index, (_, ext, data, label) in enumerate(itertools.chain([first], samples)):
            sample = {"__key__": f"{index:09d}", ext: data}
            if label >= 0:
                sample["cls"] = str(label).encode()
            sink.write(sample)
    return sorted(out.glob(f"{prefix}-*.tar"))


def write_caption_shards(src: str | Path, out: str | Path, shard_size: int, prefix: str = "shard", teacher=None,
                         batch_size: int = 16, max_bytes: int = MAX_MEMBER_BYTES) -> list[Path]:
    """Shards of a caption folder: image bytes + caption, or (with `teacher`) VAE latents + caption."""
    import io

    import numpy as np
    import torch
    import webdataset as wds

    from distill.data.captions import caption_pairs
    from distill.data.images import decode_image

    if shard_size < 1:
        raise ValueError(f"--shard-size must be positive, got {shard_size}")
    check_prefix(prefix)
    pairs = list(caption_pairs(src, max_bytes))  # links and sizes checked for every file before OUT exists
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with wds.ShardWriter(str(out / f"{prefix}-%06d.tar"), maxcount=shard_size, verbose=0) as sink:
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start:start + batch_size]
            latents = None
            if teacher is not None:
                pixels = torch.stack([decode_image(read_capped(p, max_bytes), teacher.data_shape)
                                      for _, p, _ in chunk])
                latents = teacher.encode_pixels(pixels).to(torch.float16).cpu().numpy()
            for j, (_, path, text) in enumerate(chunk):
                sample = {"__key__": f"{start + j:09d}", "txt": text.encode("utf-8")}
                if latents is None:
                    sample[path.suffix[1:].lower()] = read_capped(path, max_bytes)
                else:
                    buf = io.BytesIO()
                    np.save(buf, latents[j], allow_pickle=False)
                    sample["npy"] = buf.getvalue()
                sink.write(sample)
    return sorted(out.glob(f"{prefix}-*.tar"))
