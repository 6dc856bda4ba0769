"""A restricted reader for NVlabs EDM / EDM2 network pickles that runs nothing from the file.

NVlabs pickles each network through `torch_utils.persistence`: a record holding the class name, its
constructor kwargs and the *whole source file* of the network module, which stock unpickling executes
(FACTS.md, "Checkpoint formats"). Here:

- only the globals a real EDMPrecond + loss + augment pipe needs are resolved (`ALLOWED`), each to a
  harmless stand-in; any other global is refused with `RefusedPickleError`;
- a persistence record becomes a `PersistentRecord` (plain data); its source is kept as a string and
  never executed, compiled or imported;
- `torch.storage._load_from_bytes` (a nested `torch.save` blob per tensor storage, which torch would
  load with weights_only=False) is rerouted to `torch.load(BytesIO(b), weights_only=True)`.

`collect_tensors(record)` then flattens a record tree into a state dict, so the project's own network,
built from `record.init_kwargs`, loads the tensors by name.
"""

from __future__ import annotations

import io
import pickle
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from teachers.registry import TeacherSpecError


class RefusedPickleError(TeacherSpecError, pickle.UnpicklingError):
    """The file asks for something an NVlabs network pickle never needs; it was not loaded."""


@dataclass
class PersistentRecord:
    """What `torch_utils.persistence._reconstruct_persistent_obj(meta)` would have rebuilt, as data."""

    class_name: str
    state: dict
    module_src: str = field(repr=False, default="")
    version: int | None = None

    @property
    def init_kwargs(self) -> dict:
        return dict(self.state.get("_init_kwargs") or {})

    @property
    def init_args(self) -> tuple:
        return tuple(self.state.get("_init_args") or ())


class ModuleRecord:
    """Stand-in for torch.nn.ModuleDict (and copyreg-rebuilt modules): keeps the pickled state only."""

    state: dict = {}  # replaced (never mutated) by __setstate__

    def __setstate__(self, state):
        self.state = dict(state) if isinstance(state, dict) else {"state": state}


class EasyDict(dict):
    """Stand-in for dnnlib's EasyDict: a dict with attribute access and nothing else."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError as err:
            raise AttributeError(name) from err


def _reconstruct_persistent_obj(meta) -> PersistentRecord:
    # The record is data: the embedded `module_src` is stored, never exec'd (it would define -- or do --
    # anything its author wrote).
    if not isinstance(meta, dict) or not isinstance(meta.get("class_name"), str):
        raise RefusedPickleError("malformed persistence record (expected a dict with a class_name)")
    state = meta.get("state")
    return PersistentRecord(class_name=meta["class_name"], state=dict(state) if isinstance(state, dict) else {},
                            module_src=str(meta.get("module_src", "")), version=meta.get("version"))


def _load_from_bytes(b: bytes):
    """A nested tensor-storage blob, loaded weights-only (a hostile blob is refused, not run)."""
    try:
        return torch.load(io.BytesIO(b), weights_only=True, map_location="cpu")
    except Exception as err:  # weights-only refusal, or not a torch blob at all
        raise RefusedPickleError(f"a nested tensor blob is not plain tensor data and was refused "
                                 f"({type(err).__name__}: {str(err)[:300]})") from err


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    return data  # a Parameter is only its tensor here; hooks are dropped


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    if not isinstance(storage, torch.storage.TypedStorage | torch.UntypedStorage):
        raise RefusedPickleError(f"tensor rebuilt from a {type(storage).__name__}, not a storage")
    return torch._utils._rebuild_tensor_v2(storage, storage_offset, tuple(size), tuple(stride), False,
                                           OrderedDict())


def _reconstructor(cls, base, state):
    # copyreg._reconstructor restricted to the stand-ins above: no foreign class is ever instantiated.
    if cls not in (ModuleRecord, EasyDict, OrderedDict) or base is not object:
        raise RefusedPickleError(f"copyreg._reconstructor asked to build {cls!r}")
    obj = object.__new__(cls)
    return obj


def _numpy_scalar():
    core = getattr(np, "_core", None) or np.core
    return core.multiarray.scalar


# The exact allow-list of FACTS.md ("Checkpoint formats"), each mapped to what it becomes here.
ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): OrderedDict,
    ("torch.nn.modules.container", "ModuleDict"): ModuleRecord,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar(),
    ("numpy._core.multiarray", "scalar"): _numpy_scalar(),
    ("torch.storage", "_load_from_bytes"): _load_from_bytes,
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
    ("copyreg", "_reconstructor"): _reconstructor,
    ("dnnlib.util", "EasyDict"): EasyDict,
    ("dnnlib", "EasyDict"): EasyDict,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        try:
            return ALLOWED[(module, name)]
        except KeyError:
            raise RefusedPickleError(
                f"refused: the pickle asks for the global {module}.{name}, which an NVlabs network pickle "
                "never needs; loading it could run code, so nothing was loaded "
                "(allowed: teachers/safe_pickle.py ALLOWED)") from None

    def persistent_load(self, pid):
        raise RefusedPickleError(f"refused: unexpected persistent id {pid!r} (not an NVlabs network pickle)")


def safe_load(source: str | Path | bytes | io.IOBase) -> Any:
    """Unpickle an NVlabs pickle as data. Raises RefusedPickleError naming the file and the reason."""
    name = "<bytes>" if isinstance(source, bytes | bytearray) else str(getattr(source, "name", source))
    try:
        if isinstance(source, bytes | bytearray):
            return _RestrictedUnpickler(io.BytesIO(source)).load()
        if isinstance(source, io.IOBase):
            return _RestrictedUnpickler(source).load()
        with open(source, "rb") as f:
            return _RestrictedUnpickler(f).load()
    except RefusedPickleError as err:
        raise RefusedPickleError(f"{name}: {err}") from None
    except (pickle.UnpicklingError, EOFError, AttributeError, TypeError, ValueError) as err:
        raise RefusedPickleError(f"{name}: not a readable network pickle ({type(err).__name__}: {err})") from err


def _children(state: dict) -> dict:
    mods = state.get("_modules") or {}
    return {k: v for k, v in mods.items() if v is not None}


def collect_tensors(obj, prefix: str = "") -> dict[str, torch.Tensor]:
    """Flatten a record tree (PersistentRecord / ModuleRecord) into {dotted name: tensor}, as state_dict()."""
    state = obj.state if isinstance(obj, PersistentRecord | ModuleRecord) else None
    if state is None:
        raise RefusedPickleError(f"expected a network record at {prefix or '<root>'}, got {type(obj).__name__}")
    out: dict[str, torch.Tensor] = {}
    non_persistent = set(state.get("_non_persistent_buffers_set") or ())
    for group in ("_parameters", "_buffers"):
        for key, value in (state.get(group) or {}).items():
            if isinstance(value, torch.Tensor) and key not in non_persistent:
                out[prefix + key] = value
    for key, child in _children(state).items():
        out.update(collect_tensors(child, f"{prefix}{key}."))
    return out


def child(record, name: str):
    """The submodule record `name` of a record (e.g. EDMPrecond's `model`), or KeyError naming what exists."""
    kids = _children(record.state)
    if name not in kids:
        raise KeyError(f"{getattr(record, 'class_name', 'record')} has no submodule {name!r} "
                       f"(has: {', '.join(kids) or 'none'})")
    return kids[name]


def plain(value):
    """numpy scalars and EasyDicts in recorded kwargs -> plain JSON-able Python values."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value
