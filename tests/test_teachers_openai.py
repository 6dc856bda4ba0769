"""OpenAI consistency-models teachers: weights-only state dicts, their time input, identical round trips."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch
from torch import nn

import teachers
from teachers.base import edm_scalings
from teachers.feeding import build_feeding
from teachers.networks import build_network
from teachers.openai_cm import OpenAIFeeding
from teachers.registry import TeacherSpecError

TINY = dict(arch=None, image_size=8, model_channels=32, num_res_blocks=1, channel_mult=[1, 2],
            attention_resolutions=[4], num_head_channels=16, use_scale_shift_norm=True, resblock_updown=True,
            num_classes=5)


def random_adm():
    torch.manual_seed(0)
    kw = {k: v for k, v in TINY.items() if k != "arch"}
    net = build_network("adm_unet", **kw)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))  # OpenAI zero-inits output convs; make every path count
    return net.eval()


def test_state_dict_round_trip_gives_identical_outputs(tmp_path):
    net = random_adm()
    path = tmp_path / "edm_tiny_ema.pt"
    torch.save(net.state_dict(), path)
    teacher = teachers.load({"name": "openai_cm", "path": str(path), **TINY})
    assert teacher.image_shape == (3, 8, 8) and teacher.num_classes == 5 and len(teacher.file_sha256) == 64
    x, sigma, labels = torch.randn(2, 3, 8, 8) * 4, torch.tensor([0.02, 30.0]), torch.tensor([1, 4])
    ref = OpenAIFeeding(0.5).denoise(net, x, sigma, labels)
    assert torch.equal(teacher.denoise(x, sigma, labels), ref)


class RecordingNet(nn.Module):
    def forward(self, x, t, cond=None):
        self.t = t
        return torch.ones_like(x)


def test_time_input_is_1000_quarter_log_sigma_and_scalings_are_edm():
    feeding, net = OpenAIFeeding(0.5), RecordingNet()
    x, sigma = torch.randn(2, 3, 4, 4), torch.tensor([0.002, 80.0])
    d = feeding.denoise(net, x, sigma)
    assert torch.allclose(net.t, 1000 * 0.25 * torch.log(sigma))  # their karras_diffusion.py
    c_skip, c_out, _, _ = edm_scalings(sigma, 0.5)
    assert torch.allclose(d, c_skip[:, None, None, None] * x + c_out[:, None, None, None])


def test_feeding_spec_rebuilds_the_same_feeding():
    spec = json.loads(json.dumps(OpenAIFeeding(0.5).spec()))
    assert isinstance(build_feeding(spec), OpenAIFeeding)


def test_conv1d_attention_weights_are_accepted(tmp_path):
    net = random_adm()
    state = {k: (v.squeeze(-1) if k.endswith(("qkv.weight", "proj_out.weight")) else v)
             for k, v in net.state_dict().items()}  # guided-diffusion stores 1x1 attention convs as Conv1d
    path = tmp_path / "conv1d.pt"
    torch.save(state, path)
    teacher = teachers.load({"name": "openai_cm", "path": str(path), **TINY})
    x = torch.randn(1, 3, 8, 8)
    assert torch.equal(teacher.denoise(x, 1.0, torch.tensor([2])), OpenAIFeeding(0.5).denoise(
        net, x, torch.tensor([1.0]), torch.tensor([2])))


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_pickled_code_is_refused_and_never_runs(tmp_path):
    marker, path = tmp_path / "pwned", tmp_path / "evil.pt"
    torch.save({"time_embed.0.weight": _Exploit(marker)}, path)
    with pytest.raises(TeacherSpecError, match="weights_only"):
        teachers.load({"name": "openai_cm", "path": str(path), "arch": "imagenet64"})
    assert not marker.exists()


def test_wrong_architecture_names_the_mismatch(tmp_path):
    path = tmp_path / "tiny.pt"
    torch.save(random_adm().state_dict(), path)
    with pytest.raises(TeacherSpecError, match="missing"):
        teachers.load({"name": "openai_cm", "path": str(path), **TINY, "num_res_blocks": 2})
    with pytest.raises(TeacherSpecError, match="arch"):
        teachers.load({"name": "openai_cm", "path": str(path), "arch": "lsun1024"})


def test_missing_file_and_smoke(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"edm_imagenet64_ema\.pt"):
        teachers.load({"name": "openai_cm", "path": str(tmp_path / "edm_imagenet64_ema.pt")})
    t = teachers.load({"name": "openai_cm", "arch": "imagenet64", "smoke": True})
    assert t.image_shape == (3, 64, 64) and t.num_classes == 1000
    out = t.denoise(torch.randn(1, 3, 64, 64), 5.0, torch.tensor([7]))
    assert out.shape == (1, 3, 64, 64) and math.isfinite(float(out.sum()))
