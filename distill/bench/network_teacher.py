"""The trained digits teacher of `distill bench quality --teacher network`, trained once and cached.

`recipes/digits_teacher.yaml` is trained with `distill train-teacher`'s code into
$DISTILL_CACHE/teachers/<key>/ (default ~/.cache/distill), where the key hashes the resolved recipe (without
run.dir) and the source of the network's module, so a changed recipe or network code trains a new teacher
and an unchanged one is reused. An interrupted training resumes there (the run-directory rules of `fit`).
"""

from __future__ import annotations

import hashlib
import inspect
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TEACHER_RECIPE = ROOT / "recipes" / "digits_teacher.yaml"


def cache_key(cfg) -> str:
    from distill.config import to_plain
    from teachers.networks import _NETWORKS, _import_all

    plain = to_plain(cfg)
    plain["run"].pop("dir")
    _import_all()
    network_source = inspect.getsource(inspect.getmodule(_NETWORKS[plain["model"]["network"]["name"]]))
    text = json.dumps(plain, sort_keys=True) + network_source
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cached_teacher_path(recipe: str | Path = TEACHER_RECIPE, overrides=(), log=print) -> Path:
    """teacher.safetensors of the recipe's teacher, trained now unless the cache holds it."""
    import logging
    import warnings

    from distill.evaluation.metrics.digits_features import cache_dir
    from distill.training.teacher_fit import fit_teacher
    from distill.training.teacher_recipe import resolve_teacher_recipe

    cfg = resolve_teacher_recipe(recipe, list(overrides))
    run_dir = cache_dir() / "teachers" / cache_key(cfg)
    path = run_dir / "teacher.safetensors"
    if path.is_file():
        log(f"network teacher: reusing {path}")
        return path
    log(f"network teacher: training {recipe} into {run_dir} ({cfg.trainer.max_steps} steps)")
    cfg = resolve_teacher_recipe(recipe, [*overrides, f"run.dir={run_dir}", "trainer.enable_progress_bar=false"])
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit_teacher(cfg)
    return path
