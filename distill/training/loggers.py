"""The recipe's `log: {loggers: [csv, tensorboard, wandb]}` -> Lightning loggers, all writing under run.dir.

- csv: `metrics.csv` (distill/training/csv_logger.py; keeps its history on resume). Always on: the file is
  part of the run directory's contract (DESIGN.md) and training.png is drawn from it.
- tensorboard: Lightning's TensorBoardLogger in <run.dir>/tensorboard (`tensorboard --logdir` it); a resumed
  run adds an event file beside the old ones.
- wandb: Lightning's WandbLogger in offline mode (nothing leaves the machine) under <run.dir>/wandb; upload
  later with `wandb sync <run.dir>/wandb/offline-run-*`. A resumed run takes the id of the latest offline run
  folder (offline-run-<time>-<id>), so that both sync into one W&B run.
A logger whose package is missing is a recipe error (exit 2) naming the pip command, raised before the run
directory is created.
"""

from __future__ import annotations

import importlib.util
import os
import uuid
from pathlib import Path

from distill.config import ConfigError

# logger -> (modules that provide it: any one will do, pip command)
PACKAGES = {
    "tensorboard": (("tensorboard", "tensorboardX"), "pip install tensorboard"),
    "wandb": (("wandb",), "pip install wandb"),
}


def check_available(names) -> None:
    for name in names:
        modules, pip = PACKAGES.get(name, ((), ""))
        if modules and not any(importlib.util.find_spec(m) is not None for m in modules):
            raise ConfigError(f"log.loggers: {name} needs the {modules[0]} package, which is not installed; "
                              f"run `{pip}` (or pip install 'distill-cm[loggers]'), or remove {name} from "
                              "log.loggers")


def wandb_run_id(run_dir: Path, resuming: bool) -> str:
    """The id of the run's latest offline W&B run when resuming, else a new one. Nothing is written here:
    the run directory must not exist before the recipe has been checked in full."""
    previous = sorted((run_dir / "wandb").glob("offline-run-*-*")) if resuming else []
    return previous[-1].name.rsplit("-", 1)[-1] if previous else uuid.uuid4().hex[:12]


def build_loggers(cfg, run_dir: Path, resume_step: int | None) -> list:
    """The loggers the recipe names, CSV first (the FID callback and training.png read metrics.csv)."""
    from distill.training.csv_logger import AppendingCSVLogger

    names = list(dict.fromkeys(cfg.log.loggers))
    check_available(names)
    loggers = [AppendingCSVLogger(run_dir, resume_step)]
    if "tensorboard" in names:
        from lightning.pytorch.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(save_dir=str(run_dir), name="tensorboard", version="",
                                         default_hp_metric=False))
    if "wandb" in names:
        from lightning.pytorch.loggers import WandbLogger

        os.environ["WANDB_MODE"] = "offline"  # also for wandb calls that do not go through the logger
        from lightning.pytorch.utilities.rank_zero import rank_zero_info

        # silent: wandb's banners and adverts; console off: it would wrap stdout/stderr to copy the log.
        wandb_logger = WandbLogger(save_dir=str(run_dir), project=cfg.log.wandb_project, name=run_dir.name,
                                   id=wandb_run_id(run_dir, resume_step is not None), offline=True,
                                   settings={"silent": True, "console": "off"})
        # Lightning 2.6 always passes anonymous=None, which wandb >= 0.19 warns about on every run.
        getattr(wandb_logger, "_wandb_init", {}).pop("anonymous", None)
        loggers.append(wandb_logger)
        rank_zero_info(f"W&B logs offline to {run_dir / 'wandb'}; upload them later with "
                       f"`wandb sync {run_dir / 'wandb'}/offline-run-*`")
    return loggers
