"""Registry of backbone feedings, so that a student saved with `feeding.spec()` is rebuilt alone."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from teachers.base import BackboneFeeding

_FEEDINGS: dict[str, Callable[..., BackboneFeeding]] = {"edm": BackboneFeeding}


def register_feeding(name: str):
    def wrap(cls):
        _FEEDINGS[name] = cls
        return cls
    return wrap


def build_feeding(spec: dict[str, Any]) -> BackboneFeeding:
    spec = dict(spec)
    name = spec.pop("name", "edm")
    if name not in _FEEDINGS:
        import teachers.registry as reg

        reg._import_builtins()  # feedings of optional teacher families register on import
    if name not in _FEEDINGS:
        raise ValueError(f"unknown backbone feeding {name!r}; known: {', '.join(sorted(_FEEDINGS))}")
    return _FEEDINGS[name](**spec)
