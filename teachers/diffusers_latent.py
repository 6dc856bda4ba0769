"""Stable Diffusion / SDXL pipeline folders as guided, text-conditional EDM denoisers in latent space.

`teacher: {name: diffusers_latent, path: FOLDER, scale: [2.0, 16.0]}`. The UNet2DConditionModel (eps or v
prediction, over its scheduler's beta table) becomes D(x, sigma, cond) through the VP adapter (teachers/vp.py);
`cond` is a TextCond (teachers/text_cond.py). Classifier-free guidance (Ho & Salimans 2022) with a scale per
sample, in diffusers' convention (w = 1: the conditional model):

    D_w(x, s, c) = D(x, s, none) + w (D(x, s, c) - D(x, s, none))

"none" is the empty prompt's encoding for SD and all-zero text and pooled states for SDXL (its pipelines'
`force_zeros_for_empty_prompt`, which diffusers' LCM-SDXL scripts also use). Guiding x0 is guiding eps and v:
every one of them is affine in the network output at fixed (x, s), so DDIM over the guided D is the LCM
scripts' guided DDIM step.

The VAE and the text encoder(s) are frozen parts of the teacher (so, like it, outside DDP, EMA and
checkpoints): `encode_text(captions)`, `encode_pixels(images)` (posterior mean x the VAE's scaling_factor),
`decode_latents(z)`. `training_condition(captions, u)` is what the training step asks for: the captions'
encoding with w = lo + (hi - lo) u drawn from the `scale` range.
"""

from __future__ import annotations

from pathlib import Path

import torch

from teachers.files import require_file, sha256_of
from teachers.guidance import cfg_combine
from teachers.registry import TeacherSpecError, register
from teachers.sd_components import SDComponents, load_components, tiny_components
from teachers.text_cond import TextCond
from teachers.vp import VPTeacher

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class LatentTextTeacher(VPTeacher):
    text_conditional = True  # the data must carry captions

    def __init__(self, parts: SDComponents, *, scale=1.0, resolution: int | None = None, sigma_data: float = 0.5):
        from teachers.ddpm import schedule_kwargs
        from teachers.networks.diffusers_cond_unet import DiffusersConditionUNet
        from teachers.networks.diffusers_unet import plain_config

        if parts.scheduler.get("rescale_betas_zero_snr"):
            raise TeacherSpecError("teacher diffusers_latent: zero-terminal-SNR schedules (rescale_betas_zero_snr) "
                                   "have sigma_max = inf and are not supported")
        config = plain_config(parts.unet.config)
        net = DiffusersConditionUNet(config, module=parts.unet)
        net.build_spec = {"name": "diffusers_unet2d_condition", "config": config, "lora": None}
        factor = 2 ** (len(parts.vae.config.block_out_channels) - 1)  # the pipelines' vae_scale_factor
        size = int(resolution or config["sample_size"] * factor)
        shape = (config["in_channels"], size // factor, size // factor)
        super().__init__(net, image_shape=shape, sigma_data=sigma_data, **schedule_kwargs(parts.scheduler))
        self.data_shape = (3, size, size)  # the pixels data loaders decode; encode_pixels turns them into x0
        self.vae = parts.vae.eval().requires_grad_(False)
        self.text_encoders = torch.nn.ModuleList(e.eval().requires_grad_(False) for e in parts.text_encoders)
        self.tokenizers = list(parts.tokenizers)
        self.scaling_factor = float(parts.vae.config.scaling_factor)
        self.scale_range = (float(scale), float(scale)) if isinstance(scale, int | float) else \
            (float(scale[0]), float(scale[1]))
        text, pooled = self._encode([""])
        # The unconditional input: the empty prompt's states (SD), all zeros (SDXL).
        self.register_buffer("null_text", text if not self.is_sdxl else torch.zeros_like(text), persistent=False)
        self.register_buffer("null_pooled", None if pooled is None else torch.zeros_like(pooled), persistent=False)

    @property
    def is_sdxl(self) -> bool:
        return len(self.text_encoders) == 2

    # -- text -------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def _encode(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """As diffusers' pipelines encode prompts (clip_skip unset): SD the last hidden state; SDXL both
        encoders' penultimate states side by side and the second encoder's projected pooled output."""
        dev = next(self.text_encoders[0].parameters()).device
        states, pooled = [], None
        for tok, enc in zip(self.tokenizers, self.text_encoders):
            ids = tok(list(captions), padding="max_length", max_length=tok.model_max_length, truncation=True,
                      return_tensors="pt").input_ids.to(dev)
            if not self.is_sdxl:
                return enc(ids)[0], None
            out = enc(ids, output_hidden_states=True)
            states.append(out.hidden_states[-2])
            pooled = out[0]
        return torch.cat(states, dim=-1), pooled

    def _time_ids(self, batch: int, device) -> torch.Tensor:
        """SDXL micro-conditioning (original size, crop top-left, target size) for uncropped square images."""
        h, w = self.data_shape[1:]
        return torch.tensor([[h, w, 0, 0, h, w]], dtype=torch.float32, device=device).expand(batch, 6)

    def encode_text(self, captions: list[str], w=None) -> TextCond:
        text, pooled = self._encode(captions)
        cond = TextCond(text, pooled, self._time_ids(len(captions), text.device) if self.is_sdxl else None)
        return cond.with_w(self.scale_range[0] if w is None else w)

    def null_cond(self, batch: int) -> TextCond:
        text = self.null_text.expand(batch, -1, -1)
        if not self.is_sdxl:
            return TextCond(text)
        return TextCond(text, self.null_pooled.expand(batch, -1), self._time_ids(batch, text.device))

    def training_condition(self, captions, u: torch.Tensor) -> TextCond:
        """The step's condition: the captions' states and w ~ U[lo, hi] from uniforms u (drawn by the caller)."""
        if isinstance(captions, torch.Tensor):
            raise ValueError("teacher diffusers_latent needs captions with every image: use data.name=captions, "
                             "webdataset shards with .txt files, or synthetic")
        lo, hi = self.scale_range
        return self.encode_text(list(captions), w=lo + (hi - lo) * u.to(torch.float64))

    # -- the denoiser -----------------------------------------------------------------------------------------
    def _denoise(self, x: torch.Tensor, sigma: torch.Tensor, cond) -> torch.Tensor:
        dtype = next(self.backbone.parameters()).dtype
        x, sigma = x.to(dtype), sigma.to(dtype)
        if cond is None:  # the unconditional model
            return self.feeding.denoise(self.backbone, x, sigma, self.null_cond(x.shape[0]))
        w = cond.w if cond.w is not None else torch.full((x.shape[0],), self.scale_range[0], device=x.device)
        both = TextCond.cat([cond, self.null_cond(x.shape[0]).with_w(w)])  # one batched pass of 2B
        d = self.feeding.denoise(self.backbone, torch.cat([x, x]), sigma.repeat(2), both)
        return cfg_combine(d[x.shape[0]:], d[:x.shape[0]], w.to(x.device, x.dtype))

    # -- the autoencoder --------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_pixels(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> latents (B, 4, H/f, W/f): the posterior mean (deterministic, so a
        resumed run and `distill shards --latents` see the same latents), times the VAE's scaling_factor."""
        out = self.vae.encode(images.to(next(self.vae.parameters()).dtype)).latent_dist.mean
        return (out * self.scaling_factor).float()

    @torch.no_grad()
    def decode_latents(self, z: torch.Tensor) -> torch.Tensor:
        dtype = next(self.vae.parameters()).dtype
        return self.vae.decode(z.to(dtype) / self.scaling_factor).sample.float().clamp(-1, 1)


@register("diffusers_latent")
def load_diffusers_latent(path: str | None = None, *, smoke: bool = False, scale: float | list[float] = 1.0,
                          resolution: int | None = None, dtype: str = "float32", kind: str | None = None,
                          prediction_type: str | None = None, sigma_data: float = 0.5) -> LatentTextTeacher:
    """`path`: a pipeline folder; `scale`: a guidance scale or a [lo, hi] range; `dtype` of the UNet and text
    encoders. smoke: tiny random parts of the same kind (`kind`: sd | sdxl, from the folder when it exists)."""
    if dtype not in DTYPES:
        raise ValueError(f"teacher.dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    scale = float(scale) if isinstance(scale, int | float) else [float(v) for v in scale]
    if smoke:
        kind = kind or ("sdxl" if path and (Path(path) / "text_encoder_2").is_dir() else "sd")
        parts = tiny_components(kind, prediction_type or "epsilon")
        return LatentTextTeacher(parts, scale=scale, sigma_data=sigma_data)
    root = require_file(path, "diffusers_latent", "a Stable Diffusion pipeline folder (unet/, vae/, text_encoder/, "
                                                  "tokenizer/, scheduler/), as pipe.save_pretrained writes it")
    parts = load_components(root, DTYPES[dtype])
    if prediction_type is not None:
        parts.scheduler["prediction_type"] = prediction_type
    teacher = LatentTextTeacher(parts, scale=scale, resolution=resolution, sigma_data=sigma_data)
    teacher.file_sha256 = sha256_of(root / "unet")
    return teacher
