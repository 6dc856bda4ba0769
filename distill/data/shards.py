"""Writing webdataset shards from an image folder or an EDM dataset zip (`distill shards`).

Each sample is `KEY.<ext>` (the original bytes, not re-encoded) and, when labelled, `KEY.cls`; keys are
running numbers, because webdataset splits a file name at its first dot to find the key.
"""

from __future__ import annotations

from pathlib import Path

from distill.data.folders import iter_raw


def write_shards(src: str | Path, out: str | Path, shard_size: int, prefix: str = "shard") -> list[Path]:
    """Shards `OUT/{prefix}-000000.tar, ...` of `shard_size` samples each; returns their paths."""
    import webdataset as wds

    if shard_size < 1:
        raise ValueError(f"--shard-size must be positive, got {shard_size}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)  # ShardWriter does not create its folder (FACTS.md)
    pattern = str(out / f"{prefix}-%06d.tar")
    count = 0
    with wds.ShardWriter(pattern, maxcount=shard_size, verbose=0) as sink:
        for index, (_, ext, data, label) in enumerate(iter_raw(src)):
            sample = {"__key__": f"{index:09d}", ext: data}
            if label >= 0:
                sample["cls"] = str(label).encode()
            sink.write(sample)
            count += 1
    if count == 0:
        raise FileNotFoundError(f"{src}: no images (png, jpg, webp, ...) to write")
    return sorted(out.glob(f"{prefix}-*.tar"))
