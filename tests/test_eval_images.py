"""`distill eval --images FOLDER`: FID of an image folder by clean-fid's "clean" protocol with the weights-only
Inception (random weights from conftest), against another folder or a statistics file; every missing or
wrong file exits 2 before anything is written."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from distill.cli import main

pytestmark = pytest.mark.filterwarnings("ignore::scipy.linalg.LinAlgWarning")  # 4 images in 2048-d


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Two folders of four 16x16 RGB PNGs with different brightness; one holds a subfolder (read too)."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for name, mean in (("a", 110), ("b", 160)):
        for i in range(4):
            folder = root / name / ("sub" if i == 3 else "")
            folder.mkdir(parents=True, exist_ok=True)
            img = np.clip(rng.normal(mean, 40, (16, 16, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(folder / f"{i}.png")
    return root / "a", root / "b"


def clean_resize(path) -> torch.Tensor:
    """clean-fid's "clean" resize written from its description: each RGB channel as a float image, PIL bicubic
    to 299x299, no quantisation; (3, 299, 299) in [0, 255]."""
    rgb = np.asarray(Image.open(path).convert("RGB"), np.float32)
    chans = [np.asarray(Image.fromarray(rgb[..., c], mode="F").resize((299, 299), Image.BICUBIC)).clip(0, 255)
             for c in range(3)]
    return torch.from_numpy(np.stack(chans))


def test_folder_against_folder_and_against_its_statistics(folders, inception_file, tmp_path, capsys):
    from distill.evaluation.metrics.folders import clean_inception, folder_features
    from distill.evaluation.metrics.reference import save_stats

    a, b = folders
    out = tmp_path / "fid.json"
    assert main(["eval", "--images", str(a), "--ref-images", str(b), "--inception", str(inception_file),
                 "--out", str(out)]) == 0
    got = json.loads(out.read_text())
    assert got["num_images"] == 4 and got["features"].startswith("inception-v3") and "clean" in got["protocol"]
    assert np.isfinite(got["fid"]) and got["fid"] > 1.0
    assert f"FID {got['fid']:.4f}" in capsys.readouterr().out

    # The features are clean-fid's resize followed by the network: the same as resizing by hand.
    model = clean_inception(inception_file)
    feats = folder_features(b, model)
    files = sorted(b.rglob("*.png"))
    with torch.no_grad():
        by_hand = model(torch.stack([clean_resize(f) for f in files[:2]])).numpy()
    np.testing.assert_allclose(feats[:2], by_hand, rtol=1e-4, atol=1e-4)

    # b's statistics as a file (our layout, the clean protocol named) give the same number as the folder.
    from distill.evaluation.metrics.extractors import INCEPTION_CLEAN

    stats = save_stats(tmp_path / "b.npz", feats.mean(0), np.cov(feats, rowvar=False), features=INCEPTION_CLEAN,
                       description="4 images of b")
    assert main(["eval", "--images", str(a), "--ref", str(stats), "--inception", str(inception_file),
                 "--out", str(tmp_path / "fid2.json")]) == 0
    assert json.loads((tmp_path / "fid2.json").read_text())["fid"] == pytest.approx(got["fid"], rel=1e-5)


def test_missing_or_wrong_files_exit_2(folders, inception_file, tmp_path, capsys):
    from distill.evaluation.metrics.reference import save_stats

    a, b = folders
    out = tmp_path / "fid.json"
    inc = ["--inception", str(inception_file), "--out", str(out)]
    cases = [
        (["--images", str(tmp_path / "nope"), "--ref-images", str(b), *inc], "nope"),
        (["--images", str(a), "--ref-images", str(tmp_path / "gone"), *inc], "gone"),
        (["--images", str(a), "--ref", str(tmp_path / "none.npz"), *inc], "none.npz"),
        (["--images", str(a), *inc], "exactly one reference"),
        (["--images", str(a), "--ref", str(tmp_path / "x.npz"), "--ref-images", str(b), *inc], "exactly one"),
        (["--images", str(a), "--ref-images", str(b), "--inception", str(tmp_path / "w.pth"), "--out", str(out)],
         "w.pth"),
        (["--images", str(tmp_path), "--ref-images", str(b), *inc], "FID needs at least 2"),
    ]
    np.savez(tmp_path / "imgs.npz", arr_0=np.zeros((3, 8, 8, 3), np.uint8))
    cases.append((["--images", str(a), "--ref", str(tmp_path / "imgs.npz"), *inc], "--ref-images FOLDER"))
    small = save_stats(tmp_path / "digits.npz", np.zeros(64), np.eye(64), features="digits", description="d")
    cases.append((["--images", str(a), "--ref", str(small), *inc], "64-d"))
    for args, needle in cases:
        assert main(["eval", *args]) == 2, args
        assert needle in capsys.readouterr().err, (args, needle)
    assert not out.exists()
