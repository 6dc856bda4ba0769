"""DDPM teachers: the VP -> EDM change of variables against references (diffusers' own scheduler, the formula)."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from torch import nn

import teachers
from teachers.feeding import build_feeding
from teachers.networks import build_network
from teachers.networks.diffusers_unet import DiffusersUNet
from teachers.registry import TeacherSpecError
from teachers.vp import VPTeacher, beta_table, sigmas_from_betas

LINEAR = dict(schedule="linear", num_steps=1000, beta_start=1e-4, beta_end=0.02)


class ToyEps(nn.Module):
    """A deterministic eps-network with a non-trivial dependence on x and t."""

    def forward(self, x, t, cond=None):
        return torch.tanh(x.flip(-1) * 0.7 + (t / 1000.0)[:, None, None, None]) + 0.1 * x


def tiny_unet2d(num_class_embeds=None):
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    return diffusers.UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(16, 16),
                                 layers_per_block=1, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                                 up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=8,
                                 num_class_embeds=num_class_embeds).eval()


def test_sigma_table_of_google_ddpm_cifar10():
    sigmas = sigmas_from_betas(beta_table(**LINEAR))
    assert sigmas[0] == pytest.approx(0.0100, abs=5e-5) and sigmas[-1] == pytest.approx(157.4, abs=0.05)
    assert np.all(np.diff(sigmas) > 0)


def test_eps_net_denoiser_on_the_grid_is_the_formula():
    teacher = VPTeacher(ToyEps(), image_shape=(3, 4, 4), schedule=LINEAR)
    sig = teacher.feeding.sigmas
    x = torch.randn(4, 3, 4, 4, dtype=torch.float64) * 3
    steps = [0, 17, 500, 999]
    s = torch.tensor([sig[i] for i in steps], dtype=torch.float64)
    t = torch.tensor(steps, dtype=torch.float64)
    s4 = s[:, None, None, None]
    want = x - s4 * ToyEps()(x / (1 + s4**2).sqrt(), t)  # D = x - sigma eps(x / sqrt(1 + sigma^2), t)
    assert torch.allclose(teacher.denoise(x, s), want, atol=1e-12)


def test_timestep_interpolates_in_log_sigma_and_round_sigma_snaps():
    teacher = VPTeacher(ToyEps(), image_shape=(3, 4, 4), schedule=LINEAR)
    sig = teacher.feeding.sigmas
    mid = torch.tensor([np.sqrt(sig[10] * sig[11]), sig[0] / 2, sig[-1] * 2], dtype=torch.float64)
    assert torch.allclose(teacher.feeding.timestep(mid), torch.tensor([10.5, 0.0, 999.0], dtype=torch.float64))
    assert teacher.round_sigma(float(sig[10] * 1.001)) == pytest.approx(sig[10])
    snapped = teacher.round_sigma(torch.tensor([sig[3] * 0.999, 1.0], dtype=torch.float32))
    assert snapped.dtype == torch.float32 and snapped[0] == pytest.approx(sig[3], rel=1e-6)
    assert (teacher.sigma_min, teacher.sigma_max) == (sig[0], sig[-1])


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("schedule", ["linear", "squaredcos_cap_v2"])
def test_matches_diffusers_scheduler_x0_prediction(prediction, schedule):
    diffusers = pytest.importorskip("diffusers")
    unet = tiny_unet2d()
    sched = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule=schedule, prediction_type=prediction,
                                    clip_sample=False)
    # float64 throughout, so that what is measured is the change of variables, not float32 cancellation in
    # x - sigma * eps at sigma ~ 2e4 (the cosine schedule's last step).
    unet = unet.double()
    teacher = VPTeacher(DiffusersUNet(dict(unet.config), module=unet), image_shape=(3, 8, 8),
                        prediction=prediction, schedule=dict(schedule=schedule, num_steps=1000))
    g = torch.Generator().manual_seed(0)
    worst = 0.0
    for t in [0, 1, 10, 250, 500, 999]:
        x0 = torch.randn(2, 3, 8, 8, generator=g, dtype=torch.float64)
        xt = sched.add_noise(x0, torch.randn(2, 3, 8, 8, generator=g, dtype=torch.float64), torch.tensor([t]))
        with torch.no_grad():
            ref = sched.step(unet(xt, t).sample, t, xt).pred_original_sample
        abar = sched.alphas_cumprod[t].double()
        sigma = ((1 - abar) / abar).sqrt()
        d = teacher.denoise(xt / abar.sqrt(), sigma)  # VP sample -> EDM x = x_vp / sqrt(abar)
        worst = max(worst, float(((d - ref).abs() / ref.abs().clamp(min=1)).max()))
    print(f"{prediction}/{schedule}: worst error relative to max(1, |x0|) = {worst:.2e}")
    assert worst < 1e-4, worst


@pytest.mark.parametrize("layout", ["flat", "pipeline"])
def test_diffusers_folders_load_offline_to_identical_outputs(tmp_path, layout):
    diffusers = pytest.importorskip("diffusers")
    unet = tiny_unet2d(num_class_embeds=3)
    sched = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", prediction_type="v_prediction",
                                    clip_sample=True)
    unet_dir = tmp_path if layout == "flat" else tmp_path / "unet"
    unet.save_pretrained(unet_dir)
    sched.save_pretrained(tmp_path if layout == "flat" else tmp_path / "scheduler")
    teacher = teachers.load({"name": "ddpm", "path": str(tmp_path)})
    assert teacher.feeding.prediction == "v_prediction" and teacher.num_classes == 3
    assert teacher.image_shape == (3, 8, 8) and len(teacher.file_sha256) == 64
    x, labels = torch.randn(2, 3, 8, 8) * 10, torch.tensor([0, 2])
    sigma = torch.tensor([0.5, 12.0])
    ref = VPTeacher(build_network("diffusers_unet2d", config=dict(unet.config)), image_shape=(3, 8, 8),
                    prediction="v_prediction", schedule=LINEAR, num_classes=3)
    ref.backbone.unet.load_state_dict(unet.state_dict())
    out = teacher.denoise(x, sigma, labels)
    assert torch.equal(out, ref.denoise(x, sigma, labels))
    assert out.abs().max() > 1  # clip_sample=True in the file is ignored: the denoiser is unclipped


def test_student_copy_is_rebuilt_from_json_specs():
    pytest.importorskip("diffusers")
    teacher = teachers.load({"name": "ddpm", "smoke": True, "image_shape": [3, 8, 8], "prediction_type": "epsilon"})
    specs = json.loads(json.dumps({"net": teacher.backbone.build_spec, "feeding": teacher.feeding.spec()}))
    net = build_network(**specs["net"])
    net.load_state_dict(teacher.backbone.state_dict())
    feeding = build_feeding(specs["feeding"])
    x, sigma = torch.randn(2, 3, 8, 8), torch.tensor([0.2, 30.0])
    assert torch.allclose(feeding.denoise(net.eval(), x, sigma), teacher.denoise(x, sigma))
    # F is EDM's: c_skip x + c_out F reproduces the denoiser (what a consistency student builds on).
    from teachers.base import BackboneFeeding
    edm_d = BackboneFeeding.denoise(feeding, net, x, sigma)
    assert torch.allclose(edm_d, teacher.denoise(x, sigma), atol=1e-4)


def test_custom_table_feeding_spec_round_trips():
    betas = np.linspace(1e-3, 0.05, 50)
    teacher = VPTeacher(ToyEps(), image_shape=(3, 4, 4), betas=betas, prediction="sample")
    spec = json.loads(json.dumps(teacher.feeding.spec()))
    assert np.allclose(build_feeding(spec).sigmas, sigmas_from_betas(betas))


def test_missing_diffusers_gives_install_hint(monkeypatch, tmp_path):
    (tmp_path / "config.json").write_text("{}")
    monkeypatch.setitem(sys.modules, "diffusers", None)
    with pytest.raises(TeacherSpecError, match="pip install diffusers"):
        teachers.load({"name": "ddpm", "path": str(tmp_path)})


def test_missing_folder_names_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere.*UNet2DModel folder"):
        teachers.load({"name": "ddpm", "path": str(tmp_path / "nowhere")})


def test_google_ddpm_cifar10_unet_parameter_count():
    diffusers = pytest.importorskip("diffusers")
    config = dict(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(128, 256, 256, 256),
                  layers_per_block=2, down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
                  up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"), norm_eps=1e-6,
                  downsample_padding=0, flip_sin_to_cos=False, freq_shift=1)
    with torch.device("meta"):
        unet = diffusers.UNet2DModel(**config)
    assert round(sum(p.numel() for p in unet.parameters()) / 1e6, 2) == 35.75


@pytest.mark.parametrize("broken", ["scheduler_config.json", "diffusion_pytorch_model.safetensors"])
def test_a_broken_file_in_the_folder_is_a_refusal_naming_it(tmp_path, broken):
    tiny_unet2d().save_pretrained(tmp_path)
    (tmp_path / broken).write_text("{ not json, not tensors")
    with pytest.raises(TeacherSpecError, match=str(tmp_path)):
        teachers.load({"name": "ddpm", "path": str(tmp_path)})
