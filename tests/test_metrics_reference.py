"""Reference statistics: our .npz round trip, the EDM and ADM layouts, image arrays, extractors by name."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from distill.evaluation.metrics.extractors import build_extractor
from distill.evaluation.metrics.reference import check_compatible, load_stats, save_stats


def stats(d=6, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((d, d))
    return rng.standard_normal(d), a @ a.T


def test_round_trip_of_our_layout(tmp_path):
    mu, sigma = stats()
    pix = stats(4, 1)
    path = save_stats(tmp_path / "ref.npz", mu, sigma, features="pixel", description="1000 samples", pixel=pix)
    ref = load_stats(path)
    assert ref.layout == "distill" and ref.features == "pixel" and ref.description == "1000 samples"
    np.testing.assert_array_equal(ref.mu, mu)
    np.testing.assert_array_equal(ref.sigma, sigma)
    np.testing.assert_array_equal(ref.pixel[1], pix[1])
    assert ref.mu.dtype == np.float64


def test_edm_layout(tmp_path):
    mu, sigma = stats(2048 // 64)
    np.savez(tmp_path / "cifar10-32x32.npz", mu=mu.astype(np.float32), sigma=sigma)  # EDM's fid.py ref
    ref = load_stats(tmp_path / "cifar10-32x32.npz")
    assert ref.layout == "edm" and ref.features is None and ref.mu.dtype == np.float64
    np.testing.assert_allclose(ref.mu, mu, rtol=1e-6)


def test_adm_layout(tmp_path):
    mu, sigma = stats()
    imgs = np.zeros((3, 8, 8, 3), np.uint8)
    np.savez(tmp_path / "VIRTUAL_x.npz", arr_0=imgs, mu=mu, sigma=sigma, mu_s=mu[:2], sigma_s=sigma[:2, :2])
    ref = load_stats(tmp_path / "VIRTUAL_x.npz")
    assert ref.layout == "adm"
    np.testing.assert_array_equal(ref.sigma, sigma)  # pool features, not the spatial mu_s/sigma_s


def test_image_array_layout(tmp_path):
    imgs = np.random.default_rng(0).integers(0, 256, (10, 8, 8, 1), dtype=np.uint8)
    np.savez(tmp_path / "samples.npz", arr_0=imgs)  # as `distill sample --out x.npz` writes
    ref = load_stats(tmp_path / "samples.npz")
    assert ref.layout == "images" and ref.images.shape == (10, 1, 8, 8)
    assert ref.images.min() >= -1 and ref.images.max() <= 1
    assert torch.equal(((ref.images + 1) * 127.5).round().permute(0, 2, 3, 1).to(torch.uint8),
                       torch.from_numpy(imgs))  # the same pixels, mapped linearly to [-1, 1]


def test_bad_files_are_refused_with_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        load_stats(tmp_path / "missing.npz")
    np.savez(tmp_path / "objects.npz", mu=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="objects.npz"):  # allow_pickle=False: never unpickled
        load_stats(tmp_path / "objects.npz")
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(ValueError, match="expected keys mu and sigma"):
        load_stats(tmp_path / "other.npz")
    mu, sigma = stats()
    np.savez(tmp_path / "bad.npz", mu=mu, sigma=sigma[:3])
    with pytest.raises(ValueError, match="do not describe one Gaussian"):
        load_stats(tmp_path / "bad.npz")


def test_feature_space_mismatch_is_refused(tmp_path):
    mu, sigma = stats()
    ref = load_stats(save_stats(tmp_path / "r.npz", mu, sigma, features="pixel", description=""))
    with pytest.raises(ValueError, match="6-d"):
        check_compatible(ref, "digits", 64, "r.npz")
    with pytest.raises(ValueError, match="'pixel' features"):
        check_compatible(ref, "digits", 6, "r.npz")
    check_compatible(ref, "pixel", 6, "r.npz")


class Halves(torch.nn.Module):
    def forward(self, x):
        return x.flatten(1)[:, :2] * 0.5


HALVES = Halves()


def test_extractor_by_dotted_path_and_choices():
    ext = build_extractor(f"{__name__}:Halves", (1, 8, 8))  # a class: instantiated with no arguments
    assert ext(torch.ones(3, 1, 8, 8)).tolist() == [[0.5, 0.5]] * 3
    ext = build_extractor(f"{__name__}:HALVES", (2,))
    assert ext.module.net is HALVES and ext.num_features == 2  # an instance: used as it is, its width probed
    assert build_extractor("auto", (3, 32, 32)).name == "pixel"  # no Inception file
    with pytest.raises(ValueError, match="cannot import"):
        build_extractor("no_such_module_x:thing", (2,))
    with pytest.raises(ValueError, match="unknown feature extractor"):
        build_extractor("lpips", (2,))
    with pytest.raises(ValueError, match="8x8 grey"):
        build_extractor("digits", (3, 32, 32))
