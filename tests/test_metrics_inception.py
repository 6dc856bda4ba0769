"""The Inception FID network's plumbing, with random weights (nothing is downloaded): the state-dict layout
of pytorch-fid's file, the TF1 resize, 2048-d features, and a clear error when the file is missing."""

from __future__ import annotations

import pytest
import torch

from distill.evaluation.metrics.inception import (
    WEIGHTS_FILE,
    FIDInceptionV3,
    InceptionWeightsMissing,
    load_inception,
    tf1_resize_bilinear,
)


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    """Random weights saved as a plain state dict, as pytorch-fid's file is (BatchNorm stats made non-trivial)."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = FIDInceptionV3()
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    state = {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path_factory.mktemp("inception") / WEIGHTS_FILE
    torch.save(state, path)
    return path


def test_layout_and_unchanged_blocks_match_torchvision_inception_v3():
    """pytorch-fid loads the file into torchvision's inception_v3(num_classes=1008, aux_logits=False):
    the same names and shapes here mean the file loads strictly. Blocks that the TF1 graph does not alter
    (stem, B, D) compute what torchvision's compute on the same weights."""
    from torchvision.models import inception_v3

    torch.manual_seed(1)
    tv = inception_v3(weights=None, aux_logits=False, init_weights=False, num_classes=1008).eval()
    ours = FIDInceptionV3().eval()
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == \
        {k: tuple(v.shape) for k, v in tv.state_dict().items()}
    ours.load_state_dict(tv.state_dict())
    with torch.no_grad():
        x = torch.randn(1, 3, 35, 35)
        stem = lambda m: m.Conv2d_2b_3x3(m.Conv2d_2a_3x3(m.Conv2d_1a_3x3(x)))
        assert torch.allclose(stem(ours), stem(tv))
        h = torch.randn(1, 288, 9, 9)
        assert torch.allclose(ours.Mixed_6a(h), tv.Mixed_6a(h), atol=1e-6)
        h = torch.randn(1, 768, 9, 9)
        assert torch.allclose(ours.Mixed_7a(h), tv.Mixed_7a(h), atol=1e-6)


def test_tf1_resize_has_no_half_pixel_offset():
    x = torch.tensor([[[[0.0, 10.0]]]]).expand(1, 1, 2, 2)
    y = tf1_resize_bilinear(x, 4)
    # source columns 0, 0.5, 1, 1.5 -> clamped at the last pixel (torch's interpolate would give 0, 2.5, ...)
    assert y[0, 0, 0].tolist() == [0.0, 5.0, 10.0, 10.0]
    same = torch.randn(2, 3, 7, 7)
    assert torch.equal(tf1_resize_bilinear(same, 7), same)


def test_loads_with_weights_only_and_gives_2048_features(weights_file):
    net = load_inception(weights_file)
    assert not net.training
    grey = torch.rand(1, 1, 8, 8) * 2 - 1
    with torch.no_grad():
        pre = net.preprocess(grey)
        assert pre.shape == (1, 3, 299, 299) and pre.min() >= -1 and pre.max() <= 127 / 128
        assert torch.equal(pre, net.preprocess(grey.expand(-1, 3, -1, -1)))  # grey = three equal channels
        feats = net(grey)
    assert feats.shape == (1, 2048) and torch.isfinite(feats).all() and (feats >= 0).all()  # post-ReLU pool


def test_missing_file_names_the_expected_file(tmp_path):
    with pytest.raises(InceptionWeightsMissing) as err:
        load_inception(tmp_path / "nope.pth")
    msg = str(err.value)
    assert WEIGHTS_FILE in msg and "nope.pth" in msg and "download it yourself" in msg
    assert isinstance(err.value, FileNotFoundError)  # the CLI turns it into exit code 2


def test_wrong_state_dict_is_refused(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match="not the FID Inception state dict"):
        load_inception(path)


def test_extractor_by_name(weights_file):
    from distill.evaluation.metrics.extractors import build_extractor

    ext = build_extractor("auto", (3, 16, 16), str(weights_file))  # auto picks Inception when given the file
    assert ext.name.startswith("inception-v3") and isinstance(ext.module, FIDInceptionV3)
    with pytest.raises(ValueError, match="need images"):
        build_extractor("inception", (2,), str(weights_file))
