"""Test helper: write pickles with the layout of NVlabs EDM/EDM2 files, and hostile variants of them.

NVlabs' `torch_utils.persistence` reduces each network module to
`_reconstruct_persistent_obj(dict(type='class', version=6, module_src=<whole source file>,
class_name=..., state=<the module's __dict__>))`; ModuleDicts, Parameters and tensors pickle the
ordinary way (`_rebuild_parameter`, `_rebuild_tensor_v2`, `torch.storage._load_from_bytes`). To emit
the same global names without NVlabs' code, stand-in modules named `torch_utils.persistence` and
`dnnlib.util` are put in sys.modules only while pickling.
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import sys
import types
from collections import OrderedDict

import numpy as np
import torch
from torch import nn

PERSISTENCE_VERSION = 6


def _never_called(meta):  # pickled by reference only
    raise AssertionError("the test's persistence stand-in must never run")


class EasyDict(dict):
    pass


@contextlib.contextmanager
def fake_nvlabs_modules():
    names = ["torch_utils", "torch_utils.persistence", "dnnlib", "dnnlib.util"]
    saved = {n: sys.modules.get(n) for n in names}
    mods = {n: types.ModuleType(n) for n in names}
    _never_called.__module__, _never_called.__qualname__ = "torch_utils.persistence", "_reconstruct_persistent_obj"
    mods["torch_utils.persistence"]._reconstruct_persistent_obj = _never_called
    EasyDict.__module__, EasyDict.__qualname__ = "dnnlib.util", "EasyDict"
    mods["dnnlib.util"].EasyDict = EasyDict
    sys.modules.update(mods)
    try:
        yield
    finally:
        for n, m in saved.items():
            if m is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = m


class NVlabsPickler(pickle.Pickler):
    """Pickles project nn.Modules as persistence records (class name = the Python class name)."""

    def __init__(self, f, module_src: str, init_kwargs: dict[int, dict], class_names: dict[int, str]):
        super().__init__(f, protocol=4)
        self.module_src, self.init_kwargs, self.class_names = module_src, init_kwargs, class_names

    def reducer_override(self, obj):
        if not isinstance(obj, nn.Module) or isinstance(obj, nn.ModuleDict):
            return NotImplemented
        state = {"training": False, "_parameters": OrderedDict(obj._parameters),
                 "_buffers": OrderedDict(obj._buffers), "_non_persistent_buffers_set": set(),
                 "_modules": OrderedDict(obj._modules),
                 "_init_args": (), "_init_kwargs": self.init_kwargs.get(id(obj))}
        if hasattr(obj, "skip_scale"):  # EDM stores np.float64 here: exercises numpy.dtype / scalar
            state["skip_scale"] = np.float64(obj.skip_scale)
        meta = dict(type="class", version=PERSISTENCE_VERSION, module_src=self.module_src,
                    class_name=self.class_names.get(id(obj), type(obj).__name__), state=state)
        return _never_called, (meta,)


class EDMPreconStandIn(nn.Module):
    """Only a container: pickled as the EDMPrecond (or EDM2 Precond) record holding `model`/`unet`."""

    def __init__(self, net: nn.Module, attr: str = "model"):
        super().__init__()
        self.add_module(attr, net)


def edm_pickle_bytes(net: nn.Module, precond_kwargs: dict, *, module_src: str = "# network source\n",
                     precond_class: str = "EDMPrecond", attr: str = "model", extra: dict | None = None) -> bytes:
    """A dict(ema=..., loss_fn=..., augment_pipe=..., dataset_kwargs=...) as NVlabs' training loop saves."""
    precond = EDMPreconStandIn(net, attr)
    loss = nn.Module()  # EDMLoss: plain numbers only
    loss.P_mean, loss.P_std = -1.2, 1.2
    augment = nn.Module()
    kwargs = {id(precond): precond_kwargs, id(augment): {"p": 0.12}}
    names = {id(precond): precond_class, id(loss): "EDMLoss", id(augment): "AugmentPipe"}
    with fake_nvlabs_modules():
        data = dict(ema=precond, loss_fn=loss, augment_pipe=augment,
                    dataset_kwargs=EasyDict(path="cifar10-32x32.zip", xflip=False), **(extra or {}))
        buf = io.BytesIO()
        NVlabsPickler(buf, module_src, kwargs, names).dump(data)
    return buf.getvalue()


class _SystemCall:
    """Reduces to os.system(cmd): what a hostile pickle does."""

    def __init__(self, cmd: str):
        self.cmd = cmd

    def __reduce__(self):
        return os.system, (self.cmd,)


class _NestedBlob:
    """Reduces to torch.storage._load_from_bytes(blob): a nested tensor blob of the attacker's choice."""

    def __init__(self, blob: bytes):
        self.blob = blob

    def __reduce__(self):
        return torch.storage._load_from_bytes, (self.blob,)


def hostile_system_pickle(cmd: str) -> bytes:
    return pickle.dumps({"ema": _SystemCall(cmd)}, protocol=4)


def hostile_nested_blob_pickle(cmd: str) -> bytes:
    return pickle.dumps({"ema": _NestedBlob(hostile_system_pickle(cmd))}, protocol=4)


def source_that_writes(path: str) -> str:
    """A module source that, if exec'd as stock unpickling would, writes `path`."""
    return f"import pathlib\npathlib.Path({path!r}).write_text('the embedded source ran')\n"
