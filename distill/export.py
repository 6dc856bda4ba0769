"""The student export: `student.safetensors` + `student.json`, enough to rebuild it without the teacher.

Also reads a student back from a run directory, an export, or a training `.ckpt` (weights only:
checkpoints are loaded with `torch.load(weights_only=True)`, never unpickled as code).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from distill.api import Student  # the ConsistencyStudent with sample/edit methods that users hold
from distill.math.precond import PARAMETERISATIONS, ConsistencyStudent
from teachers.feeding import build_feeding
from teachers.networks import build_network

# 2: every network constructor argument is recorded (defaults too), `training_sigmas` (method.pairs).
SCHEMA_VERSION = 2


class StudentLoadError(ValueError):
    """A path that does not hold a loadable student. The message says what was expected."""


def sha256_of(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def student_metadata(cfg, teacher, student: ConsistencyStudent) -> dict[str, Any]:
    """Everything student.json records (DESIGN.md, "Files and numbers"), minus the weights' name."""
    from omegaconf import OmegaConf

    recipe = OmegaConf.to_container(cfg, resolve=True) if not isinstance(cfg, dict) else cfg
    tspec = dict(getattr(teacher, "spec", {}) or recipe.get("teacher", {}))
    return {
        "schema_version": SCHEMA_VERSION,
        "recipe": recipe,
        "teacher": {"spec": tspec, "class": type(teacher).__name__,
                    "sha256": getattr(teacher, "file_sha256", None), "licence": getattr(teacher, "licence", None)},
        "network": dict(student.net.build_spec),
        "feeding": student.feeding.spec(),
        "parameterisation": student.parameterisation,  # cm | trigflow (distill/math/precond.py); absent = cm
        "sigma_min": student.sigma_min,
        "sigma_max": student.sigma_max,
        "sigma_data": student.sigma_data,
        "image_shape": list(student.image_shape),
        "num_classes": student.num_classes,
        "sampling_sigmas": {"1": [student.sigma_max],
                            "2": [student.sigma_max] + list(recipe["student"]["sigmas_2"][1:]),
                            "3": [student.sigma_max] + list(recipe["student"]["sigmas_3"][1:])},
        "reference_stats": None,
        "training_sigmas": getattr(student, "training_sigmas", None) or {"pairs": "continuous"},
    }


def upgrade_metadata(meta: dict[str, Any]) -> dict[str, Any]:
    """Schema 1 students (before method.pairs) were all trained on the Karras grid, and their small networks
    embedded the noise level at 250x today's default frequency: read them as they were trained."""
    if int(meta.get("schema_version", 1)) >= 2:
        return meta
    meta = dict(meta, network=dict(meta["network"]))
    if meta["network"].get("name") in ("small_unet", "mlp"):
        meta["network"].setdefault("embedding_scale", 250.0)
    if "training_sigmas" not in meta:
        meta["training_sigmas"] = _grid_of_recipe(meta)
    return meta


def _grid_of_recipe(meta: dict[str, Any]) -> dict:
    """The training levels a schema-1 recipe implies (its method block, read with pairs: grid)."""
    from types import SimpleNamespace

    from distill.config import ConfigError, to_config
    from distill.methods.plan import method_steps, plan

    recipe = dict(meta.get("recipe") or {})
    recipe["method"] = dict(recipe.get("method") or {}, pairs="grid")
    try:
        cfg = to_config(recipe)
    except (ConfigError, TypeError, ValueError):
        return {"pairs": "continuous"}  # a recipe today's schema cannot read: sample as asked, unsnapped
    no_teacher = SimpleNamespace(denoise=None, backbone=None)
    found = plan(cfg, no_teacher, meta["sigma_min"], meta["sigma_max"])
    return found.training_sigmas(method_steps(cfg))


def rebuild_student(meta: dict[str, Any]) -> ConsistencyStudent:
    meta = upgrade_metadata(meta)
    parameterisation = meta.get("parameterisation", "cm")  # files written before sCM have no key: all "cm"
    if parameterisation not in PARAMETERISATIONS:
        raise StudentLoadError(f"student.json names parameterisation {parameterisation!r}; this version knows "
                               f"{', '.join(PARAMETERISATIONS)} (was the file written by a newer distill?)")
    net_spec = dict(meta["network"])
    net = build_network(net_spec.pop("name"), **net_spec)
    student = Student(net, build_feeding(meta["feeding"]), sigma_min=meta["sigma_min"],
                      sigma_max=meta["sigma_max"], sigma_data=meta["sigma_data"],
                      image_shape=tuple(meta["image_shape"]), num_classes=meta["num_classes"],
                      parameterisation=parameterisation)
    student.sampling_sigmas = meta.get("sampling_sigmas", {})
    student.training_sigmas = meta.get("training_sigmas") or {"pairs": "continuous"}
    student.meta = meta
    return student


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to path.tmp in the same folder, fsync, rename: a crash leaves the old file or the new one."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_export(run_dir: Path, meta: dict[str, Any], state: dict[str, torch.Tensor], weights: str) -> Path:
    from safetensors.torch import save

    meta = dict(meta, weights=weights)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    atomic_write_bytes(run_dir / "student.safetensors", save(tensors, metadata={"weights": weights}))
    atomic_write_bytes(run_dir / "student.json", (json.dumps(meta, indent=2) + "\n").encode())
    return run_dir / "student.safetensors"


def update_sampling_sigmas(meta_path: Path, table: dict[str, list[float]],
                           record: dict | None = None) -> None:
    """Replace entries of student.json's `sampling_sigmas` (e.g. after a schedule search), keeping every
    other field; `record` (how they were found) is stored under `sampling_sigmas_search`. Atomic."""
    meta = json.loads(Path(meta_path).read_text())
    meta["sampling_sigmas"] = dict(meta.get("sampling_sigmas") or {}, **{str(k): [float(s) for s in v]
                                                                        for k, v in table.items()})
    if record is not None:
        meta["sampling_sigmas_search"] = record
    atomic_write_bytes(Path(meta_path), (json.dumps(meta, indent=2) + "\n").encode())


def _load_ckpt(path: Path) -> ConsistencyStudent:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means "not a checkpoint we read"
        raise StudentLoadError(f"{path}: not a readable checkpoint ({type(err).__name__}: {err}); "
                               "expected a .ckpt written by `distill fit`") from None
    if "distill" not in ckpt:
        raise StudentLoadError(f"{path}: a checkpoint without the 'distill' record; was it written by "
                               "`distill fit`?")
    meta = ckpt["distill"]
    student = rebuild_student(meta)
    ema = (ckpt.get("callbacks") or {}).get("StudentEMA") or {}
    averages = ema.get("averages") or {}
    if averages:
        rate = sorted(averages)[0] if meta.get("ema_rates") is None else str(meta["ema_rates"][0])
        student.net.load_state_dict(averages[rate])
        student.meta = dict(meta, weights=f"ema_{rate}")
    else:
        prefix = "student.net."
        student.net.load_state_dict({k[len(prefix):]: v for k, v in ckpt["state_dict"].items()
                                     if k.startswith(prefix)})
        student.meta = dict(meta, weights="online")
    return student


def load_student(path: str | os.PathLike, device: str | torch.device = "cpu") -> ConsistencyStudent:
    """A run directory, a student.safetensors (student.json beside it) or a .ckpt -> the student, in eval."""
    path = Path(path)
    if path.is_dir():
        if (path / "student.safetensors").is_file():
            path = path / "student.safetensors"
        elif (path / "checkpoints" / "last.ckpt").is_file():
            path = path / "checkpoints" / "last.ckpt"
        else:
            raise StudentLoadError(f"{path}: no student.safetensors or checkpoints/last.ckpt in this run "
                                   "directory; has `distill fit` finished a step?")
    if not path.exists():
        raise StudentLoadError(f"{path}: no such file; give a run directory, a student.safetensors or a .ckpt")
    if path.suffix == ".ckpt":
        student = _load_ckpt(path)
    elif path.suffix == ".safetensors":
        meta_path = path.with_suffix(".json")
        if not meta_path.is_file():
            raise StudentLoadError(f"{path}: {meta_path.name} must sit beside it (it records the network "
                                   "and sigma range); copy both files together")
        try:
            meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError as err:
            raise StudentLoadError(f"{meta_path}: not valid JSON ({err})") from None
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except Exception as err:  # noqa: BLE001
            raise StudentLoadError(f"{path}: not a readable safetensors file ({err})") from None
        student = rebuild_student(meta)
        try:
            student.net.load_state_dict(state)
        except RuntimeError as err:
            raise StudentLoadError(f"{path}: weights do not match the network in {meta_path.name}: "
                                   f"{str(err).splitlines()[0]}") from None
    else:
        raise StudentLoadError(f"{path}: expected a run directory, a .safetensors or a .ckpt")
    return student.to(device).eval().requires_grad_(False)
