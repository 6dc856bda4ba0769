"""Image folders (class = subfolder) and EDM dataset zips (labels in dataset.json).

Both are read into memory and served by StepBatches, so training on them resumes exactly. For data sets
too big for memory, write webdataset shards with `distill shards SRC OUT` and use data.name=webdataset.
`iter_raw` yields the undecoded files for `distill shards`.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterator
from pathlib import Path

import torch

from distill.data.images import IMAGE_EXTENSIONS, UndecodableImage, decode_image


def _is_image(name: str) -> bool:
    return name.rsplit(".", 1)[-1].lower() in IMAGE_EXTENSIONS


def _folder_items(root: Path) -> list[tuple[str, Path, int]]:
    """(key, file, label): label = index of the sorted subfolder name, -1 for files in the root."""
    files = sorted(p for p in root.rglob("*") if p.is_file() and _is_image(p.name))
    classes = sorted({p.relative_to(root).parts[0] for p in files if len(p.relative_to(root).parts) > 1})
    index = {c: i for i, c in enumerate(classes)}
    items = []
    for p in files:
        rel = p.relative_to(root)
        label = index[rel.parts[0]] if len(rel.parts) > 1 else -1
        items.append((rel.with_suffix("").as_posix(), p, label))
    return items


def _zip_items(path: Path) -> tuple[zipfile.ZipFile, list[tuple[str, str, int]]]:
    """EDM's dataset_tool.py layout: images anywhere in the zip, dataset.json = {"labels": [[name, c]]}."""
    zf = zipfile.ZipFile(path)
    names = sorted(n for n in zf.namelist() if _is_image(n))
    labels: dict[str, int] = {}
    if "dataset.json" in zf.namelist():
        meta = json.loads(zf.read("dataset.json"))
        labels = {name: int(c) for name, c in (meta.get("labels") or [])}
    return zf, [(n.rsplit(".", 1)[0], n, labels.get(n, -1)) for n in names]


def iter_raw(src: str | Path) -> Iterator[tuple[str, str, bytes, int]]:
    """(key, extension, bytes, label) for every image of a folder or an EDM zip, in a fixed order."""
    src = Path(src)
    if src.is_dir():
        for key, path, label in _folder_items(src):
            yield key, path.suffix[1:].lower(), path.read_bytes(), label
    elif zipfile.is_zipfile(src):
        zf, items = _zip_items(src)
        with zf:
            for key, name, label in items:
                yield key, name.rsplit(".", 1)[-1].lower(), zf.read(name), label
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
