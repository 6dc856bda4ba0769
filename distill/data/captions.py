"""Image-caption pairs for text-to-image teachers: caption folders and the captions' batch container.

A caption folder holds images and, beside each, a text file with the same stem (`cat.jpg` + `cat.txt`), the
layout webdataset shards use too (`KEY.jpg` + `KEY.txt`). `data.name: captions` reads one into memory
(StepBatches: exact resume); large sets go to shards (`distill shards FOLDER OUT [--latents PIPELINE]`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from distill.data.folders import MAX_MEMBER_BYTES, check_inside, check_size, read_capped
from distill.data.images import IMAGE_EXTENSIONS, UndecodableImage, decode_image


class Captions(Sequence):
    """Captions indexed like a label tensor: by an int, a slice, a list or a LongTensor of indices."""

    def __init__(self, texts):
        self.texts = [str(t) for t in texts]

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, index):
        if isinstance(index, int):
            return self.texts[index]
        if isinstance(index, slice):
            return Captions(self.texts[index])
        return Captions(self.texts[int(i)] for i in torch.as_tensor(index).reshape(-1))

    def __add__(self, other: Captions) -> Captions:
        return Captions(self.texts + list(other))

    def __repr__(self) -> str:
        return f"Captions({len(self)} texts)"


def caption_pairs(root: str | Path, max_bytes: int = MAX_MEMBER_BYTES) -> Iterator[tuple[str, Path, str]]:
    """(key, image file, caption) for every image with a .txt beside it, in sorted order. An image without
    its caption is an error that names it: a silently unconditional sample would skew the distillation.
    As for image folders (distill/data/folders.py), links out of the folder and files over max_bytes are
    refused, for every file before the first is read."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a caption folder (images with a .txt caption beside each)")
    images = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix[1:].lower() in IMAGE_EXTENSIONS)
    if not images:
        raise FileNotFoundError(f"{root}: no images (png, jpg, ...) in this caption folder")
    for p in images:
        txt = p.with_suffix(".txt")
        if not txt.is_file():
            raise FileNotFoundError(f"{p}: no caption file {txt.name} beside it (caption folders pair every "
                                    "image with a same-named .txt)")
    texts = [p.with_suffix(".txt") for p in images]
    check_inside(root, images + texts)
    for p in images + texts:
        check_size(p, p.stat().st_size, max_bytes)
    for p, txt in zip(images, texts):
        yield p.relative_to(root).with_suffix("").as_posix(), p, read_capped(txt, max_bytes).decode("utf-8").strip()


def load_caption_folder(root: str | Path, shape: tuple[int, ...], strict: bool = False
                        ) -> tuple[torch.Tensor, Captions, int]:
    """(N, C, H, W) images in [-1, 1] at `shape`, their captions, and how many undecodable images were skipped."""
    images, texts, skipped = [], [], 0
    for key, path, text in caption_pairs(root):
        try:
            images.append(decode_image(path.read_bytes(), shape))
        except UndecodableImage as err:
            if strict:
                raise UndecodableImage(f"{root}: {key}: cannot decode image ({err})") from None
            skipped += 1
            continue
        texts.append(text)
    if not images:
        raise FileNotFoundError(f"data.path {root}: no readable images")
    return torch.stack(images), Captions(texts), skipped


def synthetic_captions(count: int) -> Captions:
    """Deterministic placeholder captions for synthetic data (run.smoke of text-to-image recipes)."""
    words = ["a photo of", "a painting of", "a drawing of"]
    things = ["a cat", "a dog", "a house", "a tree", "the sea"]
    return Captions(f"{words[i % 3]} {things[(i // 3) % 5]} {i}" for i in range(count))
