"""Distances and weightings: per-sample pseudo-Huber (iCT), LPIPS plumbing from local files."""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf

from distill.methods.losses import DISTANCES, build_distance, pseudo_huber, pseudo_huber_c, weighting
from distill.methods.lpips import CHANNELS, LPIPS, vgg16_features


def test_pseudo_huber_is_per_sample_formula_not_elementwise():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, 3, 4, 4, generator=g), torch.randn(5, 3, 4, 4, generator=g)
    c = 0.3
    got = pseudo_huber(a, b, c=c)
    for i in range(5):  # iCT sec. 3.3: sqrt(||a - b||^2 + c^2) - c over the whole sample
        norm2 = float(((a[i] - b[i]) ** 2).sum())
        assert got[i].item() == pytest.approx(math.sqrt(norm2 + c * c) - c, rel=1e-6)
    elementwise = (((a - b) ** 2 + c * c).sqrt() - c).flatten(1).sum(1)
    assert not torch.allclose(got, elementwise, rtol=1e-2)


def test_pseudo_huber_default_c_is_ict_constant():
    a, b = torch.zeros(2, 3, 8, 8), torch.full((2, 3, 8, 8), 0.01)
    c = 0.00054 * math.sqrt(3 * 8 * 8)
    assert pseudo_huber_c(192) == pytest.approx(c)
    expected = math.sqrt(192 * 0.01**2 + c * c) - c
    assert torch.allclose(pseudo_huber(a, b), torch.full((2,), expected, dtype=torch.float32), rtol=1e-5)


def test_distances_return_one_value_per_sample():
    a, b = torch.randn(4, 2), torch.randn(4, 2)
    for name, fn in DISTANCES.items():
        assert fn(a, b).shape == (4,), name
    assert torch.allclose(DISTANCES["l2"](a, b), ((a - b) ** 2).mean(1))
    assert torch.allclose(DISTANCES["l1"](a, b), (a - b).abs().mean(1))


def test_weightings():
    s_cur, s_next = torch.tensor([0.5, 2.0]), torch.tensor([1.0, 3.0])
    assert torch.equal(weighting("uniform", s_next, s_cur), torch.ones(2))
    assert torch.allclose(weighting("snr", s_next, s_cur), torch.tensor([4.0, 0.25]))
    assert torch.allclose(weighting("inverse_delta", s_next, s_cur), torch.tensor([2.0, 1.0]))
    sd = 0.5
    assert torch.allclose(weighting("karras", s_next, s_cur, sd), (s_cur**2 + sd**2) / (s_cur * sd) ** 2)
    with pytest.raises(ValueError, match="inverse_delta"):
        weighting("nope", s_next, s_cur)


# -- LPIPS ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lpips_files(tmp_path_factory):
    """A random VGG16 in torchvision's key format and random heads in the lpips package's format."""
    tmp = tmp_path_factory.mktemp("lpips")
    torch.manual_seed(0)
    features = vgg16_features(avg_pool=False)
    backbone = tmp / "vgg16.pth"
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, backbone)
    heads = tmp / "vgg_heads.pth"
    torch.save({f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate(CHANNELS)}, heads)
    return backbone, heads


def loss_cfg(**kw):
    base = {"name": "lpips", "c": None, "lpips_backbone_path": None, "lpips_heads_path": None,
            "lpips_avg_pool": True, "lpips_resize": 224}
    return OmegaConf.create({**base, **kw})


def test_lpips_from_files_is_a_per_sample_distance(lpips_files):
    backbone, heads = lpips_files
    d = build_distance(loss_cfg(lpips_backbone_path=str(backbone), lpips_heads_path=str(heads),
                                lpips_resize=0))
    assert isinstance(d, LPIPS)
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in d.features.modules())  # CM paper: avg pool
    g = torch.Generator().manual_seed(1)
    a = torch.rand(3, 3, 16, 16, generator=g) * 2 - 1
    b = torch.rand(3, 3, 16, 16, generator=g) * 2 - 1
    assert torch.allclose(d(a, a), torch.zeros(3), atol=1e-6)
    a.requires_grad_(True)
    out = d(a, b)
    assert out.shape == (3,) and bool((out > 0).all())
    out.sum().backward()
    assert a.grad is not None and a.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in d.parameters())  # frozen


def test_lpips_upsamples_small_images_and_repeats_grey(lpips_files):
    backbone, heads = lpips_files
    d = LPIPS.from_files(backbone, heads, avg_pool=True, resize=224)
    x = torch.zeros(2, 1, 8, 8)
    assert d._prepare(x).shape == (2, 3, 224, 224)
    no_resize = LPIPS.from_files(backbone, heads, resize=0)
    assert no_resize._prepare(torch.zeros(2, 3, 32, 32)).shape == (2, 3, 32, 32)
    assert no_resize._prepare(x).shape == (2, 3, 16, 16)  # the least VGG's four poolings need


def test_lpips_matches_the_lpips_package(lpips_files):
    """Max pooling and no upsampling: the original LPIPS, as the lpips package computes it."""
    lpips = pytest.importorskip("lpips")
    backbone, heads = lpips_files
    ours = LPIPS.from_files(backbone, heads, avg_pool=False, resize=0)
    with pytest.warns(UserWarning):  # torchvision's deprecation note for `pretrained`; no download
        ref = lpips.LPIPS(pretrained=True, net="vgg", pnet_rand=True, model_path=str(heads), verbose=False)
    for sl in (ref.net.slice1, ref.net.slice2, ref.net.slice3, ref.net.slice4, ref.net.slice5):
        for idx, module in sl.named_children():
            module.load_state_dict(ours.features[int(idx)].state_dict())
    g = torch.Generator().manual_seed(2)
    a, b = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1, torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(ours(a, b), ref(a, b).flatten(), rtol=1e-4, atol=1e-6)


def test_lpips_missing_files_name_the_file(tmp_path, lpips_files):
    backbone, heads = lpips_files
    missing = tmp_path / "nope" / "vgg16-397923af.pth"
    with pytest.raises(FileNotFoundError, match="lpips_backbone_path.*vgg16-397923af.pth"):
        build_distance(loss_cfg(lpips_backbone_path=str(missing)))
    with pytest.raises(FileNotFoundError, match="lpips_heads_path.*heads.pth"):
        LPIPS.from_files(backbone, tmp_path / "heads.pth")
    with pytest.raises(FileNotFoundError, match="lpips_backbone_path is not set"):
        build_distance(loss_cfg())


def test_lpips_smoke_needs_no_files():
    d = build_distance(loss_cfg(), smoke=True)
    a = torch.zeros(2, 3, 8, 8)
    assert d(a, a + 0.5).shape == (2,)
