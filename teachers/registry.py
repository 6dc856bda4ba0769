"""Teacher registry: `teachers.load(spec)` turns a recipe's `teacher:` block into a Denoiser.

A spec is `{name: <registered>, ...kwargs}` or `{target: "package.module:factory", ...kwargs}` for a
teacher of the user's own; a factory returns an object satisfying `teachers.base.Denoiser`.

A recipe is code the user chose, so its `target` is imported. A spec read back from a file (student.json,
a .ckpt) is data: `load_recorded` accepts registered names only, at every level (a guidance teacher's inner
spec too), and never imports what a file names (DESIGN.md, "Metadata ... is data").
"""

from __future__ import annotations

import contextvars
import importlib
import inspect
from collections.abc import Callable, Mapping
from typing import Any

_TEACHERS: dict[str, Callable[..., Any]] = {}
# Modules that register teachers on import; imported lazily so heavy optional packages load on use.
_BUILTIN_MODULES = ("teachers.analytic", "teachers.patches", "teachers.edm", "teachers.openai_cm",
                    "teachers.ddpm", "teachers.guidance", "teachers.edm2", "teachers.diffusers_latent")


class TeacherSpecError(ValueError):
    """A teacher block that cannot be turned into a teacher (bad name, bad target, missing file)."""


# While a spec read from a file is being loaded: (the file, how the user can give the teacher instead).
_RECORDED: contextvars.ContextVar[tuple[str, str] | None] = contextvars.ContextVar("recorded_spec", default=None)


def register(name: str):
    def wrap(factory):
        _TEACHERS[name] = factory
        return factory
    return wrap


def _import_builtins() -> None:
    for mod in _BUILTIN_MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as err:
            if err.name != mod:  # a missing dependency inside a module that exists is a real error
                raise


def available() -> list[str]:
    _import_builtins()
    return sorted(_TEACHERS)


def resolve_target(target: str) -> Callable[..., Any]:
    """'package.module:attr' -> the attribute. Errors say what to write instead."""
    if ":" not in target:
        raise TeacherSpecError(f"teacher.target must look like 'package.module:factory'; got {target!r}")
    mod_name, attr = target.split(":", 1)
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as err:
        raise TeacherSpecError(f"teacher.target {target!r}: cannot import {mod_name!r} ({err}); "
                               "is the package installed or on PYTHONPATH?") from err
    try:
        return getattr(mod, attr)
    except AttributeError as err:
        raise TeacherSpecError(f"teacher.target {target!r}: module {mod_name!r} has no {attr!r}") from err


def load(spec: Mapping[str, Any] | Any):
    """Build a teacher from a recipe block. An object that already is a Denoiser is returned as is."""
    if not isinstance(spec, Mapping):
        if hasattr(spec, "denoise"):
            return spec
        raise TeacherSpecError(f"a teacher spec must be a mapping or a Denoiser, got {type(spec).__name__}")
    kwargs = dict(spec)
    name, target = kwargs.pop("name", None), kwargs.pop("target", None)
    smoke = bool(kwargs.pop("smoke", False))
    if (name is None) == (target is None):
        raise TeacherSpecError("teacher: give exactly one of `name` (one of "
                               f"{', '.join(available())}) or `target` ('package.module:factory')")
    if target is not None:
        if _RECORDED.get() is not None:
            source, how = _RECORDED.get()
            raise TeacherSpecError(f"{source}: the recorded teacher is code ({{target: {target!r}}}); metadata in a "
                                   f"file is data and is never imported from it. If you trust that code, {how}")
        factory = resolve_target(target)
    else:
        _import_builtins()
        if name not in _TEACHERS:
            raise TeacherSpecError(f"teacher.name: unknown teacher {name!r}; choose one of "
                                   f"{', '.join(sorted(_TEACHERS))}, or give teacher.target")
        factory = _TEACHERS[name]
    if smoke and "smoke" in inspect.signature(factory).parameters:
        kwargs["smoke"] = True  # the family's tiny random-weight variant (run.smoke, DESIGN.md)
    try:
        teacher = factory(**kwargs)
    except TypeError as err:
        raise TeacherSpecError(f"teacher {name or target}: {err}") from err
    for attr in ("denoise", "sigma_min", "sigma_max", "sigma_data", "image_shape"):
        if not hasattr(teacher, attr):
            raise TeacherSpecError(f"teacher {name or target} returned {type(teacher).__name__}, "
                                   f"which lacks `{attr}` (see teachers/base.py: Denoiser)")
    if hasattr(teacher, "spec") and isinstance(teacher.spec, dict) and not teacher.spec:
        teacher.spec = dict(spec)
    return teacher


def load_recorded(spec: Mapping[str, Any], source, how: str = "give the teacher yourself") -> Any:
    """The teacher a file recorded (student.json, a .ckpt): registered names only, nothing imported.

    `how` completes the refusal of a `target`, e.g. "pass it yourself: distill eval --teacher ...". Any
    error while rebuilding it is a TeacherSpecError naming the file.
    """
    from teachers.files import refusing

    if not isinstance(spec, Mapping):
        raise TeacherSpecError(f"{source}: the recorded teacher spec is a {type(spec).__name__}, not a mapping")
    token = _RECORDED.set((str(source), how))
    try:
        with refusing(source):
            return load(spec)
    finally:
        _RECORDED.reset(token)
