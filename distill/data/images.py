"""Image bytes -> a (C, H, W) float tensor in [-1, 1] at the teacher's resolution (DESIGN.md, "Images").

Shared by image folders, EDM zips and webdataset shards, so every source yields the same pixels.
"""

from __future__ import annotations

import io

import numpy as np
import torch

IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "webp", "bmp", "ppm", "tif", "tiff")


class UndecodableImage(ValueError):
    pass


def to_tensor(img, shape: tuple[int, ...]) -> torch.Tensor:
    """A PIL image -> (C, H, W) in [-1, 1]: converted to L or RGB, centre-cropped to the aspect ratio
    of `shape` and resized (bicubic) when its size differs."""
    from PIL import Image

    channels, height, width = shape
    img = img.convert("L" if channels == 1 else "RGB")
    if img.size != (width, height):
        w, h = img.size
        scale = min(w / width, h / height)
        cw, ch = round(width * scale), round(height * scale)
        left, top = (w - cw) // 2, (h - ch) // 2
        img = img.crop((left, top, left + cw, top + ch)).resize((width, height), Image.BICUBIC)
    arr = np.asarray(img, dtype=np.uint8)
    arr = arr[:, :, None] if arr.ndim == 2 else arr
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float() / 127.5 - 1.0


def decode_image(data: bytes, shape: tuple[int, ...]) -> torch.Tensor:
    from PIL import Image, UnidentifiedImageError

    if len(shape) != 3:
        raise ValueError(f"image data needs a teacher with (C, H, W) images, not shape {tuple(shape)}")
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            return to_tensor(img, shape)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise UndecodableImage(f"{type(err).__name__}: {err}") from None


def decode_label(data: bytes | str | int | None) -> int:
    """webdataset `.cls` / dataset.json labels: an integer, as text or a number."""
    if data is None:
        return -1
    if isinstance(data, (bytes, bytearray)):
        data = data.decode().strip()
    return int(data)
