"""Every recipe passes `distill fit R --dry-run` and trains under run.smoke=true (DESIGN.md, "Recipes").

Smoke runs go in-process (distill.config.resolve + distill.training.fit.fit), which saves a Python start-up each.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import pytest
import yaml

from distill.cli import main as distill_main
from distill.config import resolve

ALL_RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml"))
# Teacher recipes (`distill train-teacher`) have a `model` block; the others are distillation recipes.
TEACHER_RECIPES = [p for p in ALL_RECIPES if "model" in (yaml.safe_load(p.read_text()) or {})]
RECIPES = [p for p in ALL_RECIPES if p not in TEACHER_RECIPES]
PAPER = ("cifar10_edm_cd_lpips", "cifar10_edm_cd_l2", "cifar10_ict", "cifar10_ect", "cifar10_ddpm_cd",
         "imagenet64_cd_lpips", "lsun_bedroom256_cd_lpips", "sd15_lcm", "sd15_lcm_lora", "sdxl_lcm_lora",
         "cifar10_scd", "cifar10_sct", "imagenet64_scd")


def test_the_paper_recipes_exist():
    names = {p.stem for p in RECIPES}
    assert set(PAPER) <= names, set(PAPER) - names


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_dry_run(recipe, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative paths in the recipe resolve here: nothing may be created
    assert distill_main(["fit", str(recipe), "--dry-run"]) == 0
    resolved = yaml.safe_load(capsys.readouterr().out)
    assert resolved["method"]["name"] in ("cd", "ct", "ict", "ect", "lcm", "scd", "sct")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_smoke_run(recipe, tmp_path):
    from distill.training.fit import fit

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    cfg = resolve(recipe, ["run.smoke=true", f"run.dir={tmp_path / 'run'}"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit(cfg)
    assert (tmp_path / "run" / "student.safetensors").is_file()
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()


def test_paper_recipes_carry_published_numbers():
    for name in PAPER:
        text = (RECIPES[0].parent / f"{name}.yaml").read_text()
        header = "\n".join(line for line in text.splitlines() if line.startswith("#"))
        assert "Published" in header and "FID" in header, name
        assert "Expect" in header or "Differences" in header or "differ" in header, name


@pytest.mark.parametrize("recipe", TEACHER_RECIPES, ids=lambda p: p.stem)
def test_teacher_recipe_dry_run_and_smoke_run(recipe, capsys, tmp_path, monkeypatch):
    from distill.training.teacher_fit import fit_teacher
    from distill.training.teacher_recipe import resolve_teacher_recipe

    monkeypatch.chdir(tmp_path)
    assert distill_main(["train-teacher", str(recipe), "--dry-run"]) == 0
    assert "model" in yaml.safe_load(capsys.readouterr().out) and list(tmp_path.iterdir()) == []
    assert distill_main(["fit", str(recipe)]) == 2 and "distill train-teacher" in capsys.readouterr().err
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit_teacher(resolve_teacher_recipe(recipe, ["run.smoke=true", f"run.dir={tmp_path / 'run'}"]))
    assert (tmp_path / "run" / "teacher.safetensors").is_file() and (tmp_path / "run" / "teacher.json").is_file()


def test_a_distillation_recipe_is_refused_by_train_teacher(capsys):
    assert distill_main(["train-teacher", str(RECIPES[0]), "--dry-run"]) == 2
    assert "distill fit" in capsys.readouterr().err
