"""What every file-based teacher loader shares: checking the file, its sha256, loading tensors by name."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from teachers.registry import TeacherSpecError


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


def load_by_name(net: nn.Module, tensors: Mapping[str, torch.Tensor], source: str) -> nn.Module:
    """Copy tensors into net by state-dict name; any missing, unexpected or misshapen key is an error.

    Values are cast to the network's own dtype (EDM2 stores float16; the project computes in float32).
    """
    own = net.state_dict()
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    if missing or unexpected:
        raise TeacherSpecError(
            f"{source}: the tensors do not match the network built from its recorded config "
            f"({len(missing)} missing, e.g. {missing[:4]}; {len(unexpected)} unexpected, e.g. {unexpected[:4]})")
    fixed = {}
    for key, value in tensors.items():
        target = own[key]
        if value.shape != target.shape:
            if value.numel() != target.numel():
                raise TeacherSpecError(f"{source}: {key} has shape {tuple(value.shape)}, the network expects "
                                       f"{tuple(target.shape)}")
            value = value.reshape(target.shape)  # e.g. a 1x1 attention conv stored as Conv1d
        fixed[key] = value.to(target.dtype)
    net.load_state_dict(fixed, strict=True)
    return net


def smoke_levels(resolution: int) -> tuple[list[int], int]:
    """(channel_mult, attention resolution) of a smoke network: enough 2x levels that the lowest one is at
    most 16 pixels wide, attention only there, so a 256px smoke run stays seconds long on a CPU."""
    levels = 2
    while resolution >> (levels - 1) > 16:
        levels += 1
    return [1] * (levels - 1) + [2], resolution >> (levels - 1)
