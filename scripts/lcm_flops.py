"""FLOPs of one LCM distillation step for the recipes' teachers (SD v1.5, SDXL), counted, not timed.

Builds each UNet, VAE encoder and text encoder from its published config on the meta device (no weights, no
memory) and counts one forward with torch.utils.flop_counter. A step costs, per image (method lcm):
  teacher  2 UNet forwards (one batched pass of 2B: conditional + unconditional, classifier-free guidance)
  target   1 UNet forward  (the EMA target, or the stop-gradient student for LoRA)
  student  1 forward + backward: ~3 forwards (full: input and weight gradients), ~2 (LoRA: input gradients only)
  text     the text encoder(s), 77 tokens; VAE encoder only when pixels are encoded on the fly (not for latent shards)
Run: python scripts/lcm_flops.py  (CPU, seconds; prints a table and the GPU-time estimate at a stated utilisation).
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

SD15_UNET = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, cross_attention_dim=768,
                 block_out_channels=(320, 640, 1280, 1280), attention_head_dim=8,
                 down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                 up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
SDXL_UNET = dict(sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, cross_attention_dim=2048,
                 block_out_channels=(320, 640, 1280), attention_head_dim=(5, 10, 20),
                 transformer_layers_per_block=(1, 2, 10), use_linear_projection=True,
                 addition_embed_type="text_time", addition_time_embed_dim=256,
                 projection_class_embeddings_input_dim=2816,
                 down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"))
VAE = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512),
           down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2)
CLIP_L = dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12)
CLIP_G = dict(hidden_size=1280, intermediate_size=5120, num_attention_heads=20, num_hidden_layers=32,
              projection_dim=1280)


def count(fn) -> float:
    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def costs(name: str):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    sdxl = name == "sdxl"
    cfg = SDXL_UNET if sdxl else SD15_UNET
    res = cfg["sample_size"]
    with torch.device("meta"):
        unet = UNet2DConditionModel(**cfg)
        vae = AutoencoderKL(**VAE)
        text = [CLIPTextModel(CLIPTextConfig(**CLIP_L))] + ([CLIPTextModel(CLIPTextConfig(**CLIP_G))] if sdxl else [])
        x = torch.empty(1, 4, res, res)
        states = torch.empty(1, 77, cfg["cross_attention_dim"])
        extra = {"added_cond_kwargs": {"text_embeds": torch.empty(1, 1280), "time_ids": torch.empty(1, 6)}} \
            if sdxl else {}
        ids = torch.zeros(1, 77, dtype=torch.long)
        pixels = torch.empty(1, 3, 8 * res, 8 * res)
        unet_f = count(lambda: unet(x, torch.tensor([999]), encoder_hidden_states=states, **extra))
        vae_f = count(lambda: vae.encode(pixels))
        text_f = sum(count(lambda e=e: e(ids)) for e in text)
    params = sum(p.numel() for p in unet.parameters())
    return unet_f, vae_f, text_f, params


def main(batch: int = 96, peak: float = 312e12, utilisation: float = 0.4) -> None:
    print("per image: UNet forward, VAE encode, text; step = 3F (teacher x2, target) + student (3F full, 2F LoRA)")
    for name, recipes in (("sd15", [("sd15_lcm", 3, 4000), ("sd15_lcm_lora", 2, 1000)]),
                          ("sdxl", [("sdxl_lcm_lora", 2, 1000)])):
        unet_f, vae_f, text_f, params = costs(name)
        print(f"{name}: UNet {params / 1e6:.0f}M params, {unet_f / 1e12:.3f} TFLOP/forward; VAE encoder "
              f"{vae_f / 1e12:.3f} TFLOP; text {text_f / 1e12:.4f} TFLOP")
        for recipe, student, steps in recipes:
            per_image = (3 + student) * unet_f + text_f  # teacher 2F + target 1F + student
            step = batch * per_image
            seconds = step / (peak * utilisation)
            print(f"  {recipe}: {per_image / 1e12:.2f} TFLOP/image (+{vae_f / 1e12:.2f} encoding pixels on the fly), "
                  f"{step / 1e15:.2f} PFLOP/step at batch {batch}; {seconds / 8:.2f} s/step on 8 GPUs at "
                  f"{utilisation:.0%} of {peak / 1e12:.0f} TFLOP/s; {steps} steps: {steps * seconds / 3600:.1f} "
                  f"GPU-hours ({steps * seconds / 8 / 3600:.2f} h on 8)")


if __name__ == "__main__":
    main()
