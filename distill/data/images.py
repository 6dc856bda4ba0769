"""Image bytes -> a (C, H, W) float tensor in [-1, 1] at the teacher's resolution (DESIGN.md, "Images").

Shared by image folders, EDM zips and webdataset shards, so every source yields the same pixels.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import torch

IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "webp", "bmp", "ppm", "tif", "tiff")
# A decompression bomb (a small file that claims 20000 x 20000 pixels) would take gigabytes to decode. The
# largest images anything here reads are data set originals (LSUN, ImageNet: under 2 Mpx) and edit inputs at
# the student's size; 64 Mpx (8192 x 8192) leaves room and stays below PIL's own warning (89 Mpx).
MAX_PIXELS = 1 << 26


class UndecodableImage(ValueError):
    pass


def open_image(fp, max_pixels: int = MAX_PIXELS):
    """PIL.Image.open (lazy: the header only), refusing images over `max_pixels` before any decoding.
    Raises UndecodableImage for those and for anything PIL cannot identify."""
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(fp)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
            raise UndecodableImage(f"refused as a decompression bomb ({err})") from None
        except Exception as err:  # noqa: BLE001 - untrusted bytes: any failure means "not an image we read"
            raise UndecodableImage(f"{type(err).__name__}: {err}") from None
    width, height = img.size
    if width * height > max_pixels:
        img.close()
        raise UndecodableImage(f"{width}x{height} pixels, more than the {max_pixels} an input may have "
                               "(a decompression bomb?); downscale it first")
    return img


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
    if len(shape) != 3:
        raise ValueError(f"image data needs a teacher with (C, H, W) images, not shape {tuple(shape)}")
    with open_image(io.BytesIO(data)) as img:
        try:
            img.load()
            return to_tensor(img, shape)
        except Exception as err:  # noqa: BLE001 - corrupt data raises OSError, SyntaxError, EOFError, struct.error...
            raise UndecodableImage(f"{type(err).__name__}: {err}") from None


def decode_label(data: bytes | str | int | None) -> int:
    """webdataset `.cls` / dataset.json labels: an integer, as text or a number."""
    if data is None:
        return -1
    if isinstance(data, (bytes, bytearray)):
        data = data.decode().strip()
    return int(data)
