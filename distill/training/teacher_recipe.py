"""Recipes for `distill train-teacher`: the same YAML rules as `distill fit` (`base:`, `key=value`, run.smoke,
run-directory resume), with blocks for training a diffusion model instead of distilling one.

```yaml
run:     {dir: runs/digits_teacher, seed: 0}
trainer: {max_steps: 8000, accelerator: cpu}
model:   {network: {name: song_unet, ...}, sigma_data: 0.5}   # the network and the denoiser it becomes
data:    {name: digits, batch_size: 128}                       # any distill data source; licence recorded
loss:    {p_mean: -1.2, p_std: 1.2}                            # EDM's lognormal training sigmas
optim:   {name: adam, lr: 1.0e-3, warmup_steps: 200}
ema:     {halflife_kimg: [50.0], rampup_ratio: 0.05}           # EDM's EMA; the first is exported
eval:    {nfe: 35, num: 1000}                                  # FID of EDM Heun samples at the end
```
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from distill.config import (
    CheckpointConfig,
    ConfigError,
    DataConfig,
    OptimConfig,
    RunConfig,
    TrainerConfig,
    load_yaml_chain,
    merge_blocks,
    parse_overrides,
    smoke_network,
    validate,
)

# Licences of the data sets the framework ships; other data state theirs in data.licence.
BUILTIN_LICENCES = {"digits": "BSD-3-Clause (scikit-learn)",
                    "patches": "unknown: scikit-learn's sample photos (see sklearn.datasets.load_sample_images)",
                    "synthetic": "none (Gaussian noise)"}
BUILTIN_SHAPES = {"digits": (1, 8, 8)}


@dataclass
class ModelConfig:
    """The network trained, and the denoiser it becomes: EDM's preconditioning (Table 1) around it."""
    network: dict[str, Any] = field(default_factory=lambda: {"name": "small_unet", "width": 32,
                                                             "channel_mult": [1, 2], "num_blocks": 1})
    image_shape: list[int] | None = None  # None: the data set's own (digits: [1, 8, 8])
    num_classes: int = 0  # > 0: class-conditional on the data's labels
    sigma_data: float = 0.5
    sigma_min: float = 0.002  # the range recorded in teacher.json (EDM Table 1's sampler range)
    sigma_max: float = 80.0


@dataclass
class TeacherDataConfig(DataConfig):
    name: str = "digits"
    licence: str | None = None  # recorded in teacher.json; None: the built-in set's, else "unknown"


@dataclass
class EDMLossConfig:
    """EDM sec. 5 / Table 1: ln(sigma) ~ N(p_mean, p_std^2), lambda(sigma) = (sigma^2 + sd^2) / (sigma sd)^2."""
    p_mean: float = -1.2
    p_std: float = 1.2


@dataclass
class HalfLifeEmaConfig:
    # EDM's EMA (training_loop.py): the average's half-life counted in training images, so it does not
    # depend on the batch size; over the first images it is capped at rampup_ratio x images seen, so a short
    # run's average never reaches back to the random initialisation. Several: averaged side by side, the
    # first is exported.
    halflife_kimg: list[float] = field(default_factory=lambda: [500.0])
    rampup_ratio: float | None = 0.05


@dataclass
class TeacherEvalConfig:
    fid: bool = True  # FID of the EMA teacher's EDM Heun samples against the training data (or eval.ref)
    nfe: int = 35
    num: int = 1000
    every_n_steps: int = 0  # 0: only at the end
    features: str = "auto"
    inception_path: str | None = None
    ref: str | None = None  # reference statistics .npz; default: the in-memory training images
    grid_num: int = 64


@dataclass
class TeacherRecipe:
    run: RunConfig = field(default_factory=lambda: RunConfig(dir="runs/teacher"))
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: TeacherDataConfig = field(default_factory=TeacherDataConfig)
    loss: EDMLossConfig = field(default_factory=EDMLossConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-3))
    ema: HalfLifeEmaConfig = field(default_factory=HalfLifeEmaConfig)
    eval: TeacherEvalConfig = field(default_factory=TeacherEvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)


CHOICES = {
    "data.name": ("digits", "patches", "synthetic", "folder", "zip", "webdataset"),
    "data.corrupt": ("skip", "strict"),
    "optim.name": ("adam", "radam", "adamw"),
}


def _check(cfg: DictConfig) -> None:
    if cfg.data.batch_size < 1:
        raise ConfigError(f"data.batch_size must be positive, got {cfg.data.batch_size}")
    if cfg.loss.p_std <= 0:
        raise ConfigError(f"loss.p_std must be positive, got {cfg.loss.p_std}")
    if not 0 < cfg.model.sigma_min < cfg.model.sigma_max:
        raise ConfigError("model.sigma_min must be positive and below model.sigma_max")
    if not cfg.ema.halflife_kimg or any(h <= 0 for h in cfg.ema.halflife_kimg):
        raise ConfigError(f"ema.halflife_kimg must list positive half-lives, got {list(cfg.ema.halflife_kimg)}")
    if cfg.eval.nfe < 1 or cfg.eval.nfe % 2 == 0:
        raise ConfigError(f"eval.nfe: the EDM Heun sampler has only odd NFE (2 * steps - 1), got {cfg.eval.nfe}")
    name, shape = cfg.data.name, cfg.model.image_shape
    if shape is None and name not in BUILTIN_SHAPES:
        raise ConfigError(f"model.image_shape is needed for data.name={name} (e.g. [3, 32, 32]: channels, "
                          "height, width, the size images are resized to)")
    if shape is not None and name in BUILTIN_SHAPES and tuple(shape) != BUILTIN_SHAPES[name]:
        raise ConfigError(f"model.image_shape {list(shape)}: data.name={name} has images of shape "
                          f"{list(BUILTIN_SHAPES[name])}; leave model.image_shape unset")


def to_teacher_config(data: dict) -> DictConfig:
    cfg = validate(data, TeacherRecipe, (("model", "network"),), CHOICES)
    _check(cfg)
    if cfg.model.image_shape is None:
        cfg.model.image_shape = list(BUILTIN_SHAPES[cfg.data.name])
    if cfg.data.licence is None:
        cfg.data.licence = BUILTIN_LICENCES.get(cfg.data.name, "unknown (set data.licence)")
    OmegaConf.set_readonly(cfg, True)
    return cfg


def apply_teacher_smoke(data: dict) -> dict:
    """run.smoke=true: two steps of a tiny network of the same family on a few images, a tiny evaluation."""
    smoke = merge_blocks(data, {
        "trainer": {"max_steps": 2, "accelerator": "cpu", "devices": 1, "num_nodes": 1, "strategy": "auto",
                    "precision": "32-true", "log_every_n_steps": 1, "enable_progress_bar": False},
        "data": {"batch_size": 4, "num_workers": 0, "size": 16},
        "eval": {"every_n_steps": 0, "num": 16, "nfe": 3, "grid_num": 4},
        "checkpoint": {"every_n_steps": 1},
    })
    if smoke.get("data", {}).get("name") not in (None, "digits"):
        smoke["data"]["name"] = "synthetic"
    smoke.setdefault("model", {})["network"] = smoke_network(smoke.get("model", {}).get("network"))
    return smoke


def resolve_teacher_recipe(recipe: str | Path | None, overrides: list[str] = ()) -> DictConfig:
    data = load_yaml_chain(recipe) if recipe is not None else {}
    found = [block for block in ("teacher", "student", "method") if block in data]
    if found:
        raise ConfigError(f"{recipe} is a distillation recipe (it has {', '.join(f'`{b}`' for b in found)}): "
                          "run it with `distill fit`; `distill train-teacher` takes a recipe with a `model` block")
    data = merge_blocks(data, parse_overrides(list(overrides)))
    if data.get("run", {}).get("smoke"):
        data = apply_teacher_smoke(data)
    return to_teacher_config(data)
