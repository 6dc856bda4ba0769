"""What every file-based loader shares: checking the file, its sha256, loading tensors by name, and the
rules for reading a file nobody vouches for (teachers here, students in distill/export/student.py):

- `refusing(source)`: any exception while reading becomes the loader's refusal error naming the file
  (exit 2 in `distill`), never a raw traceback;
- `build_checked`: the network a file's metadata describes is built on the meta device first, with a
  budget of bytes and modules proportional to the file's size, and its parameter names and shapes are
  compared with the tensors actually in the file; only then is it built for real;
- `check_tensor_bytes`: the tensors read from a file hold no more bytes than the file (views that share or
  repeat a storage would otherwise turn kilobytes into gigabytes once copied);
- `load_weights_only`: torch.load(weights_only=True) after checking that no zip record inflates past the file.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
from torch import nn
from torch.nn.modules import module as nn_module

from teachers.registry import TeacherSpecError

# What a network may allocate beyond its file: float16 weights become float32 (x2), plus non-persistent
# buffers (filters, frequencies) which are small.
FLOAT16_TO_32 = 2
BUFFER_SLACK_BYTES = 64 << 20
# Modules per tensor in the file: 1.3 for the ADM UNet, 1.0 for EDM2, 0.6 for SongUNet (containers and
# activations hold none); building one on the meta device costs ~1 ms, so this also bounds the time.
MODULES_PER_TENSOR, MODULE_SLACK = 4, 64


def require_file(path, family: str, expected: str) -> Path:
    """The path as a Path; FileNotFoundError naming it and the kind of file the family expects."""
    if path is None:
        raise TeacherSpecError(f"teacher {family}: give `path` ({expected}), or set run.smoke=true for a "
                               "tiny randomly initialised teacher of this family")
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"teacher {family}: {p} does not exist; expected {expected}")
    return p


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, or of every file in a folder (sorted relative paths and contents)."""
    h = hashlib.sha256()
    files = sorted(q for q in path.rglob("*") if q.is_file()) if path.is_dir() else [path]
    for q in files:
        if path.is_dir():
            h.update(str(q.relative_to(path)).encode())
        with open(q, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


@contextlib.contextmanager
def refusing(source, error: type[Exception] = TeacherSpecError) -> Iterator[None]:
    """Whatever a malformed or hostile file makes the reading code raise, the caller sees `error` naming it."""
    try:
        yield
    except FileNotFoundError:  # a missing companion file (a .json beside the weights) stays what it is
        raise
    except (error, TeacherSpecError) as err:  # the loaders' own checks, named after the file if not yet
        named = str(err) if Path(str(source)).name in str(err) else f"{source}: {err}"
        raise (type(err) if isinstance(err, error) else error)(named) from None
    except Exception as err:  # noqa: BLE001 - a KeyError, a RuntimeError from torch, a MemoryError, ...
        raise error(f"{source}: refused, not a file this loader can read "
                    f"({type(err).__name__}: {str(err)[:300]})") from None


def check_tensor_bytes(tensors: Mapping[str, torch.Tensor], file_bytes: int, source) -> None:
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    if total > file_bytes:
        raise TeacherSpecError(f"{source}: its tensors claim {total} bytes, more than the file's {file_bytes} "
                               "(views that repeat or share storage), refused")


def check_shapes(own: Mapping[str, tuple], given: Mapping[str, tuple], source) -> None:
    """Same names; same shapes, or the same number of elements (e.g. a 1x1 attention conv stored as Conv1d)."""
    missing = sorted(set(own) - set(given))
    unexpected = sorted(set(given) - set(own))
    if missing or unexpected:
        raise TeacherSpecError(
            f"{source}: the tensors do not match the network built from its recorded config "
            f"({len(missing)} missing, e.g. {missing[:4]}; {len(unexpected)} unexpected, e.g. {unexpected[:4]})")
    for key, shape in given.items():
        if tuple(shape) != tuple(own[key]) and _numel(shape) != _numel(own[key]):
            raise TeacherSpecError(f"{source}: {key} has shape {tuple(shape)}, the network built from its "
                                   f"recorded config expects {tuple(own[key])}")


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


class _OverBudget(Exception):
    pass


@contextlib.contextmanager
def _allocation_budget(max_bytes: int, max_modules: int) -> Iterator[None]:
    """Stop a network's constructor once it registers more bytes or modules than allowed (global torch hooks,
    removed on exit): recorded kwargs may ask for millions of blocks, which cost time even on meta."""
    used = {"bytes": 0, "modules": 0}

    def on_tensor(module, name, tensor):
        if tensor is not None:
            used["bytes"] += tensor.numel() * tensor.element_size()
            if used["bytes"] > max_bytes:
                raise _OverBudget(f"more than {max_bytes} bytes of parameters and buffers")

    def on_module(module, name, submodule):
        used["modules"] += 1
        if used["modules"] > max_modules:
            raise _OverBudget(f"more than {max_modules} modules")

    handles = [nn_module.register_module_parameter_registration_hook(on_tensor),
               nn_module.register_module_buffer_registration_hook(on_tensor),
               nn_module.register_module_module_registration_hook(on_module)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def build_checked(name: str, kwargs: Mapping, shapes: Mapping[str, tuple], source, file_bytes: int) -> nn.Module:
    """The network `name(**kwargs)` recorded in a file, built only after a meta-device copy of it, built under
    a budget set by the file's size, has the names and shapes of the tensors in the file."""
    from teachers.networks import build_network

    budget = FLOAT16_TO_32 * file_bytes + BUFFER_SLACK_BYTES
    try:
        with _allocation_budget(budget, MODULE_SLACK + MODULES_PER_TENSOR * len(shapes)), torch.device("meta"):
            probe = build_network(name, **kwargs)
    except _OverBudget as err:
        raise TeacherSpecError(f"{source}: its recorded config builds a {name} with {err}, far more than its "
                               f"{len(shapes)} tensors ({file_bytes} bytes) could fill; refused") from None
    except (TypeError, ValueError) as err:  # a recorded argument of the wrong type or range
        raise TeacherSpecError(f"{source}: cannot rebuild {name} from its recorded config "
                               f"({type(err).__name__}: {str(err)[:200]}); refused") from None
    check_shapes({k: tuple(v.shape) for k, v in probe.state_dict().items()}, shapes, source)
    return build_network(name, **kwargs)


def load_by_name(net: nn.Module, tensors: Mapping[str, torch.Tensor], source: str) -> nn.Module:
    """Copy tensors into net by state-dict name; any missing, unexpected or misshapen key is an error.

    Values are cast to the network's own dtype (EDM2 stores float16; the project computes in float32).
    """
    own = net.state_dict()
    bad = [k for k, v in tensors.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise TeacherSpecError(f"{source}: {bad[0]} is a {type(tensors[bad[0]]).__name__}, not a tensor")
    check_shapes({k: tuple(v.shape) for k, v in own.items()}, {k: tuple(v.shape) for k, v in tensors.items()},
                 source)
    fixed = {k: v.reshape(own[k].shape).to(own[k].dtype) for k, v in tensors.items()}
    net.load_state_dict(fixed, strict=True)
    return net


def check_zip_sizes(path: Path, source) -> None:
    """A torch zip file stores its records uncompressed: together they cannot hold more than the file."""
    if not zipfile.is_zipfile(path):
        return  # a legacy torch.save file: torch checks each storage's size against the bytes it reads
    with zipfile.ZipFile(path) as zf:
        total = sum(info.file_size for info in zf.infolist())
    size = Path(path).stat().st_size
    if total > size:
        raise TeacherSpecError(f"{source}: its zip records inflate to {total} bytes from a {size}-byte file "
                               "(compressed records; torch never writes those), refused")


def load_weights_only(path: Path, source=None):
    """torch.load(weights_only=True) of a file nobody vouches for: refused (TeacherSpecError) when its zip
    records could inflate or torch's restricted unpickler refuses it."""
    source = source or path
    check_zip_sizes(path, source)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - a pickle that is not plain tensors is refused by weights_only
        raise TeacherSpecError(f"{source}: not a plain state dict loadable with weights_only=True, refused "
                               f"({type(err).__name__}: {str(err)[:300]})") from None


def smoke_levels(resolution: int) -> tuple[list[int], int]:
    """(channel_mult, attention resolution) of a smoke network: enough 2x levels that the lowest one is at
    most 16 pixels wide, attention only there, so a 256px smoke run stays seconds long on a CPU."""
    levels = 2
    while resolution >> (levels - 1) > 16:
        levels += 1
    return [1] * (levels - 1) + [2], resolution >> (levels - 1)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to path.tmp in the same folder, fsync, rename: a crash leaves the old file or the new one."""
    tmp = Path(path).with_name(Path(path).name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
