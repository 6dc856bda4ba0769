"""Networks a student (or a teacher adapter) can be built from, by name and constructor kwargs.

Every network here takes `(x_in, c_noise, cond)` and returns a tensor of x's shape: the EDM
F-parameterisation's raw output (EDM eq. 7). Names and kwargs go into student.json, so a student
is rebuilt with `build_network(name, **kwargs)`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from torch import nn

_NETWORKS: dict[str, Callable[..., nn.Module]] = {}
_MODULES = ("teachers.networks.small_unet", "teachers.networks.mlp", "teachers.networks.song_unet",
            "teachers.networks.dhariwal_unet", "teachers.networks.adm_unet",
            "teachers.networks.diffusers_unet", "teachers.networks.edm2_unet",
            "teachers.networks.diffusers_cond_unet")


def register_network(name: str):
    def wrap(cls):
        _NETWORKS[name] = cls
        return cls
    return wrap


def _import_all() -> None:
    for mod in _MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as err:
            if err.name != mod:
                raise


def available_networks() -> list[str]:
    _import_all()
    return sorted(_NETWORKS)


def build_network(name: str, **kwargs: Any) -> nn.Module:
    _import_all()
    if name not in _NETWORKS:
        raise ValueError(f"unknown network {name!r}; choose one of {', '.join(sorted(_NETWORKS))}")
    net = _NETWORKS[name](**kwargs)
    # Remember how to rebuild it (student.json); kwargs are plain JSON values.
    net.build_spec = {"name": name, **kwargs}
    return net
