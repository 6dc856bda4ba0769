"""LCM distillation through the framework's own trainer: caption data, pixels encoded by the teacher's VAE on the
device, LCM pairs on the teacher's timesteps; a short run lowers the loss."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pytest
import torch
from _latent import lcm_config
from PIL import Image

from distill.data.captions import Captions, caption_pairs
from distill.methods.curriculum import TimestepPairs


def caption_folder(root, count: int = 16, size: int = 16):
    """Smooth random colour images (16 px: the tiny VAE's pixels) with a caption each."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    colours = ["red", "green", "blue", "grey"]
    for i in range(count):
        base = rng.uniform(0, 255, 3)
        ramp = np.linspace(0, 60, size)[None, :, None]
        img = np.clip(base[None, None, :] + ramp + rng.normal(0, 8, (size, size, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(root / f"img{i:03d}.png")
        (root / f"img{i:03d}.txt").write_text(f"a {colours[i % 4]} square {i}\n")
    return root


def test_timestep_pairs_are_the_lcm_scripts_ddim_pairs():
    sigmas = torch.linspace(0.03, 14.6, 1000, dtype=torch.float64)
    pairs = TimestepPairs(sigmas, skip=20)
    assert pairs.levels == 50 and pairs.starts[0] == 19 and pairs.starts[-1] == 999
    cur, nxt = pairs.sample(0, 20000, torch.Generator().manual_seed(0))
    t_next = torch.searchsorted(sigmas, nxt)
    t_cur = torch.searchsorted(sigmas, cur)
    assert set(t_next.tolist()) == set(range(19, 1000, 20))  # all 50 start timesteps, uniformly
    assert torch.equal(t_cur, (t_next - 20).clamp_min(0))  # k = 20 apart; 19 -> 0 (diffusers clamps too)
    counts = torch.bincount(t_next, minlength=1000)[19::20].double()
    assert counts.min() > 0.8 * counts.mean()


def test_caption_folders_pair_every_image_with_its_text(tmp_path):
    folder = caption_folder(tmp_path / "caps", count=3)
    assert [c for _, _, c in caption_pairs(folder)] == ["a red square 0", "a green square 1", "a blue square 2"]
    assert Captions(["a", "b", "c"])[torch.tensor([2, 0])].texts == ["c", "a"]
    (folder / "img001.txt").unlink()
    with pytest.raises(FileNotFoundError, match="img001.png: no caption file img001.txt"):
        list(caption_pairs(folder))


def test_a_short_lcm_distillation_lowers_the_loss(tmp_path):
    from distill.data import DistillDataModule
    from distill.training.fit import build_trainer, prepare_teacher_and_student

    folder = caption_folder(tmp_path / "caps")
    cfg = lcm_config("sd", "lora", "data.name=captions", f"data.path={folder}", "data.batch_size=8",
                     "data.num_workers=0", "trainer.max_steps=40", "trainer.accelerator=cpu", "trainer.devices=1",
                     "trainer.strategy=auto", "trainer.precision=32-true", "trainer.gradient_clip_val=null",
                     "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1", "optim.lr=3e-3",
                     "optim.warmup_steps=0", "student.lora_rank=8", "student.lora_alpha=8", "teacher.scale=4.0",
                     "checkpoint.every_n_steps=1000", f"run.dir={tmp_path / 'run'}")
    teacher, module = prepare_teacher_and_student(cfg, dict(cfg.teacher))
    data = DistillDataModule(cfg, teacher)
    index = torch.arange(64) % 16  # every image 4 times: 64 draws of (t, z, w), so the loss averages over t
    held_out = (teacher.encode_pixels(data.images[index]), data.labels[index])  # as on_after_batch_transfer does

    def loss():  # without a trainer the step's draws are step 0's: the same pairs, noise and w each time
        module._trainer = None
        with torch.no_grad():
            return float(module.training_step(held_out, 0))

    before = loss()
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        build_trainer(cfg, tmp_path / "run").fit(module, datamodule=data)
    after = loss()
    assert after < 0.9 * before, (before, after)  # measured: 0.101 -> 0.079
    trained = [n for n, p in module.student.net.named_parameters() if p.requires_grad]
    assert trained and all("lora_" in n for n in trained)  # LCM-LoRA: the base UNet stays the teacher's


@pytest.mark.parametrize("latents", [False, True])
def test_caption_shards_carry_images_or_latents_with_their_captions(tmp_path, latents):
    from _latent import pipeline_folder

    import teachers
    from distill.cli import main as distill_main
    from distill.data.webdataset_source import ShardSamples, _collate

    folder = caption_folder(tmp_path / "caps", count=5)
    extra = ["--latents", str(pipeline_folder("sd"))] if latents else ["--captions"]
    assert distill_main(["shards", str(folder), str(tmp_path / "shards"), "--shard-size", "3", *extra]) == 0
    urls = sorted(str(p) for p in (tmp_path / "shards").glob("*.tar"))
    assert len(urls) == 2
    teacher = teachers.load({"name": "diffusers_latent", "path": str(pipeline_folder("sd"))})
    samples = ShardSamples(urls, teacher.data_shape, resampled=False, shuffle_buffer=0, captions=True,
                           latent_shape=teacher.image_shape)
    x, texts = _collate(list(samples))
    assert texts == [f"a {c} square {i}" for i, c in enumerate(["red", "green", "blue", "grey", "red"])]
    if latents:  # what encoding on the fly gives, to float16
        from distill.data.captions import load_caption_folder

        pixels = load_caption_folder(folder, teacher.data_shape)[0]
        assert x.shape == (5, 4, 8, 8)
        assert torch.allclose(x, teacher.encode_pixels(pixels), rtol=2e-3, atol=2e-3)
    else:
        assert x.shape == (5, 3, 16, 16)
