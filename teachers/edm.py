"""NVlabs EDM teachers (Karras et al. 2022): `teacher: {name: edm, path: F.pkl}` or `path: F.safetensors`.

A `.pkl` is read by the restricted unpickler (`teachers/safe_pickle.py`): the EDMPrecond persistence
record gives the constructor kwargs, the project's own SongUNet/DhariwalUNet is built from them, and the
tensors are loaded by name. Nothing from the file is executed. The same network can also be stored as
`F.safetensors` plus `F.json` (written by `save_edm`), the format `distill train-teacher` writes.

The denoiser is EDM's preconditioning (Table 1) around the network, `teachers.base.BackboneFeeding`,
so a student copied from the backbone is fed exactly as the teacher feeds it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from torch import nn

from teachers.base import BackboneFeeding
from teachers.files import (
    atomic_write_bytes,
    build_checked,
    check_tensor_bytes,
    load_by_name,
    refusing,
    require_file,
    sha256_of,
    smoke_levels,
)
from teachers.network_teacher import NetworkTeacher
from teachers.networks import build_network
from teachers.registry import TeacherSpecError, register
from teachers.safe_pickle import PersistentRecord, RefusedPickleError, child, collect_tensors, plain, safe_load

EDM_LICENCE = "CC BY-NC-SA 4.0"  # NVlabs EDM code and weights (FACTS.md); recorded with the student
# EDMPrecond's defaults are sigma in [0, inf); the range a sampler uses is EDM's Table 1 (0.002, 80).
DEFAULT_SIGMA_MIN, DEFAULT_SIGMA_MAX = 0.002, 80.0
MODEL_TYPES = {"SongUNet": "song_unet", "DhariwalUNet": "dhariwal_unet"}
PRECOND_KEYS = ("img_resolution", "img_channels", "label_dim", "use_fp16", "sigma_min", "sigma_max",
                "sigma_data", "model_type")
FORMAT = "distill-edm"


class EDMTeacher(NetworkTeacher):
    """D(x, sigma, cond) = c_skip x + c_out F(c_in x, ln(sigma)/4, cond), F = the backbone."""

    def __init__(self, net: nn.Module, *, sigma_min: float, sigma_max: float, sigma_data: float = 0.5,
                 image_shape: tuple[int, ...], num_classes: int = 0):
        super().__init__(net, BackboneFeeding(sigma_data), sigma_min=sigma_min, sigma_max=sigma_max,
                         sigma_data=sigma_data, image_shape=image_shape, num_classes=num_classes)


def _sigma_range(sigma_min, sigma_max) -> tuple[float, float]:
    lo = float(sigma_min) if sigma_min and float(sigma_min) > 0 else DEFAULT_SIGMA_MIN
    hi = float(sigma_max) if sigma_max is not None and math.isfinite(float(sigma_max)) else DEFAULT_SIGMA_MAX
    return lo, hi


def network_from_precond(kwargs: dict[str, Any], source: str) -> tuple[str, dict, dict]:
    """EDMPrecond constructor kwargs -> (the project's network name, its kwargs, the precond's own settings)."""
    kw = plain(kwargs)
    precond = {k: kw.pop(k) for k in PRECOND_KEYS if k in kw}
    model_type = precond.get("model_type", "DhariwalUNet")
    if model_type not in MODEL_TYPES:
        raise TeacherSpecError(f"{source}: model_type {model_type!r} is not one of {', '.join(MODEL_TYPES)}")
    channels = int(precond["img_channels"])
    return MODEL_TYPES[model_type], dict(kw, img_resolution=int(precond["img_resolution"]), in_channels=channels,
                                         out_channels=channels, label_dim=int(precond.get("label_dim", 0))), precond


def read_edm_pickle(path: Path) -> tuple[nn.Module, dict]:
    data = safe_load(path)
    record = data.get("ema") if isinstance(data, dict) else data
    if not isinstance(record, PersistentRecord):
        raise RefusedPickleError(f"{path}: no network record under 'ema' (found {type(record).__name__})")
    if record.class_name != "EDMPrecond":
        hint = "; for EDM2 files use `name: edm2`" if record.class_name == "Precond" else ""
        raise TeacherSpecError(f"{path}: the network is a {record.class_name}; `edm` reads EDMPrecond "
                               f"networks (VP/VE/iDDPM preconditionings are not supported){hint}")
    if record.init_args:
        raise TeacherSpecError(f"{path}: EDMPrecond was built with positional arguments; expected kwargs only")
    tensors = collect_tensors(child(record, "model"))
    check_tensor_bytes(tensors, path.stat().st_size, path)
    name, kwargs, precond = network_from_precond(record.init_kwargs, str(path))
    net = build_checked(name, kwargs, {k: v.shape for k, v in tensors.items()}, path, path.stat().st_size)
    return load_by_name(net, tensors, str(path)), precond


def save_edm(net: nn.Module, path: str | Path, *, sigma_min: float, sigma_max: float, sigma_data: float,
             image_shape, num_classes: int = 0, licence: str | None = None, extra: dict | None = None) -> Path:
    """Write `path` (.safetensors) and its `.json` config, which `teachers.load({name: edm, path})` reads.

    `extra` adds fields to the JSON (`distill train-teacher`: `data`, the training data's record, which
    evaluation uses as the FID reference; `training`; `eval`). Both files are written atomically."""
    from safetensors.torch import save

    if not hasattr(net, "build_spec"):
        raise ValueError("save_edm needs a network built by teachers.networks.build_network (no build_spec)")
    path = Path(path).with_suffix(".safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, save({k: v.detach().contiguous().cpu() for k, v in net.state_dict().items()}))
    config = {"format": FORMAT, "version": 1, "network": net.build_spec, "sigma_min": sigma_min,
              "sigma_max": sigma_max, "sigma_data": sigma_data, "image_shape": list(image_shape),
              "num_classes": int(num_classes), "licence": licence, **(extra or {})}
    atomic_write_bytes(path.with_suffix(".json"), (json.dumps(config, indent=2) + "\n").encode())
    return path


def read_edm_safetensors(path: Path, config: str | Path | None) -> tuple[nn.Module, dict]:
    from safetensors import safe_open
    from safetensors.torch import load_file

    cfg_path = Path(config) if config else path.with_suffix(".json")
    if not cfg_path.exists():
        raise FileNotFoundError(f"teacher edm: {cfg_path} does not exist; expected the JSON config written "
                                f"beside {path.name} (network name and kwargs, sigma range, image shape)")
    with refusing(cfg_path):
        cfg = json.loads(cfg_path.read_text())
        spec = dict(cfg["network"])
    with safe_open(str(path), "pt") as f:  # the header only: names and shapes, nothing allocated yet
        shapes = {_edm_name(k): tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    net = build_checked(spec.pop("name"), spec, shapes, cfg_path, path.stat().st_size)
    return load_by_name(net, {_edm_name(k): v for k, v in load_file(str(path)).items()}, str(path)), cfg


def _edm_name(key: str) -> str:
    return key[len("model."):] if key.startswith("model.") else key  # EDMPrecond-style names


def smoke_network(image_shape=(3, 32, 32), num_classes: int = 0) -> nn.Module:
    """A tiny random DDPM++ SongUNet of the given shape (run.smoke)."""
    c, res = int(image_shape[0]), int(image_shape[-1])
    mult, attn_res = smoke_levels(res)
    return build_network("song_unet", img_resolution=res, in_channels=c, out_channels=c, label_dim=num_classes,
                         model_channels=16, channel_mult=mult, num_blocks=1, attn_resolutions=[attn_res],
                         dropout=0.0)


@register("edm")
def load_edm(path: str | None = None, *, config: str | None = None, smoke: bool = False,
             image_shape=None, num_classes: int | None = None, sigma_min: float | None = None,
             sigma_max: float | None = None) -> EDMTeacher:
    """An EDM teacher from an NVlabs `.pkl` or a `.safetensors` + `.json` pair (smoke: tiny, random, no file)."""
    if smoke:
        shape = tuple(image_shape or (3, 32, 32))
        lo, hi = _sigma_range(sigma_min, sigma_max)
        return EDMTeacher(smoke_network(shape, int(num_classes or 0)), sigma_min=lo, sigma_max=hi,
                          image_shape=shape, num_classes=int(num_classes or 0))
    p = require_file(path, "edm", "an NVlabs EDM network pickle (.pkl) or a .safetensors file with its .json")
    with refusing(p):
        teacher = _read_edm(p, config, sigma_min, sigma_max)
    teacher.file_sha256 = sha256_of(p)
    return teacher


def _read_edm(p: Path, config, sigma_min, sigma_max) -> EDMTeacher:
    if p.suffix == ".pkl":
        net, precond = read_edm_pickle(p)
        res, ch = int(precond["img_resolution"]), int(precond["img_channels"])
        shape, classes, licence = (ch, res, res), int(precond.get("label_dim", 0)), EDM_LICENCE
        sd = float(precond.get("sigma_data", 0.5))
        lo, hi = _sigma_range(sigma_min if sigma_min is not None else precond.get("sigma_min"),
                              sigma_max if sigma_max is not None else precond.get("sigma_max"))
    elif p.suffix == ".safetensors":
        net, cfg = read_edm_safetensors(p, config)
        shape, classes, licence = tuple(cfg["image_shape"]), int(cfg.get("num_classes", 0)), cfg.get("licence")
        sd = float(cfg.get("sigma_data", 0.5))
        lo, hi = _sigma_range(sigma_min if sigma_min is not None else cfg.get("sigma_min"),
                              sigma_max if sigma_max is not None else cfg.get("sigma_max"))
    else:
        raise TeacherSpecError(f"teacher edm: {p} is neither a .pkl nor a .safetensors file")
    teacher = EDMTeacher(net, sigma_min=lo, sigma_max=hi, sigma_data=sd, image_shape=shape, num_classes=classes)
    teacher.licence = licence
    if p.suffix == ".safetensors":
        teacher.training_data = cfg.get("data")  # `distill train-teacher`'s record: evaluation's FID reference
    return teacher
