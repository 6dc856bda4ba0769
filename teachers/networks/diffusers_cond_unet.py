"""A diffusers `UNet2DConditionModel` (Stable Diffusion, SDXL) as a project network: `(x, t, cond) -> output`.

`cond` is a `teachers.text_cond.TextCond`. The network is rebuilt from its JSON config (student.json), with
the two student adapters of latent consistency distillation (LCM, Luo et al. 2023):

- `guidance_embedding`: the UNet's `time_cond_proj_dim` (LCM sec. 4.2, full distillation): the guidance
  scale enters as a sinusoidal embedding added to the time embedding, exactly as diffusers' pipelines feed
  it (`get_guidance_scale_embedding(guidance_scale - 1)`), so an exported UNet samples in stock diffusers.
  The new projection starts at zero, so the adapted network equals the teacher's at initialisation.
- `lora`: LoRA adapters through peft (LCM-LoRA, Luo et al. 2023b): only the low-rank matrices train.

diffusers, transformers and peft are optional (the `latent` extra) and imported on use.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from teachers.networks import register_network

# The modules diffusers' LCM-LoRA scripts adapt (train_lcm_distill_lora_sd*.py, `lora_target_modules`).
LCM_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2",
                    "conv1", "conv2", "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv",
                    "time_emb_proj")


def import_unet2d_condition():
    try:
        from diffusers import UNet2DConditionModel
    except ImportError as err:
        raise ImportError("latent (Stable Diffusion) teachers need diffusers, transformers and peft: "
                          "pip install 'distill-cm[latent]'") from err
    return UNet2DConditionModel


def guidance_embedding(w: torch.Tensor, dim: int) -> torch.Tensor:
    """(B,) -> (B, dim): sin/cos of 1000 w at frequencies 10000^(-i / (dim/2 - 1)) (VDM's embedding, as
    diffusers' LCM pipelines compute `get_guidance_scale_embedding`); an odd dim gets one zero column."""
    half = dim // 2
    # In float32 and in this order, as the pipelines compute it: sin(1000 w f) at 14000 radians is sensitive
    # to the last bit of f.
    step = torch.log(torch.tensor(10000.0)) / (half - 1)
    freqs = torch.exp(torch.arange(half, dtype=torch.float32) * -step).to(w.device)
    angles = (1000.0 * w.float())[:, None] * freqs[None, :]
    emb = torch.cat([angles.sin(), angles.cos()], dim=1)
    return nn.functional.pad(emb, (0, dim % 2))


@register_network("diffusers_unet2d_condition")
class DiffusersConditionUNet(nn.Module):
    """`config`: the UNet's diffusers config; `lora`: {rank, alpha, targets} or None."""

    def __init__(self, config: dict[str, Any], lora: dict[str, Any] | None = None, module: nn.Module | None = None):
        super().__init__()
        self.config = dict(config)
        self.unet = module if module is not None else import_unet2d_condition().from_config(self.config)
        self.lora = None
        if lora:
            self._add_lora(lora)

    def _add_lora(self, lora: dict[str, Any]) -> None:
        from peft import LoraConfig

        rank = int(lora["rank"])
        targets = list(lora.get("targets") or LCM_LORA_TARGETS)
        self.lora = {"rank": rank, "alpha": float(lora.get("alpha") or rank), "targets": targets}
        # init_lora_weights=True: A random, B zero, so the adapted UNet starts equal to the base one.
        self.unet.add_adapter(LoraConfig(r=rank, lora_alpha=self.lora["alpha"], target_modules=targets,
                                         init_lora_weights=True))

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond=None) -> torch.Tensor:
        if cond is None or not hasattr(cond, "text"):
            raise ValueError("a text-conditional UNet needs cond = TextCond (text-encoder states); build it "
                             "with the teacher's encode_text(captions)")
        dtype = self.unet.dtype
        kwargs = {}
        if cond.pooled is not None:  # SDXL's added conditions
            kwargs["added_cond_kwargs"] = {"text_embeds": cond.pooled.to(x.device, dtype),
                                           "time_ids": cond.time_ids.to(x.device, dtype)}
        dim = self.config.get("time_cond_proj_dim")
        if dim:  # diffusers' pipelines embed (guidance_scale - 1): LCM's w, where x0 = c + w (c - u)
            w = cond.w if cond.w is not None else torch.ones(x.shape[0], device=x.device)
            kwargs["timestep_cond"] = guidance_embedding(w.to(x.device) - 1, dim).to(dtype)
        out = self.unet(x.to(dtype), t, encoder_hidden_states=cond.text.to(x.device, dtype), **kwargs).sample
        return out.to(x.dtype)

    # -- student adapters ------------------------------------------------------------------------------------
    def adapted(self, guidance_embedding_dim: int = 0, lora: dict[str, Any] | None = None) -> DiffusersConditionUNet:
        """This network with LCM's student adapters; only what trains requires grad. `build_spec` records them."""
        net = self
        if guidance_embedding_dim:
            if self.config.get("time_cond_proj_dim"):
                raise ValueError("student.guidance_embedding: the teacher's UNet already has a guidance embedding "
                                 f"(time_cond_proj_dim={self.config['time_cond_proj_dim']}); set it to 0")
            net = DiffusersConditionUNet({**self.config, "time_cond_proj_dim": int(guidance_embedding_dim)})
            net.to(next(self.unet.parameters()).dtype)
            missing, unexpected = net.unet.load_state_dict(self.unet.state_dict(), strict=False)
            if missing != ["time_embedding.cond_proj.weight"] or unexpected:
                raise ValueError(f"guidance embedding: unexpected state-dict difference {missing} {unexpected}")
            nn.init.zeros_(net.unet.time_embedding.cond_proj.weight)
        if lora:
            net.requires_grad_(False)
            net._add_lora(lora)
            for name, p in net.named_parameters():
                p.requires_grad_("lora_" in name)
        net.build_spec = {"name": "diffusers_unet2d_condition", "config": net.config, "lora": net.lora}
        return net

    def lora_state_dict(self) -> dict[str, torch.Tensor]:
        """The LoRA matrices in peft's naming, as diffusers' `save_lora_weights` takes them."""
        from peft.utils import get_peft_model_state_dict

        if self.lora is None:
            raise ValueError("this network has no LoRA adapters")
        return get_peft_model_state_dict(self.unet)
