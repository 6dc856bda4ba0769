"""Image folders (class = subfolder) and EDM dataset zips (labels in dataset.json).

Both are read into memory and served by StepBatches, so training on them resumes exactly. For data sets
too big for memory, write webdataset shards with `distill shards SRC OUT` and use data.name=webdataset.
`iter_raw` yields the undecoded files for `distill shards`.

A folder is read as what it holds: a link to a file outside it (`x.png -> /etc/passwd`) is refused, not
followed, so nothing outside SRC lands in a shard or a training set (links inside SRC are fine). A file
larger than `max_bytes` (64 MiB by default, far above any training image) is refused, not read whole. Both
are checked for every file before the first one is read.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterator
from pathlib import Path

import torch

from distill.data.images import IMAGE_EXTENSIONS, UndecodableImage, decode_image

# Far above any image a diffusion model trains on (a 2048x2048 RGB PNG is at most ~12 MiB).
MAX_MEMBER_BYTES = 64 << 20


def _is_image(name: str) -> bool:
    return name.rsplit(".", 1)[-1].lower() in IMAGE_EXTENSIONS


def check_inside(root: Path, files: list[Path]) -> None:
    """Refuse links from inside `root` to files outside it (see the module docstring)."""
    inside = root.resolve()
    outside = [p for p in files if not p.resolve().is_relative_to(inside)]
    if outside:
        raise ValueError(f"{root}: {len(outside)} file(s) are links to files outside the folder, e.g. {outside[0]} "
                         f"-> {outside[0].resolve()}; links out of the source are never followed. Copy the files "
                         "in (cp -L) if you mean them")


def read_capped(path: Path, max_bytes: int = MAX_MEMBER_BYTES) -> bytes:
    """A file's bytes, refused (not read whole) above max_bytes."""
    with open(path, "rb") as f:
        return _read_capped(f, path, path.stat().st_size, max_bytes)


def _folder_items(root: Path) -> list[tuple[str, Path, int]]:
    """(key, file, label): label = index of the sorted subfolder name, -1 for files in the root."""
    files = sorted(p for p in root.rglob("*") if p.is_file() and _is_image(p.name))
    check_inside(root, files)
    classes = sorted({p.relative_to(root).parts[0] for p in files if len(p.relative_to(root).parts) > 1})
    index = {c: i for i, c in enumerate(classes)}
    items = []
    for p in files:
        rel = p.relative_to(root)
        label = index[rel.parts[0]] if len(rel.parts) > 1 else -1
        items.append((rel.with_suffix("").as_posix(), p, label))
    return items


def _zip_items(zf: zipfile.ZipFile, max_bytes: int) -> list[tuple[str, str, int]]:
    """EDM's dataset_tool.py layout: images anywhere in the zip, dataset.json = {"labels": [[name, c]]}."""
    names = sorted(n for n in zf.namelist() if _is_image(n))
    labels: dict[str, int] = {}
    if "dataset.json" in zf.namelist():
        meta = json.loads(_read_member(zf, "dataset.json", max_bytes))
        labels = {name: int(c) for name, c in (meta.get("labels") or [])}
    return [(n.rsplit(".", 1)[0], n, labels.get(n, -1)) for n in names]


def check_size(name, size: int, max_bytes: int) -> None:
    if size > max_bytes:
        raise ValueError(f"{name}: {size} bytes, over the limit of {max_bytes} bytes for one file; refused, "
                         "not read (if it really is one training image, raise the limit)")


def _read_capped(f, name, size: int, max_bytes: int) -> bytes:
    """At most max_bytes + 1 bytes are read, whatever the size announced (a file may grow, a header lie)."""
    check_size(name, size, max_bytes)
    data = f.read(max_bytes + 1)
    check_size(name, len(data), max_bytes)
    return data


def _read_member(zf: zipfile.ZipFile, name: str, max_bytes: int) -> bytes:
    info = zf.getinfo(name)
    with zf.open(info) as f:
        return _read_capped(f, f"{zf.filename}:{name}", info.file_size, max_bytes)


def iter_raw(src: str | Path, max_bytes: int = MAX_MEMBER_BYTES) -> Iterator[tuple[str, str, bytes, int]]:
    """(key, extension, bytes, label) for every image of a folder or an EDM zip, in a fixed order.

    ValueError, before anything is yielded, for a link out of the folder or a file over max_bytes."""
    src = Path(src)
    if src.is_dir():
        items = _folder_items(src)
        for _, path, _ in items:
            check_size(path, path.stat().st_size, max_bytes)
        for key, path, label in items:
            yield key, path.suffix[1:].lower(), read_capped(path, max_bytes), label
    elif zipfile.is_zipfile(src):
        with zipfile.ZipFile(src) as zf:
            items = _zip_items(zf, max_bytes)
            for _, name, _ in items:
                check_size(f"{src}:{name}", zf.getinfo(name).file_size, max_bytes)
            for key, name, label in items:
                yield key, name.rsplit(".", 1)[-1].lower(), _read_member(zf, name, max_bytes), label
    else:
        raise FileNotFoundError(f"{src}: not an image folder or a zip file")


def load_images(src: str | Path, shape: tuple[int, ...], strict: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """All images of a folder or zip as (N, C, H, W) in [-1, 1], labels (None when there are none) and
    the number of undecodable files skipped (strict: the first one raises, naming the file)."""
    images, labels, skipped = [], [], 0
    for key, ext, data, label in iter_raw(src):
        try:
            images.append(decode_image(data, shape))
        except UndecodableImage as err:
            if strict:
                raise UndecodableImage(f"{src}: {key}.{ext}: cannot decode image ({err})") from None
            skipped += 1
            continue
        labels.append(label)
    if not images:
        raise FileNotFoundError(f"data.path {src}: no readable images (png, jpg, webp, ...) found")
    lab = torch.tensor(labels)
    return torch.stack(images), (lab if (lab >= 0).any() else None), skipped


def first_image(src: str | Path, shape: tuple[int, ...]) -> str:
    """The name of the first image of a folder or zip that decodes (`distill fit --dry-run`); raises
    FileNotFoundError when there is none."""
    for key, ext, data, _ in iter_raw(src):
        try:
            decode_image(data, shape)
            return f"{key}.{ext}"
        except UndecodableImage:
            continue
    raise FileNotFoundError(f"data.path {src}: no readable images (png, jpg, webp, ...) found")
