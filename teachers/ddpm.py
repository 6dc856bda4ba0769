"""DDPM teachers from diffusers folders: `teacher: {name: ddpm, path: DIR}` (e.g. google/ddpm-cifar10-32).

Layouts: flat (`config.json` + weights + `scheduler_config.json`) or pipeline (`unet/`, `scheduler/`).
Loaded offline (`local_files_only=True`); diffusers is optional and imported here only. The scheduler
file gives the beta table and the prediction type; its clipping is ignored, since distillation needs
the unclipped denoiser. The VP -> EDM conversion is `teachers/vp.py`.
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from teachers.files import refusing, require_file, sha256_of, smoke_levels
from teachers.networks import build_network
from teachers.networks.diffusers_unet import DiffusersUNet, import_unet2d, plain_config
from teachers.registry import TeacherSpecError, register
from teachers.vp import VPTeacher

SCHEDULER_DEFAULTS = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
                          prediction_type="epsilon")


def find_layout(root: Path) -> tuple[Path, Path]:
    """(unet folder, scheduler config file) for a flat or a pipeline folder."""
    if (root / "unet" / "config.json").exists():
        sched = root / "scheduler" / "scheduler_config.json"
        return root / "unet", sched
    if (root / "config.json").exists():
        return root, root / "scheduler_config.json"
    raise FileNotFoundError(f"teacher ddpm: {root} holds neither config.json (flat UNet2DModel folder) nor "
                            "unet/config.json (pipeline folder)")


def read_scheduler(path: Path, overrides: dict) -> dict:
    cfg = dict(SCHEDULER_DEFAULTS)
    if path.exists():
        cfg.update(json.loads(path.read_text()))
    cfg.update({k: v for k, v in overrides.items() if v is not None})
    return cfg


def schedule_kwargs(sched: dict) -> dict:
    """A diffusers scheduler config -> VPTeacher's `prediction` and `schedule` (or `betas`) arguments."""
    kwargs = dict(prediction=sched["prediction_type"])
    if sched.get("trained_betas") is not None:
        return dict(kwargs, betas=sched["trained_betas"])
    name = sched["beta_schedule"]
    if name not in ("linear", "scaled_linear", "squaredcos_cap_v2"):
        raise TeacherSpecError(f"teacher: beta_schedule {name!r} is not supported "
                               "(linear, scaled_linear, squaredcos_cap_v2)")
    return dict(kwargs, schedule=dict(schedule=name, num_steps=int(sched["num_train_timesteps"]),
                                      beta_start=float(sched["beta_start"]), beta_end=float(sched["beta_end"])))


def teacher_from_scheduler(net: nn.Module, sched: dict, *, image_shape, num_classes: int,
                           sigma_data: float) -> VPTeacher:
    return VPTeacher(net, image_shape=image_shape, num_classes=num_classes, sigma_data=sigma_data,
                     **schedule_kwargs(sched))


def smoke_network(image_shape, num_classes: int) -> nn.Module:
    """A tiny random UNet2DModel; without diffusers, the project's small UNet as the eps-net (run.smoke)."""
    c, res = int(image_shape[0]), int(image_shape[-1])
    try:
        import_unet2d()
    except ImportError:
        return build_network("small_unet", in_channels=c, width=16, channel_mult=smoke_levels(res)[0],
                             num_classes=num_classes)
    levels = len(smoke_levels(res)[0])  # attention only at the lowest (<= 16 px) level
    config = dict(sample_size=res, in_channels=c, out_channels=c, block_out_channels=[32] * levels,
                  layers_per_block=1, down_block_types=["DownBlock2D"] * (levels - 1) + ["AttnDownBlock2D"],
                  up_block_types=["AttnUpBlock2D"] + ["UpBlock2D"] * (levels - 1), norm_num_groups=8,
                  num_class_embeds=num_classes or None)
    return build_network("diffusers_unet2d", config=config)


@register("ddpm")
def load_ddpm(path: str | None = None, *, smoke: bool = False, prediction_type: str | None = None,
              beta_schedule: str | None = None, beta_start: float | None = None, beta_end: float | None = None,
              num_train_timesteps: int | None = None, image_shape=None, num_classes: int | None = None,
              sigma_data: float = 0.5) -> VPTeacher:
    """A diffusers DDPM folder as an EDM denoiser; kwargs override the scheduler file's values."""
    overrides = dict(prediction_type=prediction_type, beta_schedule=beta_schedule, beta_start=beta_start,
                     beta_end=beta_end, num_train_timesteps=num_train_timesteps)
    if smoke:
        shape, classes = tuple(image_shape or (3, 32, 32)), int(num_classes or 0)
        return teacher_from_scheduler(smoke_network(shape, classes), read_scheduler(Path("/nonexistent"),
                                      overrides), image_shape=shape, num_classes=classes, sigma_data=sigma_data)
    root = require_file(path, "ddpm", "a diffusers UNet2DModel folder (config.json + weights + "
                                      "scheduler_config.json) or a pipeline folder with unet/ and scheduler/")
    unet_dir, sched_path = find_layout(root)
    try:
        UNet2DModel = import_unet2d()
    except ImportError as err:  # an input the user fixes by installing the optional extra: exit 2
        raise TeacherSpecError(str(err)) from err
    with refusing(unet_dir):  # no weights file, an unreadable config or scheduler file: exit 2 naming it
        unet = UNet2DModel.from_pretrained(str(unet_dir), local_files_only=True)
        config = plain_config(unet.config)
        net = DiffusersUNet(config, module=unet)
        net.build_spec = {"name": "diffusers_unet2d", "config": config}  # as build_network would record it
        size = config["sample_size"]
        h, w = (size, size) if isinstance(size, int) else size
        shape = tuple(image_shape or (config["in_channels"], h, w))
        teacher = teacher_from_scheduler(net, read_scheduler(sched_path, overrides), image_shape=shape,
                                         num_classes=int(config.get("num_class_embeds") or 0),
                                         sigma_data=sigma_data)
    teacher.file_sha256 = sha256_of(unet_dir)
    return teacher
