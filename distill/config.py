"""Recipes: YAML + `base:` inheritance + `key=value` overrides -> one typed, validated config.

The schema is the dataclasses below (OmegaConf structured configs), so an unknown key or a wrong
type is caught before anything runs, and the error names the key and the valid choices.
Rules (DESIGN.md, "Recipes"):
- `base: other.yaml` (relative to the recipe) is loaded first; the recipe merges onto it.
- A block that sets a different `name` or `target` than the one it would merge into replaces that
  block instead of merging (so `teacher.name=edm teacher.path=x.pkl` does not inherit digits' kwargs).
- `run.smoke=true` shrinks any recipe to a seconds-long CPU run (see `apply_smoke`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from distill import safe_yaml


class ConfigError(ValueError):
    """A recipe that cannot run as written. The message names the key and how to fix it."""


@dataclass
class RunConfig:
    dir: str = "runs/default"
    seed: int = 0
    smoke: bool = False  # seconds-long CPU run of any recipe: tiny nets, random teacher, synthetic data


@dataclass
class TrainerConfig:
    """Handed to lightning.Trainer (names as Lightning spells them)."""
    max_steps: int = 1000
    accelerator: str = "auto"
    devices: Any = 1
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "32-true"
    accumulate_grad_batches: int = 1
    gradient_clip_val: float | None = None
    log_every_n_steps: int = 50
    enable_progress_bar: bool = True


@dataclass
class DataConfig:
    # teacher: exact samples of an analytic teacher; digits/toy2d: built-in sets; synthetic: noise
    # of the teacher's shape (smoke runs; CD needs the data only to start trajectories).
    name: str = "teacher"
    batch_size: int = 128
    num_workers: int = 0
    path: str | None = None
    size: int = 0  # number of samples drawn for `teacher`/`synthetic`/`patches` sets (0: a default)
    # folder (class = subfolder) and zip (EDM dataset zip) load data.path into memory (exact resume);
    # webdataset streams shards from data.path (a path, a {000..099} brace pattern, or pipe:CMD).
    xflip: bool = False  # also use left-right mirrored images (doubles in-memory sets, as EDM's --xflip)
    corrupt: str = "skip"  # undecodable images / broken shards: skip (count and log) or strict (fail)
    resampled: bool = True  # webdataset: draw shards with replacement, so every rank sees as many batches
    epoch_batches: int = 1000  # webdataset: batches per rank per epoch (WebLoader.with_epoch)
    shuffle_buffer: int = 1000  # webdataset: samples held for shuffling


@dataclass
class StudentConfig:
    # auto: copy the teacher's backbone when it has one, else build `network`.
    init: str = "auto"
    network: dict[str, Any] = field(default_factory=lambda: {"name": "small_unet", "width": 32,
                                                             "channel_mult": [1, 2], "num_blocks": 1})
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    # Student sigmas for 2 and 3 steps (the first is sigma_max); 1 step is [sigma_max].
    sigmas_2: list[float] = field(default_factory=lambda: [80.0, 2.0])
    sigmas_3: list[float] = field(default_factory=lambda: [80.0, 5.0, 0.8])
    # Warm start (distill/methods/denoiser.py): the first denoiser_steps optimizer steps train the network as the
    # teacher's denoiser (EDM's loss), the rest distil; for teachers without a network to copy.
    denoiser_steps: int = 0
    # ... or as a share of trainer.max_steps, so that the warm start keeps its proportion when a run is made longer
    # or shorter (recipes/demo.yaml: 0.07; a 4-step smoke run then has none). Set one of the two.
    denoiser_fraction: float = 0.0
    compile: bool = False
    checkpointing: bool = False
    # Latent consistency students of a diffusers UNet2DConditionModel teacher (distill/methods/lcm.py):
    guidance_embedding: int = 0  # > 0: the student reads w through an embedding of this size (LCM full)
    lora_rank: int = 0  # > 0: train LoRA adapters of this rank only (LCM-LoRA); the base stays frozen
    lora_alpha: float | None = None  # None: = lora_rank (scale 1)
    lora_targets: list[str] | None = None  # None: the modules diffusers' LCM-LoRA scripts adapt


@dataclass
class MethodConfig:
    name: str = "cd"
    solver: str = "heun"  # teacher ODE step that builds the CD target (ddim: Euler in sigma, as LCM)
    N: int = 18  # number of levels of the Karras grid (CM paper, Alg. 2); with continuous pairs: sets the gap
    # continuous: the pair's position is drawn anywhere along the Karras curve (the student works at every sigma);
    # grid: the paper's N discrete levels only (sampling then snaps to them). distill/methods/curriculum.py.
    pairs: str = "continuous"
    rho: float = 7.0
    mu: float = 0.0  # target-network rate; 0 = stop-gradient of the student (CM paper, CIFAR-10 CD)
    index_sampling: str = "auto"  # uniform | lognormal (iCT); auto: the method's (distill/methods/plan.py)
    target_dtype: str = "float64"
    # Target solver (distill/methods/targets.py): k teacher steps per target; pairs `skip` grid intervals apart.
    solver_steps: int = 1
    skip: int = 1
    # Curricula (distill/methods/curriculum.py), functions of the global step; auto: the method's own.
    curriculum: str = "auto"  # fixed (N) | ct (CM app. C) | ict (doubling, iCT eq. 8) | ect (ECT r(t))
    # | timesteps (LCM: the teacher's own timesteps, `skip` apart)
    # fixed (mu) | adaptive (CM app. C: exp(s0 ln mu0 / N(k))) | none (stop-grad).
    mu_schedule: str = "auto"
    mu0: float = 0.9  # adaptive mu's rate at N = s0 (CM paper, CIFAR-10 CT)
    # Adaptive mu is scaled to the run: ln(mu) times mu_ref_steps / K, so the target lags the same share of the
    # run as in the paper's 800k-step CIFAR-10 CT (the paper's formula at K = 800k). null: the formula as printed,
    # whose lag collapses CT to a constant output in short runs (docs/benchmarks.md, "CT's target rate").
    mu_ref_steps: int | None = 800_000
    s0: int | None = None  # N(k) from s0 + 1 ...; None: the paper's (CT 2, iCT 10)
    s1: int | None = None  # ... to s1 + 1 levels; None: the paper's (CT 150, iCT 1280)
    total_steps: int | None = None  # K of the curricula; None: trainer.max_steps
    # Lognormal over ln(sigma) (iCT index sampling, ECT's t, sCM's t); None: the method's paper's
    # (iCT/ECT -1.1, 2.0; sCD and sCT -1.0, 1.4: distill/methods/plan.py).
    p_mean: float | None = None
    p_std: float | None = None
    ect_q: float = 2.0  # ECT: the gap t - r shrinks by q every ect_stage_steps (None: K / 8)
    ect_stage_steps: int | None = None
    ect_k: float = 8.0  # ECT's n(t) = 1 + k sigmoid(-b t)
    ect_b: float = 1.0
    dropout: float | None = None  # rate of the student's dropout layers; None: as the network was built
    # sCD/sCT (distill/methods/scm.py): tangent warm-up over the first H steps (sCM: 10k) and normalisation constant.
    tangent_warmup_steps: int = 10000
    tangent_c: float = 0.1
    # Adam lr of the learned weighting w_phi(t): EDM2 trains its uncertainty head at its own lr (~1e-2); at a
    # student's lr (1e-4) w would need ~10k steps to move by the few units the loss scales across t differ.
    weighting_lr: float = 1.0e-2


@dataclass
class LossConfig:
    name: str = "l2"
    weighting: str = "uniform"
    c: float | None = None  # pseudo-Huber constant; None = 0.00054 sqrt(d) (iCT)
    # LPIPS (distill/methods/lpips.py): local VGG16 (torchvision format) and the lpips package's linear heads
    # (None: the copy the installed `lpips` package ships); the CM paper's avg-pool and 224 px upsampling.
    lpips_backbone_path: str | None = None
    lpips_heads_path: str | None = None
    lpips_avg_pool: bool = True
    lpips_resize: int = 224


@dataclass
class OptimConfig:
    name: str = "adam"
    lr: float = 5e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    weight_decay: float = 0.0
    warmup_steps: int = 0
    # Learning rate after warm-up: constant, or decayed to lr * final_lr_ratio at trainer.max_steps.
    schedule: str = "constant"
    final_lr_ratio: float = 0.0


@dataclass
class EmaConfig:
    rates: list[float] = field(default_factory=lambda: [0.999])  # evaluation averages of the student


@dataclass
class EvalConfig:
    every_n_steps: int = 0  # 0: evaluate only at the end
    num: int = 1000
    steps: list[int] = field(default_factory=lambda: [1, 2])
    grid_every_n_steps: int = 0  # sample grids; 0: only at the end
    grid_num: int = 64  # images per sample grid (samples/*.png)
    fid: bool = True  # FID during training (distill/training/callbacks/fid.py); needs exact samples or eval.ref
    # auto | inception | digits | pixel | 'package.module:attr' (distill/evaluation/metrics/extractors.py)
    features: str = "auto"
    inception_path: str | None = None  # weights-inception-2015-12-05-6726825d.pth (torch-fidelity's); never downloaded
    ref: str | None = None  # reference statistics .npz (default: the analytic teacher's exact samples)


@dataclass
class CheckpointConfig:
    every_n_steps: int = 500


@dataclass
class LogConfig:
    # metrics.csv is always written (distill/training/loggers.py); tensorboard and wandb (offline) add to it,
    # both under run.dir. training.png (loss and FID against step) is drawn from metrics.csv.
    loggers: list[str] = field(default_factory=lambda: ["csv"])
    wandb_project: str = "distill"


@dataclass
class Recipe:
    run: RunConfig = field(default_factory=RunConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    teacher: dict[str, Any] = field(default_factory=lambda: {"name": "digits"})
    data: DataConfig = field(default_factory=DataConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    ema: EmaConfig = field(default_factory=EmaConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)


# Blocks typed as free-form dicts (their keys depend on the teacher family or network chosen).
FREE_FORM_BLOCKS = (("teacher", None), ("student", "network"))

# Keys that may differ when `distill fit` resumes an existing run directory (DESIGN.md).
RESUMABLE_KEYS = ("trainer.max_steps", "trainer.log_every_n_steps", "trainer.enable_progress_bar",
                  "eval.", "checkpoint.every_n_steps", "log.")

# Choices checked after the schema (the schema checks names and types).
CHOICES = {
    "student.init": ("auto", "teacher", "network"),
    "method.solver": ("heun", "euler", "ddim"),
    "method.name": ("cd", "ct", "ict", "ect", "lcm", "scd", "sct"),
    "method.index_sampling": ("auto", "uniform", "lognormal"),
    "method.pairs": ("continuous", "grid"),
    "method.curriculum": ("auto", "fixed", "ct", "ict", "ect", "timesteps", "continuous"),
    "method.mu_schedule": ("auto", "fixed", "adaptive", "none"),
    "method.target_dtype": ("float64", "float32"),
    "loss.name": ("l2", "l1", "pseudo_huber", "pseudo_huber_elementwise", "lpips"),
    "loss.weighting": ("uniform", "snr", "karras", "inverse_delta"),
    "optim.name": ("adam", "radam", "adamw"),
    "optim.schedule": ("constant", "cosine", "linear"),
    "data.name": ("teacher", "digits", "toy2d", "synthetic", "patches", "folder", "zip", "webdataset",
                  "captions"),
    "data.corrupt": ("skip", "strict"),
}
# Lists whose every item must be one of the choices.
LIST_CHOICES = {"log.loggers": ("csv", "tensorboard", "wandb")}


def register_choices(key: str, *values: str) -> None:
    """Let a module add valid values (e.g. a new method) without editing this file."""
    CHOICES[key] = tuple(dict.fromkeys(CHOICES.get(key, ()) + values))


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"recipe file not found: {path}")
    try:
        data = safe_yaml.load(path.read_text()) or {}
    except safe_yaml.YAMLTooLarge as err:
        raise ConfigError(f"{path}: refused, {err}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe must be a mapping of blocks, got {type(data).__name__}")
    return data


def _identity(block: Any) -> tuple | None:
    if isinstance(block, dict) and ("name" in block or "target" in block):
        return block.get("name"), block.get("target")
    return None


def merge_blocks(base: dict, child: dict) -> dict:
    """Deep merge where a child block with another name/target replaces the base block."""
    out = dict(base)
    for key, value in child.items():
        old = out.get(key)
        if isinstance(value, dict) and isinstance(old, dict):
            new_id, old_id = _identity(value), _identity(old)
            out[key] = dict(value) if new_id is not None and new_id != old_id else merge_blocks(old, value)
        else:
            out[key] = value
    return out


def load_yaml_chain(path: str | Path, _seen: tuple = ()) -> dict:
    """A recipe with its `base:` chain resolved (paths relative to each recipe)."""
    path = Path(path).resolve()
    if path in _seen:
        raise ConfigError(f"recipe inheritance loops: {' -> '.join(map(str, _seen + (path,)))}")
    data = _read_yaml(path)
    base = data.pop("base", None)
    if base is None:
        return data
    return merge_blocks(load_yaml_chain(path.parent / base, _seen + (path,)), data)


def parse_overrides(overrides: list[str]) -> dict:
    """`a.b=value` strings -> a nested dict; values parsed as YAML (so 1e-4, true, [1, 2] work)."""
    nested: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value (e.g. trainer.max_steps=100)")
        key, raw = item.split("=", 1)
        try:
            value = safe_yaml.load(raw) if raw != "" else None
        except safe_yaml.YAMLTooLarge as err:
            raise ConfigError(f"override {key.strip()!r}: refused, {err}") from None
        except yaml.YAMLError:
            value = raw
        node = nested
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} conflicts with another override of {p!r}")
        node[parts[-1]] = value
    return nested


def _schema_fields(path: str, schema: type | None = None) -> list[str]:
    node: Any = schema or Recipe
    for part in [p for p in path.split(".") if p]:
        hints = {f.name: f for f in dataclasses.fields(node)}
        f = hints.get(part)
        if f is None:
            return []
        node = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if not dataclasses.is_dataclass(node):
            return []
        node = type(node)
    return [f.name for f in dataclasses.fields(node)]


def _explain(err: OmegaConfBaseException, schema: type | None = None) -> str:
    key = getattr(err, "full_key", None) or ""
    if isinstance(err, ConfigKeyError) or "not in" in str(err):
        parent = key.rsplit(".", 1)[0] if "." in key else ""
        valid = _schema_fields(parent, schema)
        where = parent or "the top level"
        return (f"unknown key {key!r}; valid keys in {where}: {', '.join(valid)}" if valid
                else f"unknown key {key!r}")
    if isinstance(err, ValidationError):
        msg = str(err).splitlines()[0]
        return f"{key}: {msg}"
    return f"{key}: {str(err).splitlines()[0]}"


def validate(data: dict, schema: type, free_form=(), choices: dict | None = None) -> DictConfig:
    """A plain dict checked against a dataclass schema (names, types, `choices`); returns a writable config.

    Defaults are merged with the same block rule as `base:` (a block naming another teacher or network does
    not inherit the default's kwargs); `free_form` lists the (block, key) dicts whose keys are not checked."""
    defaults = OmegaConf.to_container(OmegaConf.structured(schema))
    try:
        merged = merge_blocks(defaults, data)
        cfg = OmegaConf.merge(OmegaConf.structured(schema), merged)
        # OmegaConf unions free-form dicts with the schema's default dict; set them as merged above.
        for block, key in free_form:
            value = merged[block][key] if key else merged[block]
            OmegaConf.update(cfg, f"{block}.{key}" if key else block, value, merge=False)
    except OmegaConfBaseException as err:
        raise ConfigError(_explain(err, schema)) from None
    from distill.config_checks import check_resolvable

    check_resolvable(cfg)
    for key, valid in (choices or {}).items():
        value = OmegaConf.select(cfg, key)
        if value not in valid:
            raise ConfigError(f"{key}: {value!r} is not a valid choice; choose one of {', '.join(valid)}")
    return cfg


def warm_start_steps(cfg: DictConfig) -> int:
    """How many optimizer steps the denoiser warm start takes: student.denoiser_steps, or denoiser_fraction of
    trainer.max_steps (rounded down)."""
    return cfg.student.denoiser_steps or int(cfg.student.denoiser_fraction * cfg.trainer.max_steps)


def to_config(data: dict) -> DictConfig:
    """Validate a plain dict against the schema; returns a typed, read-only DictConfig."""
    from distill.config_checks import check_values

    cfg = validate(data, Recipe, FREE_FORM_BLOCKS, CHOICES)
    for key, choices in LIST_CHOICES.items():
        bad = [v for v in OmegaConf.select(cfg, key) if v not in choices]
        if bad:
            raise ConfigError(f"{key}: {', '.join(map(repr, bad))} not valid; choose among {', '.join(choices)}")
    if cfg.method.N < 2:
        raise ConfigError(f"method.N must be at least 2, got {cfg.method.N}")
    if cfg.data.batch_size < 1:
        raise ConfigError(f"data.batch_size must be positive, got {cfg.data.batch_size}")
    if not (0.0 <= cfg.method.mu < 1.0):
        raise ConfigError(f"method.mu must lie in [0, 1), got {cfg.method.mu}")
    check_values(cfg)
    if cfg.student.denoiser_steps < 0 or (cfg.trainer.max_steps > 0 and
                                           cfg.student.denoiser_steps >= cfg.trainer.max_steps):
        raise ConfigError(f"student.denoiser_steps ({cfg.student.denoiser_steps}) must lie in [0, trainer.max_steps)")
    if not 0.0 <= cfg.student.denoiser_fraction < 1.0:
        raise ConfigError(f"student.denoiser_fraction must lie in [0, 1), got {cfg.student.denoiser_fraction}")
    if cfg.student.denoiser_fraction and cfg.student.denoiser_steps:
        raise ConfigError("student.denoiser_steps and student.denoiser_fraction both set a warm start: keep one "
                          "(e.g. student.denoiser_fraction=0)")
    if cfg.student.denoiser_fraction and cfg.trainer.max_steps <= 0:
        raise ConfigError(f"student.denoiser_fraction ({cfg.student.denoiser_fraction}) is a share of "
                          f"trainer.max_steps, which is {cfg.trainer.max_steps} (no limit): give a positive "
                          "trainer.max_steps, or student.denoiser_steps=N with student.denoiser_fraction=0")
    if not cfg.student.sigma_min < cfg.student.sigma_max:
        raise ConfigError("student.sigma_min must be below student.sigma_max")
    OmegaConf.set_readonly(cfg, True)
    return cfg


def apply_smoke(data: dict) -> dict:
    """run.smoke=true: a seconds-long CPU run of the same recipe (DESIGN.md, "Recipes").

    Tiny student network, the teacher family's smoke variant (random weights, no file), synthetic
    data of the recipe's shape, two optimizer steps, a small evaluation.
    """
    smoke = merge_blocks(data, {
        "trainer": {"max_steps": 2, "accelerator": "cpu", "devices": 1, "num_nodes": 1, "strategy": "auto",
                    "precision": "32-true", "log_every_n_steps": 1, "enable_progress_bar": False},
        "data": {"batch_size": 4, "num_workers": 0, "size": 16},
        "eval": {"every_n_steps": 0, "num": 16, "grid_every_n_steps": 0, "grid_num": 4},
        "checkpoint": {"every_n_steps": 1},
        "teacher": {"smoke": True},
    })
    # A file teacher's smoke variant is a random network of its family's default shape: synthetic data fit it.
    file_teacher = bool((smoke.get("teacher") or {}).get("path"))
    if file_teacher or smoke.get("data", {}).get("name") not in (None, "teacher", "digits", "toy2d"):
        smoke["data"]["name"] = "synthetic"
    # A fresh tiny student: copying even a smoke teacher's backbone costs seconds per step at 256 px.
    # (Copies of every smoke teacher family are tested against the teacher in tests/test_teachers_*.py.)
    student = smoke.setdefault("student", {})
    student["network"] = smoke_network(student.get("network"))
    # LCM parameterises the teacher's own network, and adapters (LoRA, a guidance embedding) extend it: keep the copy.
    keep = student.get("lora_rank") or student.get("guidance_embedding") or smoke.get("method", {}).get("name") == "lcm"
    if not keep:
        student["init"] = "network"
    return smoke


def smoke_network(network: dict | None) -> dict:
    """A network block shrunk to a tiny network of the same family (run.smoke)."""
    net = dict(network or {"name": "small_unet"})
    if net.get("name") == "small_unet":
        net.update(width=8, channel_mult=[1, 2], num_blocks=1)
    elif net.get("name") == "mlp":
        net.update(width=16, depth=1)
    elif "model_channels" in net:  # an EDM/ADM-family network trained from scratch (e.g. iCT)
        from teachers.files import smoke_levels

        mult, attn = smoke_levels(int(net.get("img_resolution", 32)))
        net.update(model_channels=16, channel_mult=mult)
        for key, value in (("num_blocks", 1), ("num_res_blocks", 1), ("attn_resolutions", [attn]),
                           ("attention_resolutions", [attn])):
            if key in net:
                net[key] = value
    return net


def resolve(recipe: str | Path | None, overrides: list[str] = ()) -> DictConfig:
    """Recipe path + overrides -> validated config."""
    data = load_yaml_chain(recipe) if recipe is not None else {}
    if "model" in data and "student" not in data:
        raise ConfigError(f"{recipe} is a teacher recipe (it has a `model` block and no `student`): train it with "
                          "`distill train-teacher`")
    data = merge_blocks(data, parse_overrides(list(overrides)))
    if data.get("run", {}).get("smoke"):
        data = apply_smoke(data)
    return to_config(data)


def to_plain(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)


def diff_keys(a: dict, b: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two plain configs."""
    keys = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        full = f"{prefix}{k}"
        if isinstance(va, dict) and isinstance(vb, dict):
            keys += diff_keys(va, vb, full + ".")
        elif va != vb:
            keys.append(full)
    return keys


def blocking_differences(old: dict, new: dict) -> list[str]:
    """Keys that differ between a run's saved config and the new one and may not change on resume."""
    return [k for k in diff_keys(old, new)
            if not any(k == r or (r.endswith(".") and k.startswith(r)) for r in RESUMABLE_KEYS)]
