"""In-memory image sources: folders (class = subfolder), EDM dataset zips (dataset.json labels), patches of
scikit-learn's sample photos; all resized to the teacher's shape, in [-1, 1]."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest
import torch

from distill.data.builtin import sample_image_patches
from distill.data.folders import load_images
from distill.data.images import UndecodableImage


def _png(value: int, size: int = 6) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((size, size, 3), value, np.uint8)).save(buf, format="png")
    return buf.getvalue()


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "images"
    for c, name in enumerate(["cat", "dog", "emu"]):
        (root / name).mkdir(parents=True)
        for i in range(3):
            (root / name / f"img.{i}.png").write_bytes(_png(40 * c + i))
    return root


def test_folder_labels_come_from_sorted_subfolders(folder):
    images, labels, skipped = load_images(folder, (3, 4, 4))
    assert images.shape == (9, 3, 4, 4) and skipped == 0
    assert labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert images.min() >= -1 and images.max() <= 1
    assert torch.allclose(images[3, 0, 0, 0], torch.tensor(40 / 127.5 - 1))


def test_flat_folder_has_no_labels(tmp_path):
    for i in range(2):
        (tmp_path / f"{i}.png").write_bytes(_png(i))
    images, labels, _ = load_images(tmp_path, (1, 6, 6))
    assert images.shape == (2, 1, 6, 6) and labels is None


def test_edm_zip_reads_dataset_json_labels(tmp_path):
    path = tmp_path / "data.zip"
    with zipfile.ZipFile(path, "w") as zf:
        names = [f"00000/img{i:08d}.png" for i in range(4)]
        for i, n in enumerate(names):
            zf.writestr(n, _png(10 * i))
        zf.writestr("dataset.json", json.dumps({"labels": [[n, 3 - i] for i, n in enumerate(names)]}))
    images, labels, _ = load_images(path, (3, 6, 6))
    assert images.shape == (4, 3, 6, 6) and labels.tolist() == [3, 2, 1, 0]


def test_undecodable_file_skip_or_strict(folder):
    (folder / "cat" / "broken.png").write_bytes(b"not an image")
    _, labels, skipped = load_images(folder, (3, 4, 4))
    assert skipped == 1 and len(labels) == 9
    with pytest.raises(UndecodableImage, match="broken.png"):
        load_images(folder, (3, 4, 4), strict=True)


def test_patches_from_sklearn_sample_images():
    x = sample_image_patches((3, 16, 16), 6, torch.Generator().manual_seed(0))
    y = sample_image_patches((3, 16, 16), 6, torch.Generator().manual_seed(0))
    assert x.shape == (6, 3, 16, 16) and torch.equal(x, y)
    assert x.min() >= -1 and x.max() <= 1 and x.std() > 0.05
    assert sample_image_patches((1, 8, 8), 2, torch.Generator().manual_seed(1)).shape == (2, 1, 8, 8)


def test_datamodule_serves_folder_with_xflip(folder):
    from types import SimpleNamespace

    from distill.config import resolve
    from distill.data import DistillDataModule

    cfg = resolve(None, ["data.name=folder", f"data.path={folder}", "data.xflip=true", "data.batch_size=4"])
    teacher = SimpleNamespace(image_shape=(3, 4, 4), num_classes=3)
    dm = DistillDataModule(cfg, teacher)
    assert dm.images.shape[0] == 18 and torch.equal(dm.images[9:], dm.images[:9].flip(-1))
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 4, 4) and y.min() >= 0
