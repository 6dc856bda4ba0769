"""Checks before training, shared by `distill fit --dry-run` and the start of a real fit (DESIGN.md, "Command
line"): the teacher answers one call as the Denoiser contract says, the data source yields an image, and a
checkpoint to resume is one of ours. Each failure is bad input (exit 2) raised before a run directory
exists, instead of a traceback at the first step or, worse, a run that trains to the end on wrong shapes
(a (B, 1, H, W) answer broadcasts silently against (B, 3, H, W) in the ODE step).
"""

from __future__ import annotations

import inspect
from pathlib import Path

import torch

from teachers.base import check_attributes
from teachers.registry import TeacherSpecError

PROBE_BATCH = 2


def _name(teacher, spec) -> str:
    spec = spec or {}
    return str(spec.get("name") or spec.get("target") or type(teacher).__name__)


def check_sample_hook(teacher, name: str) -> None:
    """The optional exact-sampling hook must take (num, generator, cond=None) (teachers/base.py)."""
    hook = getattr(teacher, "sample", None)
    if hook is None:
        return
    try:
        inspect.signature(hook).bind(PROBE_BATCH, torch.Generator(), cond=None)
    except TypeError:
        raise TeacherSpecError(f"teacher {name}: its `sample` method has the signature {inspect.signature(hook)}, "
                               "but distill calls sample(num, generator, cond=None) for exact samples "
                               "(docs/custom-teacher.md); rename the method if it means something else") from None
    except ValueError:  # a builtin without a signature: trust it
        pass


def _probe_inputs(teacher, dtype: torch.dtype):
    gen = torch.Generator().manual_seed(0)
    sigma = torch.tensor([teacher.sigma_max, teacher.sigma_min], dtype=dtype)  # per sample, shape (B,)
    x = torch.randn((PROBE_BATCH, *teacher.image_shape), generator=gen, dtype=dtype)
    x = x * sigma.reshape(-1, *([1] * len(teacher.image_shape)))
    cond = torch.arange(PROBE_BATCH, dtype=torch.int64) % teacher.num_classes if teacher.num_classes else None
    device = next((p.device for p in teacher.parameters()), None) if hasattr(teacher, "parameters") else None
    if device is not None:
        x, sigma, cond = x.to(device), sigma.to(device), None if cond is None else cond.to(device)
    return x, sigma, cond, gen


def _check_output(out, x: torch.Tensor, what: str, name: str) -> None:
    if not isinstance(out, torch.Tensor):
        raise TeacherSpecError(f"teacher {name}: {what} returned {type(out).__name__}, not a tensor")
    if tuple(out.shape) != tuple(x.shape):
        raise TeacherSpecError(f"teacher {name}: {what} returned shape {tuple(out.shape)}, expected "
                               f"{tuple(x.shape)} (batch, *image_shape = {tuple(x.shape[1:])}); check image_shape "
                               "and what the network outputs")
    if out.dtype != x.dtype:
        raise TeacherSpecError(f"teacher {name}: {what} returned {out.dtype} for {x.dtype} input; return x's "
                               "dtype (e.g. `.to(x.dtype)`)")
    if not bool(torch.isfinite(out).all()):
        raise TeacherSpecError(f"teacher {name}: {what} returned NaN or Inf; check its weights and its sigma range")


@torch.no_grad()
def probe_teacher(teacher, dtype: torch.dtype = torch.float32, spec=None) -> str:
    """Check the attributes and call the teacher once on a tiny batch at sigma_max and sigma_min (and its
    `sample` hook once, when it has one). Returns a one-line summary; raises TeacherSpecError."""
    name = _name(teacher, spec)
    check_attributes(teacher)
    check_sample_hook(teacher, name)
    x, sigma, cond, gen = _probe_inputs(teacher, dtype)
    call = (f"denoise(x {tuple(x.shape)} {dtype}, sigma of shape ({PROBE_BATCH},)"
            + (", int64 labels of shape (2,))" if cond is not None else ")"))
    try:
        out = teacher.denoise(x, sigma, cond)
    except Exception as err:  # noqa: BLE001 - user code: any failure is a teacher that does not fit
        raise TeacherSpecError(f"teacher {name}: {call} failed: {type(err).__name__}: "
                               f"{str(err).splitlines()[0] if str(err) else ''}") from None
    _check_output(out, x, call, name)
    if getattr(teacher, "sample", None) is not None:
        try:
            drawn = teacher.sample(PROBE_BATCH, gen, cond=None if cond is None else cond.cpu())
        except Exception as err:  # noqa: BLE001
            raise TeacherSpecError(f"teacher {name}: sample({PROBE_BATCH}, generator, cond) failed: "
                                   f"{type(err).__name__}: {err}") from None
        _check_output(drawn.to(x.dtype) if isinstance(drawn, torch.Tensor) else drawn, x,
                      f"sample({PROBE_BATCH}, generator, cond)", name)
    return f"{call} -> {tuple(out.shape)} {out.dtype}, finite"


def target_dtype(module) -> torch.dtype:
    """The dtype the teacher is called in during training (CD targets: method.target_dtype)."""
    target = module.plan.target
    return target.dtype if getattr(target, "uses_teacher", False) else torch.float32


def check_data(cfg, teacher) -> str:
    """The data source yields at least one image of the teacher's shape: image folders, zips and webdataset
    shards are read until their first good image; built-in sets are built (as the run would). Raises
    FileNotFoundError, CorruptSampleError or ValueError (the caller turns it into ConfigError)."""
    name = cfg.data.name
    if name == "webdataset":
        from distill.data.webdataset_source import first_sample

        x, _ = first_sample(cfg.data.path, tuple(teacher.image_shape), corrupt=cfg.data.corrupt,
                            need_labels=bool(getattr(teacher, "num_classes", 0)))
        return f"webdataset {cfg.data.path}: a first sample of shape {tuple(x.shape)} read"
    if name in ("folder", "zip"):
        from distill.data.folders import first_image

        key = first_image(cfg.data.path, tuple(teacher.image_shape))
        return f"{name} {cfg.data.path}: first image {key} decoded to {tuple(teacher.image_shape)}"
    from distill.data import build_pool

    images, labels = build_pool(cfg, teacher)
    return f"{name}: {images.shape[0]} samples of shape {tuple(images.shape[1:])}" + \
        (f", labels in [{int(labels.min())}, {int(labels.max())}]" if labels is not None else "")


RESUME_KEYS = ("global_step", "state_dict", "optimizer_states", "loops", "distill")


def check_resume_checkpoint(path: Path, module) -> int:
    """The step of `path`, after checking that it is a readable distill checkpoint of this module (a
    truncated copy or another program's .ckpt otherwise fails deep inside Lightning). Raises ConfigError."""
    from distill.config import ConfigError

    fix = f"delete {path} to start this run over, or restore the file"
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # noqa: BLE001 - any failure to read it means "not a checkpoint we can resume"
        raise ConfigError(f"{path}: cannot be read as a checkpoint ({type(err).__name__}: "
                          f"{str(err).splitlines()[0][:200]}); {fix}") from None
    missing = [k for k in RESUME_KEYS if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise ConfigError(f"{path}: not a checkpoint written by `distill fit` (no {', '.join(missing)}); {fix}")
    step, state = ckpt["global_step"], ckpt["state_dict"]
    if not isinstance(step, int) or step < 0 or not isinstance(state, dict):
        raise ConfigError(f"{path}: global_step {step!r} / state_dict {type(state).__name__} are not what "
                          f"`distill fit` writes; {fix}")
    want = module.state_dict()
    wrong = sorted(set(want) ^ set(state)) or [k for k in want if not isinstance(state[k], torch.Tensor)
                                              or tuple(state[k].shape) != tuple(want[k].shape)]
    if wrong:
        raise ConfigError(f"{path}: its weights do not fit this recipe's student ({len(wrong)} tensors differ, "
                          f"e.g. {wrong[0]}); {fix}")
    return step
