"""The student export: `student.safetensors` + `student.json`, enough to rebuild it without the teacher.

Also reads a student back from a run directory, an export, or a training `.ckpt` (weights only:
checkpoints are loaded with `torch.load(weights_only=True)`, never unpickled as code). What a file records is
data: the network and feeding must be registered names, the network is built only once a meta-device copy
matches the tensors in the file (`teachers.files.build_checked`), and any failure is a StudentLoadError.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any

import torch

from distill.api import Student  # the ConsistencyStudent with sample/edit methods that users hold
from distill.math.precond import PARAMETERISATIONS, ConsistencyStudent
from distill.methods.lcm import build_boundary
from teachers.feeding import build_feeding
from teachers.files import atomic_write_bytes, build_checked, check_zip_sizes, refusing
from teachers.networks import build_network

# 2: every network constructor argument is recorded (defaults too), `training_sigmas` (method.pairs).
SCHEMA_VERSION = 2
MAX_RECORDED_LEVELS = 100_000  # more training levels than any curriculum uses (iCT ends at 1,281)


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
        **boundary_metadata(student),
    }


def boundary_metadata(student) -> dict[str, Any]:
    """LCM students (distill/methods/lcm.py): their boundary and LCMScheduler's sigmas for 1..8 steps."""
    boundary = getattr(student, "boundary", None)
    if boundary is None:
        return {}
    return {"boundary": boundary.spec(), "sampling_sigmas": boundary.sampling_sigmas(student.feeding.sigmas)}


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
    if found.levels(max(method_steps(cfg), 0)) > MAX_RECORDED_LEVELS:  # a file's claim, not worth the memory
        return {"pairs": "continuous"}
    return found.training_sigmas(method_steps(cfg))


def rebuild_student(meta: dict[str, Any], shapes: dict[str, tuple] | None = None, source=None,
                    file_bytes: int = 0) -> ConsistencyStudent:
    """The student `meta` describes. With the `shapes` of the tensors in `source` (file_bytes long), the
    network is checked against them on the meta device before it is built (a file's metadata is data)."""
    meta = upgrade_metadata(meta)
    shape = meta["image_shape"]
    if not (isinstance(shape, list) and 1 <= len(shape) <= 4 and all(isinstance(d, int) and 0 < d <= 65536
                                                                     for d in shape) and math.prod(shape) <= 2**26):
        raise StudentLoadError(f"{source or 'student.json'}: image_shape {shape!r} is not a plausible image or "
                               "vector shape")
    parameterisation = meta.get("parameterisation", "cm")  # files written before sCM have no key: all "cm"
    if parameterisation not in PARAMETERISATIONS:
        raise StudentLoadError(f"{source or 'student.json'}: names parameterisation {parameterisation!r}; this "
                               f"version knows {', '.join(PARAMETERISATIONS)} (was the file written by a newer "
                               "distill?)")
    net_spec = dict(meta["network"])
    name = net_spec.pop("name")
    net = build_network(name, **net_spec) if shapes is None else \
        build_checked(name, net_spec, shapes, source, file_bytes)
    student = Student(net, build_feeding(meta["feeding"]), sigma_min=meta["sigma_min"],
                      sigma_max=meta["sigma_max"], sigma_data=meta["sigma_data"],
                      image_shape=tuple(meta["image_shape"]), num_classes=meta["num_classes"],
                      parameterisation=parameterisation, boundary=build_boundary(meta.get("boundary")))
    student.sampling_sigmas = meta.get("sampling_sigmas", {})
    student.training_sigmas = meta.get("training_sigmas") or {"pairs": "continuous"}
    student.meta = meta
    return student


def nonfinite_tensors(state: dict[str, torch.Tensor]) -> list[str]:
    return [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]


def write_export(run_dir: Path, meta: dict[str, Any], state: dict[str, torch.Tensor], weights: str) -> Path:
    """student.safetensors, then student.json (each atomic, in this order: a student.json recording the
    run's last step (`meta["step"]`) means both are current, distill/training/finish.py)."""
    from safetensors.torch import save

    bad = nonfinite_tensors(state)
    if bad:  # the NaN guard stops such a run first; this keeps any other caller from shipping NaN weights
        raise ValueError(f"refusing to export non-finite weights ({len(bad)} tensors, e.g. {bad[0]})")
    meta = dict(meta, weights=weights)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    # One metadata key only: safetensors writes its metadata map in hash order, so two keys would make the
    # bytes of identical exports differ between processes.
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


# student.json keys rebuild_student reads, with their JSON types.
META_TYPES = {"network": dict, "feeding": dict, "sigma_min": (int, float), "sigma_max": (int, float),
              "sigma_data": (int, float), "image_shape": list, "num_classes": int}


def check_meta(meta: Any, where) -> None:
    """A student record (student.json, or a .ckpt's 'distill' entry) has the keys and types `distill fit`
    writes, so that valid JSON of another shape is refused with the key at fault."""
    fix = "it was not written by `distill fit` (or was edited); export the student again"
    if not isinstance(meta, dict):
        raise StudentLoadError(f"{where}: expected a JSON object, found {type(meta).__name__}; {fix}")
    for key, types in META_TYPES.items():
        if key not in meta:
            raise StudentLoadError(f"{where}: no {key!r} entry; {fix}")
        if isinstance(meta[key], bool) or not isinstance(meta[key], types):
            raise StudentLoadError(f"{where}: {key!r} is {type(meta[key]).__name__} {meta[key]!r}, expected "
                                   f"{getattr(types, '__name__', 'a number')}; {fix}")
    if not isinstance(meta["network"].get("name"), str):
        raise StudentLoadError(f"{where}: 'network' has no 'name'; {fix}")
    if not isinstance(meta.get("sampling_sigmas", {}), dict):
        raise StudentLoadError(f"{where}: 'sampling_sigmas' must map step counts to lists of sigmas; {fix}")


def _load_ckpt(path: Path) -> ConsistencyStudent:
    check_zip_sizes(path, path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means "not a checkpoint we read"
        raise StudentLoadError(f"{path}: not a readable checkpoint ({type(err).__name__}: {err}); "
                               "expected a .ckpt written by `distill fit`") from None
    if not isinstance(ckpt, dict) or "distill" not in ckpt:
        raise StudentLoadError(f"{path}: a checkpoint without the 'distill' record; was it written by "
                               "`distill fit`?")
    meta = ckpt["distill"]
    check_meta(meta, f"{path} ('distill' record)")
    ema = (ckpt.get("callbacks") or {}).get("StudentEMA") or {}
    averages = ema.get("averages") or {}
    if averages:
        rate = sorted(averages)[0] if meta.get("ema_rates") is None else str(meta["ema_rates"][0])
        state, weights = averages[rate], f"ema_{rate}"
    else:
        prefix = "student.net."
        state = {k[len(prefix):]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
        weights = "online"
    student = rebuild_student(meta, {k: v.shape for k, v in state.items()}, path, path.stat().st_size)
    student.net.load_state_dict(state)
    student.meta = dict(meta, weights=weights)
    return student


def _load_export(path: Path) -> ConsistencyStudent:
    from safetensors import safe_open
    from safetensors.torch import load_file

    meta_path = path.with_suffix(".json")
    if not meta_path.is_file():
        raise StudentLoadError(f"{path}: {meta_path.name} must sit beside it (it records the network "
                               "and sigma range); copy both files together")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as err:
        raise StudentLoadError(f"{meta_path}: not valid JSON ({err})") from None
    try:
        with safe_open(str(path), "pt") as f:  # the header only: names and shapes, nothing allocated yet
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as err:  # noqa: BLE001
        raise StudentLoadError(f"{path}: not a readable safetensors file ({err})") from None
    with refusing(meta_path, StudentLoadError):
        check_meta(meta, meta_path)
        student = rebuild_student(meta, shapes, meta_path, path.stat().st_size)
    with refusing(path, StudentLoadError):
        student.net.load_state_dict(load_file(str(path)))
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
    if path.suffix not in (".ckpt", ".safetensors"):
        raise StudentLoadError(f"{path}: expected a run directory, a .safetensors or a .ckpt")
    if path.suffix == ".ckpt":
        with refusing(path, StudentLoadError):  # whatever the file trips: exit 2 naming it, never a traceback
            student = _load_ckpt(path)
    else:
        student = _load_export(path)
    bad = nonfinite_tensors(student.net.state_dict())
    if bad:
        raise StudentLoadError(f"{path}: {len(bad)} weight tensors hold NaN/Inf (e.g. {bad[0]}): saved from a run "
                               "that diverged; retrain it (lower optim.lr) or use an earlier checkpoint")
    return student.to(device).eval().requires_grad_(False)
