"""LCM students exported with `distill export --diffusers` sample in stock diffusers exactly as `distill.sampling` does.

Tiny random SD / SDXL pipelines (tests/_latent.py); the student's trainable weights are perturbed so that the
LoRA matrices and the guidance embedding matter. Same prompts, same per-sample seeds (one generator per image:
the pipeline draws the start latents, then LCMScheduler's re-noising, from it, as per_sample_noise does).
"""

from __future__ import annotations

import pytest
import torch
from _latent import lcm_config, pipeline_folder

import teachers
from distill.config import to_plain
from distill.export import rebuild_student, student_metadata
from distill.export.diffusers import export_diffusers
from distill.sampling import consistency_sample, per_sample_noise
from distill.training.student import build_student

PROMPTS = ["a red cat", "two dogs 42"]
SEEDS = [10, 11]


def perturbed_student(cfg):
    """The student as `distill fit` builds it, trainable weights moved off their (identity) start, then saved to
    student.json form and rebuilt from it, as `distill export` does."""
    teacher = teachers.load(to_plain(cfg)["teacher"])
    student = build_student(cfg, teacher)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in student.net.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn(p.shape, generator=g))
    rebuilt = rebuild_student(student_metadata(cfg, teacher, student))
    rebuilt.net.load_state_dict(student.net.state_dict())
    return teacher, rebuilt.eval()


def framework_latents(student, teacher, steps: int, w: float) -> torch.Tensor:
    noise = per_sample_noise(SEEDS, tuple(student.image_shape), steps)
    return consistency_sample(student, noise, student.sampling_sigmas[str(steps)], teacher.encode_text(PROMPTS, w=w))


def pipeline_latents(pipe, steps: int, guidance_scale: float) -> torch.Tensor:
    gens = [torch.Generator().manual_seed(s) for s in SEEDS]
    return pipe(PROMPTS, num_inference_steps=steps, guidance_scale=guidance_scale, generator=gens, height=16,
                width=16, output_type="latent").images


def close(a, b):
    return (a - b).abs().max().item() <= 1e-5 * (1 + b.abs().max().item())


@pytest.mark.parametrize("kind", ["sd", "sdxl"])
def test_lcm_lora_loads_with_load_lora_weights_and_samples_like_the_framework(kind, tmp_path):
    from diffusers import LCMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline

    teacher, student = perturbed_student(lcm_config(kind, "lora"))
    out = export_diffusers(student, tmp_path / "lora")
    pipeline = StableDiffusionXLPipeline if kind == "sdxl" else StableDiffusionPipeline
    pipe = pipeline.from_pretrained(pipeline_folder(kind), local_files_only=True)
    pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config)
    without = pipeline_latents(pipe, 4, 1.0)
    pipe.load_lora_weights(str(out))
    for steps in (1, 2, 4):
        ours = framework_latents(student, teacher, steps, w=1.0)
        assert close(pipeline_latents(pipe, steps, 1.0), ours), steps
    assert not close(without, framework_latents(student, teacher, 4, w=1.0))  # the LoRA matters


def test_full_lcm_unet_folder_with_guidance_embedding_samples_like_the_framework(tmp_path):
    from diffusers import LCMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    teacher, student = perturbed_student(lcm_config("sd", "full"))
    out = export_diffusers(student, tmp_path / "full")
    unet = UNet2DConditionModel.from_pretrained(out / "unet")
    pipe = StableDiffusionPipeline.from_pretrained(pipeline_folder("sd"), unet=unet, local_files_only=True,
                                                   scheduler=LCMScheduler.from_pretrained(out / "scheduler"))
    for steps, w in ((1, 6.0), (4, 6.0), (4, 12.0)):  # w reaches the UNet through its embedding
        assert close(pipeline_latents(pipe, steps, w), framework_latents(student, teacher, steps, w)), (steps, w)
    assert not close(framework_latents(student, teacher, 4, 6.0), framework_latents(student, teacher, 4, 12.0))


def test_lcm_schedule_and_scalings_are_lcmschedulers():
    from diffusers import LCMScheduler

    from distill.methods.lcm import lcm_scalings, lcm_timesteps
    from teachers.networks.diffusers_cond_unet import guidance_embedding

    sched = LCMScheduler()
    for n in range(1, 9):
        sched.set_timesteps(n)
        assert lcm_timesteps(n) == sched.timesteps.tolist()
    t = torch.tensor([0, 1, 19, 259, 999])
    c_skip, c_out = lcm_scalings(t.double())
    ref = [sched.get_scalings_for_boundary_condition_discrete(int(v)) for v in t]
    assert torch.allclose(c_skip, torch.tensor([r[0] for r in ref], dtype=torch.float64))
    assert torch.allclose(c_out, torch.tensor([r[1] for r in ref], dtype=torch.float64))
    from diffusers import StableDiffusionPipeline

    w = torch.tensor([0.0, 4.5, 14.0])
    for dim in (16, 255, 256):
        ref = StableDiffusionPipeline.get_guidance_scale_embedding(None, w, embedding_dim=dim)
        assert torch.allclose(guidance_embedding(w, dim), ref, atol=1e-6)


def test_export_refuses_other_students_and_non_empty_folders(tiny_run, tmp_path, capsys):
    from distill.cli import main as distill_main

    assert distill_main(["export", str(tiny_run), "--diffusers", str(tmp_path / "out")]) == 2
    assert "latent consistency students" in capsys.readouterr().err and not (tmp_path / "out").exists()
    _, student = perturbed_student(lcm_config("sd", "lora"))
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not empty"):
        export_diffusers(student, tmp_path / "full")
    assert [p.name for p in tmp_path.iterdir()] == ["full"]  # nothing half-written beside it


def test_distill_sample_of_an_lcm_student_exits_2_naming_the_way(tmp_path, capsys):
    """`distill sample` draws pixel images; an LCM student's latents need the teacher's VAE and captions."""
    from distill.cli import main
    from distill.export import write_export

    cfg = lcm_config("sd", "lora")
    teacher, student = perturbed_student(cfg)
    write_export(tmp_path, student_metadata(cfg, teacher, student), student.net.state_dict(), "online")
    assert main(["sample", str(tmp_path), "--num", "1", "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert "--diffusers" in err and "Traceback" not in err, err
    assert not (tmp_path / "x.png").exists()
