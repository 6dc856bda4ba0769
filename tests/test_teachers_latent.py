"""The diffusers_latent teacher against diffusers itself: x0 of its scheduler, guided DDIM, prompt encoding."""

from __future__ import annotations

import pytest
import torch
from _latent import pipeline_folder

import teachers
from teachers.sd_components import tiny_components


def vp_to_edm(scheduler, t: torch.Tensor):
    abar = scheduler.alphas_cumprod[t].double()
    return abar.sqrt(), ((1 - abar) / abar).sqrt()  # x_vp = sqrt(abar) x, sigma


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_denoiser_is_the_schedulers_x0_prediction(prediction):
    from diffusers import DDPMScheduler

    from teachers.diffusers_latent import LatentTextTeacher

    parts = tiny_components("sd", prediction)
    teacher = LatentTextTeacher(parts, scale=1.0)
    scheduler = DDPMScheduler.from_config(parts.scheduler)
    cond = teacher.encode_text(["a red cat", "two dogs"])
    for t in (0, 1, 250, 999):
        ts = torch.tensor([t, t])
        x_vp = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(t))
        out = parts.unet(x_vp, ts, encoder_hidden_states=cond.text).sample
        ref = torch.cat([scheduler.step(out[i:i + 1], t, x_vp[i:i + 1]).pred_original_sample for i in range(2)])
        scale, sigma = vp_to_edm(scheduler, ts)
        ours = teacher.denoise(x_vp.double() / scale.view(-1, 1, 1, 1), sigma, cond)  # w = 1: no guidance
        assert (ours.float() - ref).abs().max() <= 1e-5 * (1 + ref.abs().max())


def test_guided_ddim_step_is_the_lcm_scripts_step():
    """Euler over the guided denoiser == diffusers' LCM scripts: x_prev = sqrt(abar') x0_w + sqrt(1 - abar') eps_w,
    x0_w = c + w' (c - u), eps likewise, with their w' = our w - 1 and u the empty prompt."""
    from diffusers import DDPMScheduler

    from distill.math.solvers import euler_step
    from teachers.diffusers_latent import LatentTextTeacher

    parts = tiny_components("sd", "epsilon")
    teacher = LatentTextTeacher(parts, scale=[2.0, 9.0])
    sched = DDPMScheduler.from_config(parts.scheduler)
    abar = sched.alphas_cumprod.double()
    t_next, t_cur = torch.tensor([999, 519]), torch.tensor([979, 499])
    w = torch.tensor([3.0, 7.5], dtype=torch.float64)
    cond = teacher.encode_text(["a red cat", "two dogs"], w=w)
    x_vp = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0)).double()
    with torch.no_grad():
        eps_c = parts.unet(x_vp.float(), t_next, encoder_hidden_states=cond.text).sample.double()
        eps_u = parts.unet(x_vp.float(), t_next, encoder_hidden_states=teacher.null_cond(2).text).sample.double()
    a, a_prev = abar[t_next].view(-1, 1, 1, 1), abar[t_cur].view(-1, 1, 1, 1)
    x0_c, x0_u = (x_vp - (1 - a).sqrt() * eps_c) / a.sqrt(), (x_vp - (1 - a).sqrt() * eps_u) / a.sqrt()
    lcm_w = (w - 1).view(-1, 1, 1, 1)
    x0_g, eps_g = x0_c + lcm_w * (x0_c - x0_u), eps_c + lcm_w * (eps_c - eps_u)
    ref = a_prev.sqrt() * x0_g + (1 - a_prev).sqrt() * eps_g  # VP units at t_cur
    s_next, s_cur = ((1 - abar[t_next]) / abar[t_next]).sqrt(), ((1 - abar[t_cur]) / abar[t_cur]).sqrt()
    ours = euler_step(teacher.denoise, x_vp / a.sqrt(), s_next, s_cur, cond) * a_prev.sqrt()
    assert (ours - ref).abs().max() <= 1e-4 * ref.abs().max()


@pytest.mark.parametrize("kind", ["sd", "sdxl"])
def test_prompt_encoding_is_the_pipelines(kind):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    folder = pipeline_folder(kind)
    teacher = teachers.load({"name": "diffusers_latent", "path": str(folder)})
    prompts = ["a red cat", "two dogs 42"]
    cond = teacher.encode_text(prompts)
    if kind == "sd":
        pipe = StableDiffusionPipeline.from_pretrained(folder, local_files_only=True)
        text, null = pipe.encode_prompt(prompts, "cpu", 1, True)
        assert torch.equal(cond.text, text)  # the empty prompt, encoded alone here and in a batch of 2 there:
        assert torch.allclose(teacher.null_cond(2).text, null, atol=1e-6)
    else:
        pipe = StableDiffusionXLPipeline.from_pretrained(folder, local_files_only=True)
        text, null, pooled, null_pooled = pipe.encode_prompt(prompts, device="cpu", do_classifier_free_guidance=True)
        assert torch.equal(cond.text, text) and torch.equal(cond.pooled, pooled)
        assert not null.any() and not null_pooled.any() and not teacher.null_cond(2).text.any()
        assert cond.time_ids.tolist() == [[16, 16, 0, 0, 16, 16]] * 2  # (original, crop, target) of 16 px images
    assert teacher.image_shape == (4, 8, 8) and teacher.data_shape == (3, 16, 16)


def test_folder_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        teachers.load({"name": "diffusers_latent", "path": str(tmp_path / "nowhere")})
    (tmp_path / "unet").mkdir()
    with pytest.raises(FileNotFoundError, match="not a Stable Diffusion pipeline folder.*vae"):
        teachers.load({"name": "diffusers_latent", "path": str(tmp_path)})


def test_pixels_round_trip_through_the_vae_scaling():
    from teachers.diffusers_latent import LatentTextTeacher

    parts = tiny_components("sd")
    teacher = LatentTextTeacher(parts)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    z = teacher.encode_pixels(x)
    ref = parts.vae.encode(x).latent_dist.mean * parts.vae.config.scaling_factor
    assert z.shape == (2, 4, 8, 8) and torch.allclose(z, ref)
    assert torch.allclose(teacher.decode_latents(z), parts.vae.decode(ref / parts.vae.config.scaling_factor)
                          .sample.clamp(-1, 1))
