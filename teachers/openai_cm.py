"""OpenAI consistency-models EDM teachers: `teacher: {name: openai_cm, path: edm_imagenet64_ema.pt, arch: imagenet64}`.

The files are plain state dicts of an ADM UNet (`teachers/networks/adm_unet.py`), read with
`torch.load(weights_only=True)`. Their denoiser is EDM's preconditioning (sigma_data 0.5, sigma in
[0.002, 80]) with one difference: the network's time input is 1000 * 0.25 * ln(sigma) (their
`karras_diffusion.py`), i.e. 1000 x EDM's c_noise. `OpenAIFeeding` says so, so a student copied from
the backbone is fed the same way and can be rebuilt from student.json alone.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from teachers.base import BackboneFeeding, edm_scalings, expand_like
from teachers.feeding import register_feeding
from teachers.files import (
    build_checked,
    check_tensor_bytes,
    load_by_name,
    load_weights_only,
    refusing,
    require_file,
    sha256_of,
    smoke_levels,
)
from teachers.network_teacher import NetworkTeacher
from teachers.networks import build_network
from teachers.registry import TeacherSpecError, register

# OpenAI's time input is 1000 * 0.25 * ln(sigma) = 1000 * c_noise (EDM Table 1 c_noise = ln(sigma)/4).
TIME_SCALE = 1000.0
# Their code adds 1e-44 before the log so that sigma = 0 stays finite; kept for the same inputs.
LOG_EPS = 1e-44

# Architectures of the released teachers (their scripts/launch.sh flags; FACTS.md).
ARCHS: dict[str, dict[str, Any]] = {
    "imagenet64": dict(image_size=64, model_channels=192, num_res_blocks=3, channel_mult=[1, 2, 3, 4],
                       attention_resolutions=[32, 16, 8], num_head_channels=64, use_scale_shift_norm=True,
                       resblock_updown=True, num_classes=1000, dropout=0.1),
    "bedroom256": dict(image_size=256, model_channels=256, num_res_blocks=2, channel_mult=[1, 1, 2, 2, 4, 4],
                       attention_resolutions=[32, 16, 8], num_head_channels=64, use_scale_shift_norm=False,
                       resblock_updown=True, num_classes=0, dropout=0.1),
}
ARCHS["cat256"] = dict(ARCHS["bedroom256"])
SMOKE_ARCH = dict(model_channels=32, num_res_blocks=1, num_head_channels=32, dropout=0.0)


@register_feeding("openai_cm")
class OpenAIFeeding(BackboneFeeding):
    """EDM scalings, but the network sees t = 1000 * 0.25 * ln(sigma) as its time input."""

    name = "openai_cm"

    def F(self, net: nn.Module, x: torch.Tensor, sigma: torch.Tensor, cond=None) -> torch.Tensor:
        _, _, c_in, _ = edm_scalings(sigma, self.sigma_data)
        t = TIME_SCALE * 0.25 * torch.log(sigma + LOG_EPS)
        return net(expand_like(c_in, x) * x, t, cond)


class OpenAICMTeacher(NetworkTeacher):
    def __init__(self, net: nn.Module, *, image_shape, num_classes: int = 0, sigma_min: float = 0.002,
                 sigma_max: float = 80.0, sigma_data: float = 0.5):
        super().__init__(net, OpenAIFeeding(sigma_data), sigma_min=sigma_min, sigma_max=sigma_max,
                         sigma_data=sigma_data, image_shape=image_shape, num_classes=num_classes)


def arch_kwargs(arch: str | None, overrides: dict[str, Any]) -> dict[str, Any]:
    if arch is None:
        kwargs = {}
    elif arch in ARCHS:
        kwargs = dict(ARCHS[arch])
    else:
        raise TeacherSpecError(f"teacher openai_cm: arch {arch!r} is not one of {', '.join(ARCHS)}; or give "
                               "arch: null and the ADM UNet kwargs explicitly")
    kwargs.update(overrides)
    if "image_size" not in kwargs:
        raise TeacherSpecError("teacher openai_cm: give `arch` or the explicit ADM kwargs (image_size, ...)")
    return kwargs


@register("openai_cm")
def load_openai_cm(path: str | None = None, *, arch: str | None = "imagenet64", smoke: bool = False,
                   sigma_min: float = 0.002, sigma_max: float = 80.0, **network_kwargs) -> OpenAICMTeacher:
    """An OpenAI EDM teacher from its `.pt` state dict; `smoke` builds a tiny random one of the same family."""
    kwargs = arch_kwargs(arch, network_kwargs)
    if smoke:
        # Same family, shape and conditioning, a fraction of the width and depth (run.smoke).
        mult, attn_res = smoke_levels(int(kwargs["image_size"]))
        kwargs = {**kwargs, **SMOKE_ARCH, "channel_mult": mult, "attention_resolutions": [attn_res]}
    shape = (int(kwargs.get("in_channels", 3)), int(kwargs["image_size"]), int(kwargs["image_size"]))
    teacher_kwargs = dict(image_shape=shape, num_classes=int(kwargs.get("num_classes", 0)),
                          sigma_min=sigma_min, sigma_max=sigma_max)
    if smoke:
        return OpenAICMTeacher(build_network("adm_unet", **kwargs), **teacher_kwargs)
    p = require_file(path, "openai_cm", f"an OpenAI consistency-models teacher state dict such as "
                                        f"edm_{arch or 'imagenet64'}_ema.pt")
    state = load_weights_only(p)  # read (and refuse) the file before building any network
    if not isinstance(state, dict):
        raise TeacherSpecError(f"{p}: expected a state dict of tensors, found {type(state).__name__}")
    odd = next(((k, v) for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)), None)
    if odd is not None:
        raise TeacherSpecError(f"{p}: entry {odd[0]!r} is {type(odd[1]).__name__}, not a tensor; expected a state "
                               "dict of tensors (an OpenAI consistency-models teacher such as edm_imagenet64_ema.pt)")
    with refusing(p):
        check_tensor_bytes(state, p.stat().st_size, p)
        net = build_checked("adm_unet", kwargs, {k: v.shape for k, v in state.items()}, p, p.stat().st_size)
        teacher = OpenAICMTeacher(load_by_name(net, state, str(p)), **teacher_kwargs)
    teacher.file_sha256 = sha256_of(p)
    return teacher
