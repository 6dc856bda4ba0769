"""A restricted reader for NVlabs EDM / EDM2 network pickles that runs nothing from the file.

NVlabs pickles each network through `torch_utils.persistence`: a record holding the class name, its
constructor kwargs and the *whole source file* of the network module, which stock unpickling executes
(FACTS.md, "Checkpoint formats"). Here:

- only the globals a real EDMPrecond + loss + augment pipe needs are resolved (`ALLOWED`), each to a
  harmless stand-in; any other global is refused with `RefusedPickleError`;
- a persistence record becomes a `PersistentRecord` (plain data); its source is kept as a string and
  never executed, compiled or imported;
- `torch.storage._load_from_bytes` (a nested `torch.save` blob per tensor storage, which torch would
  load with weights_only=False) is rerouted to `torch.load(BytesIO(b), weights_only=True)`;
- a file that runs nothing can still attack the reader itself, so: the allowed globals are never changed
  (BUILD, the only opcode that sets attributes, is accepted on fresh data objects only); the memo is a dict
  (CPython's C unpickler grows an array to whatever index a file names: 1 GB from 10 bytes); every tensor
  record is checked against its storage before a view is made; and any failure is a RefusedPickleError.

`collect_tensors(record)` then flattens a record tree into a state dict, so the project's own network,
built from `record.init_kwargs`, loads the tensors by name. It and `plain` walk unpickled data, which may
share references (exponentially many paths in a small file), loop or nest deeply: both refuse cycles,
shared submodules, nesting deeper than MAX_DEPTH and more than MAX_VALUES values.
"""

from __future__ import annotations

import io
import math
import pickle
import reprlib
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import torch

from teachers.registry import TeacherSpecError

# An EDM record tree is ~6 records deep and its kwargs ~3 levels, with ~30 values: generous bounds.
MAX_DEPTH = 100
MAX_VALUES = 100_000
# torch writes each storage of a pickled module as a legacy-format torch.save blob (StorageBase.__reduce__);
# a zip-format blob could hold a deflated record that inflates far past the file's size.
ZIP_MAGIC = b"PK\x03\x04"


class RefusedPickleError(TeacherSpecError, pickle.UnpicklingError):
    """The file asks for something an NVlabs network pickle never needs; it was not loaded."""


def _short(obj) -> str:
    """repr for error messages, bounded in length and depth (a hostile value may be huge or deeply nested)."""
    return reprlib.repr(obj)


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

    state: Mapping = MappingProxyType({})  # read-only default; __setstate__ gives each instance its own

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
    if not isinstance(b, bytes) or b.startswith(ZIP_MAGIC):
        raise RefusedPickleError("a nested tensor blob is not a legacy torch.save of a storage (what torch "
                                 "writes into pickles), refused")
    try:
        return torch.load(io.BytesIO(b), weights_only=True, map_location="cpu")
    except Exception as err:  # weights-only refusal, or not a torch blob at all
        raise RefusedPickleError(f"a nested tensor blob is not plain tensor data and was refused "
                                 f"({type(err).__name__}: {str(err)[:300]})") from err


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    return data  # a Parameter is only its tensor here; hooks are dropped


def _check_tensor_record(storage: torch.storage.TypedStorage, offset, size, stride) -> None:
    """The view (offset, size, stride) must lie inside the storage and hold no more elements than it: a
    stride-0 or overlapping view of a few bytes would become gigabytes once copied into a network."""
    def ints(v):
        return isinstance(v, tuple | list) and len(v) <= 64 and all(type(i) is int for i in v)

    if type(offset) is not int or not ints(size) or not ints(stride) or len(size) != len(stride):
        raise RefusedPickleError(f"malformed tensor record (offset {_short(offset)}, size {_short(size)}, "
                                 f"stride {_short(stride)})")
    if offset < 0 or min((*size, *stride), default=0) < 0:
        raise RefusedPickleError(f"tensor record with a negative offset, size or stride ({offset}, {size}, "
                                 f"{stride})")
    elements = storage._size()  # (len() is the same number, but warns that TypedStorage is deprecated)
    numel, available = math.prod(size), elements - offset
    reach = 1 + sum((n - 1) * s for n, s in zip(size, stride, strict=True)) if numel else 0
    if numel > available or reach > available:
        raise RefusedPickleError(f"tensor record of size {tuple(size)}, stride {tuple(stride)} at offset "
                                 f"{offset} does not fit its storage of {elements} elements")


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    if not isinstance(storage, torch.storage.TypedStorage):
        raise RefusedPickleError(f"tensor record built on a {type(storage).__name__}, not a typed storage")
    _check_tensor_record(storage, storage_offset, size, stride)
    return torch._utils._rebuild_tensor_v2(storage, storage_offset, tuple(size), tuple(stride), False,
                                           OrderedDict())


def _reconstructor(cls, base, state):
    # copyreg._reconstructor restricted to the stand-ins above: no foreign class is ever instantiated.
    if cls not in (ModuleRecord, EasyDict, OrderedDict) or base is not object:
        raise RefusedPickleError(f"copyreg._reconstructor asked to build {_short(cls)}")
    obj = object.__new__(cls)
    return obj


def _dtype(obj, align=False, copy=False):
    # Always a fresh descriptor (NVlabs files ask for copy=True anyway), so a later BUILD (dtype.__setstate__)
    # can only ever reach this copy, never numpy's shared built-in descriptors.
    return np.dtype(obj, bool(align), True)


def _numpy_scalar():
    core = getattr(np, "_core", None) or np.core
    return core.multiarray.scalar


# The exact allow-list of FACTS.md ("Checkpoint formats"), each mapped to what it becomes here.
ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): OrderedDict,
    ("torch.nn.modules.container", "ModuleDict"): ModuleRecord,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("numpy", "dtype"): _dtype,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar(),
    ("numpy._core.multiarray", "scalar"): _numpy_scalar(),
    ("torch.storage", "_load_from_bytes"): _load_from_bytes,
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
    ("copyreg", "_reconstructor"): _reconstructor,
    ("dnnlib.util", "EasyDict"): EasyDict,
    ("dnnlib", "EasyDict"): EasyDict,
}


# Objects a BUILD opcode (set state) may touch: fresh instances made while loading this file, never a class,
# a function or anything else shared with the rest of the process.
BUILDABLE = (ModuleRecord, EasyDict, OrderedDict, np.dtype)


class _RestrictedUnpickler(pickle._Unpickler):
    """The pure-Python unpickler (its memo is a dict, its opcodes can be overridden), restricted."""

    dispatch = dict(pickle._Unpickler.dispatch)

    def load_build(self):
        inst = self.stack[-2]  # the state is on top
        if isinstance(inst, type) or not isinstance(inst, BUILDABLE):
            raise RefusedPickleError(f"refused: the pickle sets the state of {_short(inst)}, which an NVlabs "
                                     "network pickle never does; the allowed objects cannot be changed")
        super().load_build()

    dispatch[pickle.BUILD[0]] = load_build

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
    except Exception as err:  # noqa: BLE001 - whatever a malformed file trips, the answer is a refusal
        raise RefusedPickleError(f"{name}: not a readable network pickle "
                                 f"({type(err).__name__}: {str(err)[:300]})") from None


def _children(state) -> dict:
    mods = state.get("_modules") if isinstance(state, Mapping) else None
    if not isinstance(mods, Mapping | type(None)):
        raise RefusedPickleError(f"_modules is a {type(mods).__name__}, not a mapping of submodules")
    return {k: v for k, v in (mods or {}).items() if v is not None}


def collect_tensors(obj, prefix: str = "") -> dict[str, torch.Tensor]:
    """Flatten a record tree (PersistentRecord / ModuleRecord) into {dotted name: tensor}, as state_dict().

    Each record is visited once: one met again is a cycle (on the current path) or a shared submodule, which
    NVlabs networks never have and which would multiply the names walked; both are refused, as is depth.
    """
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    stack = [(obj, prefix, 0, ())]  # (record, name prefix, depth, ids of the records above it)
    while stack:
        node, pre, depth, above = stack.pop()
        where = pre.rstrip(".") or "<root>"
        if id(node) in above:
            raise RefusedPickleError(f"the network record refers to itself at {where} (a cycle)")
        if id(node) in seen:
            raise RefusedPickleError(f"the submodule at {where} is shared with another name; refused")
        if depth > MAX_DEPTH:
            raise RefusedPickleError(f"network records nested too deep (over {MAX_DEPTH} levels) at {where}")
        state = node.state if isinstance(node, PersistentRecord | ModuleRecord) else None
        if not isinstance(state, Mapping):
            raise RefusedPickleError(f"expected a network record at {where}, got {type(node).__name__}")
        seen.add(id(node))
        non_persistent = state.get("_non_persistent_buffers_set") or ()
        for group in ("_parameters", "_buffers"):
            tensors = state.get(group) or {}
            if not isinstance(tensors, Mapping):
                raise RefusedPickleError(f"{group} at {where} is a {type(tensors).__name__}, not a mapping")
            for key, value in tensors.items():
                if isinstance(value, torch.Tensor) and key not in non_persistent:
                    out[f"{pre}{key}"] = value
        kids = list(_children(state).items())
        stack += [(kid, f"{pre}{key}.", depth + 1, (*above, id(node))) for key, kid in reversed(kids)]
    return out


def child(record, name: str):
    """The submodule record `name` of a record (e.g. EDMPrecond's `model`), or KeyError naming what exists."""
    kids = _children(record.state)
    if name not in kids:
        raise KeyError(f"{getattr(record, 'class_name', 'record')} has no submodule {name!r} "
                       f"(has: {', '.join(map(str, kids)) or 'none'})")
    return kids[name]


def plain(value):
    """numpy scalars and EasyDicts in recorded kwargs -> plain JSON-able Python values (a fresh tree).

    Refuses cycles, nesting deeper than MAX_DEPTH and, since shared references are copied once per path,
    trees that would expand to more than MAX_VALUES values."""
    count = 0

    def walk(v, depth: int, above: frozenset):
        nonlocal count
        count += 1
        if count > MAX_VALUES:
            raise RefusedPickleError(f"recorded values expand to more than {MAX_VALUES} items (shared references "
                                     "repeated over and over); refused")
        if depth > MAX_DEPTH:
            raise RefusedPickleError(f"recorded values nested too deep (over {MAX_DEPTH} levels); refused")
        if isinstance(v, dict | list | tuple):
            if id(v) in above:
                raise RefusedPickleError("recorded values contain themselves (a cycle); refused")
            inner = above | {id(v)}
            if isinstance(v, dict):
                return {str(k): walk(x, depth + 1, inner) for k, x in v.items()}
            return [walk(x, depth + 1, inner) for x in v]
        if isinstance(v, np.generic):
            return v.item()
        return v

    return walk(value, 0, frozenset())
