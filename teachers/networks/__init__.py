"""Networks a student (or a teacher adapter) can be built from, by name and constructor kwargs.

Every network here takes `(x_in, c_noise, cond)` and returns a tensor of x's shape: the EDM
F-parameterisation's raw output (EDM eq. 7). Names and kwargs go into student.json, so a student
is rebuilt with `build_network(name, **kwargs)`.
"""

from __future__ import annotations

import importlib
import inspect
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
    # Remember how to rebuild it (student.json, teacher.json): every constructor argument, defaults included, so
    # that a later change of a default cannot silently rebuild a saved network differently.
    net.build_spec = {"name": name, **full_arguments(_NETWORKS[name], kwargs)}
    return net


def full_arguments(factory: Callable[..., nn.Module], kwargs: dict[str, Any]) -> dict[str, Any]:
    """kwargs completed with the factory's defaults that are plain JSON values (tuples become lists)."""
    out = {}
    for pname, param in inspect.signature(factory).parameters.items():
        if pname in kwargs:
            out[pname] = kwargs[pname]
        elif param.kind is param.KEYWORD_ONLY or param.kind is param.POSITIONAL_OR_KEYWORD:
            default = param.default
            if default is not param.empty and _is_json(default):
                out[pname] = list(default) if isinstance(default, tuple) else default
    out.update({k: v for k, v in kwargs.items() if k not in out})  # **kwargs of factories that take them
    return out


def _is_json(value: Any) -> bool:
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_is_json(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_json(v) for k, v in value.items())
    return False
