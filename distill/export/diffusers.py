"""`distill export PATH --diffusers OUT`: an LCM student as files stock diffusers loads, with no code from here.

- LCM-LoRA students: OUT/pytorch_lora_weights.safetensors (diffusers' LoRA format, with the adapter's rank and
  alpha as metadata), for `pipe.load_lora_weights(OUT)` on the teacher's pipeline;
- full LCM students: OUT/unet/ (a UNet2DConditionModel folder, guidance embedding included);
- both: OUT/scheduler/ (the LCMScheduler the student was distilled for: the teacher's betas and prediction type,
  original_inference_steps = T / skip, timestep_scaling) and OUT/README.md with the lines that load them.

The student's forward is LCMScheduler's step by construction (distill/methods/lcm.py), so the pipeline's 1-8 step
images equal `distill.sampling` on the same noise (tests/test_lcm_export.py). OUT is written beside itself and
renamed at the end: an interrupted export leaves no half-written folder.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

USAGE_LORA = """# LCM-LoRA exported by `distill export --diffusers`

```python
import torch
from diffusers import {pipeline}, LCMScheduler

pipe = {pipeline}.from_pretrained("TEACHER_FOLDER", torch_dtype=torch.float16).to("cuda")
pipe.load_lora_weights("{out}")
pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config)  # or .from_pretrained("{out}/scheduler")
image = pipe("a photo of a cat", num_inference_steps=4, guidance_scale=1.0).images[0]
```
Distilled with a fixed teacher guidance scale {scale}; guidance_scale=1.0 at sampling (1-2 adds CFG on top).
"""

USAGE_FULL = """# Latent consistency model exported by `distill export --diffusers`

```python
import torch
from diffusers import {pipeline}, LCMScheduler, UNet2DConditionModel

unet = UNet2DConditionModel.from_pretrained("{out}/unet", torch_dtype=torch.float16)
scheduler = LCMScheduler.from_pretrained("{out}/scheduler")
pipe = {pipeline}.from_pretrained("TEACHER_FOLDER", unet=unet, scheduler=scheduler,
                                  torch_dtype=torch.float16).to("cuda")
image = pipe("a photo of a cat", num_inference_steps=4, guidance_scale=8.0).images[0]
```
The guidance scale enters through the UNet's embedding (no second pass); distilled for scales {scale}.
"""


class NotExportable(ValueError):
    """A student that stock diffusers cannot sample (not an LCM student of a UNet2DConditionModel)."""


def lcm_scheduler_config(student) -> dict:
    """LCMScheduler's config for the student's teacher table and boundary."""
    feeding, boundary = student.feeding, student.boundary
    config = dict(prediction_type=feeding.prediction, timestep_scaling=boundary.timestep_scaling,
                  original_inference_steps=boundary.original_inference_steps, clip_sample=False)
    if feeding.schedule is not None:
        s = feeding.schedule
        return dict(config, num_train_timesteps=s["num_steps"], beta_schedule=s["schedule"],
                    beta_start=s["beta_start"], beta_end=s["beta_end"])
    import numpy as np

    abar = 1 / (1 + np.asarray(feeding.sigmas) ** 2)  # the table back to betas: 1 - abar_i / abar_{i-1}
    betas = 1 - abar / np.concatenate([[1.0], abar[:-1]])
    return dict(config, num_train_timesteps=len(betas), trained_betas=[float(b) for b in betas])


def check_exportable(student) -> None:
    from teachers.networks.diffusers_cond_unet import DiffusersConditionUNet

    boundary = getattr(student, "boundary", None)
    if getattr(boundary, "name", None) != "lcm" or not isinstance(student.net, DiffusersConditionUNet):
        raise NotExportable("--diffusers exports latent consistency students (method.name=lcm with a "
                            "diffusers_latent teacher); this student is not one. Use --onnx for other students")


def export_diffusers(student, out: str | Path) -> Path:
    """Write `out` (which must not exist, or be an empty folder); returns it."""
    from diffusers import LCMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline

    check_exportable(student)
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} exists and is not empty; choose a new folder for the diffusers export")
    net = student.net
    sdxl = net.config.get("addition_embed_type") == "text_time"
    pipeline = StableDiffusionXLPipeline if sdxl else StableDiffusionPipeline
    spec = (getattr(student, "meta", None) or {}).get("teacher", {}).get("spec", {})
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        LCMScheduler.from_config(lcm_scheduler_config(student)).save_pretrained(str(tmp / "scheduler"))
        if net.lora is not None:
            metadata = {"r": net.lora["rank"], "lora_alpha": net.lora["alpha"], "target_modules": net.lora["targets"]}
            layers = {k: v.detach().float().cpu().contiguous() for k, v in net.lora_state_dict().items()}
            pipeline.save_lora_weights(str(tmp), unet_lora_layers=layers, unet_lora_adapter_metadata=metadata)
            usage = USAGE_LORA
        else:
            net.unet.save_pretrained(str(tmp / "unet"), safe_serialization=True)
            usage = USAGE_FULL
        scale = json.dumps(spec.get("scale", "see student.json"), default=str)
        (tmp / "README.md").write_text(usage.format(pipeline=pipeline.__name__, out=out, scale=scale))
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def write_diffusers(student, out: str | Path) -> dict:
    """`distill export --diffusers`: the export and what it holds (distill/commands/export.py's summary)."""
    out = export_diffusers(student, out)
    kind = "LoRA weights" if student.net.lora is not None else "UNet folder"
    return {"path": str(out), "holds": f"{kind} + LCMScheduler", "load with": f"{out}/README.md"}
