"""Shared fixtures. Tests run on the CPU with nothing downloaded."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def run_cli(tmp_path):
    """Run `distill ...` in a subprocess (as a user would); returns CompletedProcess."""
    def _run(*args, check=False, cwd=None, timeout=600, env=None):
        full_env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
        proc = subprocess.run([sys.executable, "-m", "distill", *map(str, args)], cwd=cwd or tmp_path,
                              capture_output=True, text=True, timeout=timeout, env=full_env)
        if check and proc.returncode != 0:
            raise AssertionError(f"distill {' '.join(map(str, args))} exited {proc.returncode}:\n"
                                 f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        return proc
    return _run
