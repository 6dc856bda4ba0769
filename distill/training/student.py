"""Building the student: a copy of the teacher's backbone when it has one, else a recipe network."""

from __future__ import annotations

import copy
import inspect
import warnings

from distill.math.precond import ConsistencyStudent
from distill.math.trigflow import TrigFlowFeeding
from distill.methods.plan import boundary_for
from teachers.base import BackboneFeeding
from teachers.networks import _NETWORKS, _import_all, build_network


def network_spec_for(network: dict, teacher) -> dict:
    """The recipe's network block, completed with what the teacher dictates (channels, classes)."""
    spec = dict(network)
    name = spec.get("name")
    _import_all()
    if name not in _NETWORKS:
        raise ValueError(f"student.network.name: unknown network {name!r}; choose one of "
                         f"{', '.join(sorted(_NETWORKS))}")
    params = inspect.signature(_NETWORKS[name]).parameters
    shape = tuple(teacher.image_shape)
    implied = {"in_channels": shape[0], "out_channels": shape[0], "dim": shape[0] if len(shape) == 1 else None,
               "num_classes": int(getattr(teacher, "num_classes", 0)), "img_resolution": shape[-1],
               "img_channels": shape[0], "label_dim": int(getattr(teacher, "num_classes", 0))}
    for key, value in implied.items():
        if key in params and key not in spec and value is not None:
            spec[key] = value
    return spec


def student_sigma_range(cfg, teacher) -> tuple[float, float]:
    """The teacher's range intersected with the recipe's (DESIGN.md, "The student")."""
    lo = max(float(teacher.sigma_min), float(cfg.student.sigma_min))
    hi = min(float(teacher.sigma_max), float(cfg.student.sigma_max))
    if not lo < hi:
        raise ValueError(f"student sigma range is empty: teacher [{teacher.sigma_min}, {teacher.sigma_max}] "
                         f"and recipe [{cfg.student.sigma_min}, {cfg.student.sigma_max}] do not overlap")
    return lo, hi


def warn_fast_time_embedding(spec: dict) -> None:
    """sCM sec. 4.1: the JVP differentiates the time embedding, and fast features (a large Fourier or
    positional scale) make that derivative large and training unstable. On toy2d, sCD with small_unet/mlp's
    embedding at 250x (the old default) left the 1-step error at sigma = 80 at 1.42, 0.37 at 1x (300 steps)."""
    fast = float(spec.get("embedding_scale", 1.0)) > 10 or \
        (spec.get("name") == "ncsnpp" and spec.get("embedding_type", "fourier") == "fourier") or \
        spec.get("embedding_type") == "fourier"
    if fast:
        warnings.warn(f"student.network {spec.get('name')}: its time embedding has fast features (a Fourier "
                      "embedding of scale 16, or embedding_scale > 10); sCM's continuous-time training needs a "
                      "smooth one (positional, embedding_type: positional / embedding_scale: 1)", stacklevel=3)


def build_student(cfg, teacher) -> ConsistencyStudent:
    """The method decides the parameterisation (distill/methods/plan.py: cm, or trigflow for sCD/sCT); a fresh
    TrigFlow network is fed as sCM prescribes (distill/math/trigflow.py), a copied backbone as the teacher feeds it."""
    from distill.methods.plan import METHODS

    parameterisation = METHODS[cfg.method.name].parameterisation
    init = cfg.student.init
    backbone = getattr(teacher, "backbone", None)
    if init == "teacher" and backbone is None:
        raise ValueError(f"student.init=teacher, but {type(teacher).__name__} has no backbone network; "
                         "use student.init=network (or auto) and set student.network")
    sigma_min, sigma_max = student_sigma_range(cfg, teacher)
    if init == "teacher" or (init == "auto" and backbone is not None):
        net = copy.deepcopy(backbone).float().train().requires_grad_(True)
        feeding = teacher.feeding
        if not hasattr(net, "build_spec"):
            raise ValueError(f"the teacher's backbone {type(backbone).__name__} has no build_spec, so a "
                             "student copied from it could not be rebuilt; build it via "
                             "teachers.networks.build_network, or use student.init=network")
    else:
        from omegaconf import OmegaConf

        network = OmegaConf.to_container(cfg.student.network) if not isinstance(cfg.student.network, dict) \
            else cfg.student.network
        net = build_network(**network_spec_for(network, teacher))
        feeding = (TrigFlowFeeding if parameterisation == "trigflow" else BackboneFeeding)(teacher.sigma_data)
        if parameterisation == "trigflow":
            warn_fast_time_embedding(net.build_spec)
    net = with_adapters(net, cfg.student)
    boundary = boundary_for(cfg, teacher)
    if boundary is not None and not hasattr(feeding, "timestep"):
        raise ValueError(f"method.name={cfg.method.name} parameterises a copy of the teacher's discrete-time network "
                         "(LCMScheduler's scalings act on its timestep): set student.init=teacher")
    return ConsistencyStudent(net, feeding, sigma_min=sigma_min, sigma_max=sigma_max,
                              sigma_data=teacher.sigma_data, image_shape=teacher.image_shape,
                              num_classes=getattr(teacher, "num_classes", 0), parameterisation=parameterisation,
                              boundary=boundary)


def with_adapters(net, student_cfg):
    """student.guidance_embedding / student.lora_rank: LCM's student adapters on the teacher's network
    (teachers/networks/diffusers_cond_unet.py); only the adapted network's new or LoRA weights train."""
    s = student_cfg
    if not (s.guidance_embedding or s.lora_rank):
        return net
    if not hasattr(net, "adapted"):
        raise ValueError("student.guidance_embedding and student.lora_rank adapt a diffusers UNet2DConditionModel "
                         f"copied from the teacher; this student's network is {type(net).__name__}")
    lora = {"rank": s.lora_rank, "alpha": s.lora_alpha, "targets": s.lora_targets} if s.lora_rank else None
    return net.adapted(guidance_embedding_dim=s.guidance_embedding, lora=lora)
