"""NVlabs EDM2 pixel-space teachers (Karras et al. 2024): `teacher: {name: edm2, path: edm2-img64-s-....pkl}`.

Same persistence format as EDM, read by the same restricted unpickler (nothing from the file runs). The
`ema` record is a `Precond` around the magnitude-preserving `UNet` (`teachers/networks/edm2_unet.py`);
its tensors are stored in float16 and loaded into a float32 network whose weights are normalised at run
time (forced weight normalisation). Preconditioning is EDM's (Table 1), sigma_data 0.5; the learned
uncertainty head (`logvar_*`) is not needed for sampling and is dropped.

Latent models (the 512px ones) need Stable Diffusion's VAE to decode; they are refused with a message.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from teachers.edm import EDM_LICENCE, EDMTeacher, _sigma_range
from teachers.files import (
    build_checked,
    check_tensor_bytes,
    load_by_name,
    refusing,
    require_file,
    sha256_of,
    smoke_levels,
)
from teachers.networks import build_network
from teachers.registry import TeacherSpecError, register
from teachers.safe_pickle import PersistentRecord, child, collect_tensors, plain, safe_load

PRECOND_ONLY = ("use_fp16", "sigma_data", "logvar_channels")
PIXEL_ENCODERS = ("StandardRGBEncoder",)


def read_edm2_pickle(path: Path) -> tuple[nn.Module, dict]:
    data = safe_load(path)
    record = data.get("ema") if isinstance(data, dict) else data
    if not isinstance(record, PersistentRecord) or record.class_name != "Precond":
        found = getattr(record, "class_name", type(record).__name__)
        raise TeacherSpecError(f"{path}: expected an EDM2 `Precond` network under 'ema', found {found}"
                               + ("; for EDM files use `name: edm`" if found == "EDMPrecond" else ""))
    encoder = data.get("encoder") if isinstance(data, dict) else None
    enc_name = getattr(encoder, "class_name", None)
    if enc_name is not None and enc_name not in PIXEL_ENCODERS:
        raise TeacherSpecError(f"{path}: a latent EDM2 model (encoder {enc_name}); only pixel-space EDM2 "
                               "teachers are supported (latent ones need a local Stable Diffusion VAE)")
    tensors = collect_tensors(child(record, "unet"))
    check_tensor_bytes(tensors, path.stat().st_size, path)
    kw = plain(record.init_kwargs)
    precond = {k: kw.pop(k) for k in PRECOND_ONLY if k in kw}
    precond.update({k: kw[k] for k in ("img_resolution", "img_channels", "label_dim") if k in kw})
    net = build_checked("edm2_unet", kw, {k: v.shape for k, v in tensors.items()}, path, path.stat().st_size)
    return load_by_name(net, tensors, str(path)), precond


def smoke_network(image_shape=(3, 64, 64), num_classes: int = 0) -> nn.Module:
    c, res = int(image_shape[0]), int(image_shape[-1])
    mult, attn_res = smoke_levels(res)
    return build_network("edm2_unet", img_resolution=res, img_channels=c, label_dim=num_classes, model_channels=16,
                         channel_mult=mult, num_blocks=1, attn_resolutions=[attn_res], channels_per_head=16)


@register("edm2")
def load_edm2(path: str | None = None, *, smoke: bool = False, image_shape=None, num_classes: int | None = None,
              sigma_min: float | None = None, sigma_max: float | None = None) -> EDMTeacher:
    lo, hi = _sigma_range(sigma_min, sigma_max)
    if smoke:
        shape, classes = tuple(image_shape or (3, 64, 64)), int(num_classes or 0)
        return EDMTeacher(smoke_network(shape, classes), sigma_min=lo, sigma_max=hi, image_shape=shape,
                          num_classes=classes)
    p = require_file(path, "edm2", "an NVlabs EDM2 pixel-space network pickle (.pkl)")
    with refusing(p):
        net, precond = read_edm2_pickle(p)
        res, ch = int(precond["img_resolution"]), int(precond["img_channels"])
        teacher = EDMTeacher(net, sigma_min=lo, sigma_max=hi, sigma_data=float(precond.get("sigma_data", 0.5)),
                             image_shape=(ch, res, res), num_classes=int(precond.get("label_dim", 0)))
    teacher.file_sha256, teacher.licence = sha256_of(p), EDM_LICENCE
    return teacher
