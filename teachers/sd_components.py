"""The parts of a Stable Diffusion / SDXL pipeline folder, loaded offline, or built tiny and random from configs.

A pipeline folder (what `StableDiffusionPipeline.save_pretrained` writes) holds unet/, vae/, text_encoder/,
tokenizer/, scheduler/ and, for SDXL, text_encoder_2/ and tokenizer_2/. Everything loads with
`local_files_only=True` and `use_safetensors=True`: nothing is downloaded and no pickle is read.

`tiny_components` builds the same parts with random weights and a few-hundred-token vocabulary, for tests
and `run.smoke=true` (nothing downloaded: the CLIP tokenizer's vocabulary and merges are written here).
"""

from __future__ import annotations

import json
import string
from dataclasses import dataclass, field
from pathlib import Path

import torch

from teachers.registry import TeacherSpecError

# Stable Diffusion's DDPM schedule (its scheduler_config.json), the default for a folder without one.
SD_SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                    prediction_type="epsilon", clip_sample=False)


@dataclass
class SDComponents:
    unet: torch.nn.Module
    vae: torch.nn.Module
    text_encoders: list = field(default_factory=list)  # 1 (SD) or 2 (SDXL)
    tokenizers: list = field(default_factory=list)
    scheduler: dict = field(default_factory=lambda: dict(SD_SCHEDULER))

    @property
    def is_sdxl(self) -> bool:
        return len(self.text_encoders) == 2


def _imports():
    try:
        import diffusers
        import transformers
    except ImportError as err:
        raise TeacherSpecError("teacher diffusers_latent needs diffusers and transformers (and peft for LoRA "
                               "students): pip install 'distill-cm[latent]'") from err
    return diffusers, transformers


def load_components(root: Path, dtype: torch.dtype = torch.float32) -> SDComponents:
    """unet, text encoder(s) in `dtype`; the VAE in float32 (SDXL's VAE overflows in float16)."""
    diffusers, transformers = _imports()
    missing = [d for d in ("unet", "vae", "text_encoder", "tokenizer") if not (root / d).is_dir()]
    if missing:
        raise FileNotFoundError(f"teacher diffusers_latent: {root} is not a Stable Diffusion pipeline folder "
                                f"(no {', '.join(missing)}/); save one with pipe.save_pretrained(FOLDER)")
    opts = dict(local_files_only=True, use_safetensors=True)
    try:
        unet = diffusers.UNet2DConditionModel.from_pretrained(root / "unet", torch_dtype=dtype, **opts)
        vae = diffusers.AutoencoderKL.from_pretrained(root / "vae", **opts)
        encoders = [transformers.CLIPTextModel.from_pretrained(root / "text_encoder", dtype=dtype, **opts)]
        tokenizers = [transformers.CLIPTokenizer.from_pretrained(root / "tokenizer", local_files_only=True)]
        if (root / "text_encoder_2").is_dir():
            encoders.append(transformers.CLIPTextModelWithProjection.from_pretrained(
                root / "text_encoder_2", dtype=dtype, **opts))
            tokenizers.append(transformers.CLIPTokenizer.from_pretrained(root / "tokenizer_2", local_files_only=True))
    except (OSError, ValueError) as err:  # no weights, .bin only, unreadable config
        raise TeacherSpecError(f"teacher diffusers_latent: cannot load {root} offline ({err}); it needs "
                               "safetensors weights in each component folder") from err
    sched_file = root / "scheduler" / "scheduler_config.json"
    scheduler = dict(SD_SCHEDULER, **(json.loads(sched_file.read_text()) if sched_file.is_file() else {}))
    return SDComponents(unet, vae, encoders, tokenizers, scheduler)


# -- tiny random components (tests, run.smoke) ----------------------------------------------------------------
def tiny_tokenizer(max_length: int = 16):
    """A CLIP BPE tokenizer over lower-case letters and digits (each alone or ending a word); other
    characters map to the unknown token."""
    from transformers import CLIPTokenizer

    chars = string.ascii_lowercase + string.digits
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in chars:
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    tok = CLIPTokenizer(vocab=vocab, merges=[])
    tok.model_max_length = max_length
    return tok


def tiny_components(kind: str = "sd", prediction_type: str = "epsilon", latent_size: int = 8,
                    seed: int = 0) -> SDComponents:
    """SD-shaped (or SDXL-shaped) parts with random weights: UNet block_out_channels (8, 16), a 2x VAE,
    32-wide 2-layer text encoders. Seeded, and without touching the global RNG."""
    diffusers, transformers = _imports()
    sdxl = kind == "sdxl"
    tokenizers = [tiny_tokenizer() for _ in range(2 if sdxl else 1)]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        text_cfg = dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                        vocab_size=len(tokenizers[0]), max_position_embeddings=16, bos_token_id=0, eos_token_id=1,
                        pad_token_id=1, projection_dim=32)
        encoders = [transformers.CLIPTextModel(transformers.CLIPTextConfig(**text_cfg))]
        if sdxl:
            encoders.append(transformers.CLIPTextModelWithProjection(transformers.CLIPTextConfig(**text_cfg)))
        extra = dict(addition_embed_type="text_time", addition_time_embed_dim=8,
                     projection_class_embeddings_input_dim=6 * 8 + 32, use_linear_projection=True) if sdxl else {}
        unet = diffusers.UNet2DConditionModel(
            sample_size=latent_size, in_channels=4, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=64 if sdxl else 32, attention_head_dim=2, norm_num_groups=8, **extra)
        vae = diffusers.AutoencoderKL(
            in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), latent_channels=4,
            norm_num_groups=8, sample_size=2 * latent_size)
    scheduler = dict(SD_SCHEDULER, prediction_type=prediction_type)
    return SDComponents(unet.eval(), vae.eval(), [e.eval() for e in encoders], tokenizers, scheduler)


def save_pipeline(parts: SDComponents, folder: str | Path) -> Path:
    """Write the parts as a diffusers pipeline folder (model_index.json and all), as users hold them."""
    import diffusers

    kw = dict(vae=parts.vae, unet=parts.unet, text_encoder=parts.text_encoders[0], tokenizer=parts.tokenizers[0],
              scheduler=diffusers.DDPMScheduler.from_config(parts.scheduler))
    if parts.is_sdxl:
        pipe = diffusers.StableDiffusionXLPipeline(text_encoder_2=parts.text_encoders[1],
                                                   tokenizer_2=parts.tokenizers[1], **kw)
    else:
        pipe = diffusers.StableDiffusionPipeline(safety_checker=None, feature_extractor=None,
                                                 requires_safety_checker=False, **kw)
    pipe.save_pretrained(str(folder), safe_serialization=True)
    return Path(folder)
