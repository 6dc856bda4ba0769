"""Tiny random Stable Diffusion / SDXL pipeline folders for the latent tests (built from configs, nothing downloaded),
written once per test session."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path

pytest_plugins = ()
diffusers = __import__("pytest").importorskip("diffusers")
__import__("pytest").importorskip("transformers")
__import__("pytest").importorskip("peft")

_ROOT = Path(tempfile.mkdtemp(prefix="distill-latent-"))
atexit.register(shutil.rmtree, _ROOT, ignore_errors=True)


@lru_cache(maxsize=None)
def pipeline_folder(kind: str = "sd", prediction_type: str = "epsilon") -> Path:
    from teachers.sd_components import save_pipeline, tiny_components

    return save_pipeline(tiny_components(kind, prediction_type), _ROOT / f"{kind}-{prediction_type}")


def lcm_config(kind: str = "sd", mode: str = "lora", *overrides: str):
    """A recipe's config on a tiny folder: mode lora (rank 4, alpha 8) or full (guidance embedding 16)."""
    from distill.config import resolve

    recipe = Path(__file__).resolve().parents[1] / "recipes" / \
        ("sdxl_lcm_lora.yaml" if kind == "sdxl" else "sd15_lcm.yaml")
    student = ["student.lora_rank=4", "student.lora_alpha=8", "student.guidance_embedding=0"] if mode == "lora" \
        else ["student.guidance_embedding=16", "student.lora_rank=0"]
    return resolve(recipe, [f"teacher.path={pipeline_folder(kind)}", "teacher.dtype=float32", *student, *overrides])
