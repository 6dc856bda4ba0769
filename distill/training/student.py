"""Building the student: a copy of the teacher's backbone when it has one, else a recipe network."""

from __future__ import annotations

import copy
import inspect

from distill.math.precond import ConsistencyStudent
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


def build_student(cfg, teacher) -> ConsistencyStudent:
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
        feeding = BackboneFeeding(teacher.sigma_data)
    return ConsistencyStudent(net, feeding, sigma_min=sigma_min, sigma_max=sigma_max,
                              sigma_data=teacher.sigma_data, image_shape=teacher.image_shape,
                              num_classes=getattr(teacher, "num_classes", 0))
