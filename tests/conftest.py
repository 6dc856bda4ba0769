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

# The test networks are tiny: a second intra-op thread buys nothing, and where the CPU is shared OpenMP's
# spinning threads made them ~10x slower. Subprocesses started by `run_cli` get one thread too.
torch.set_num_threads(1)
# The CLI picks its threads from the free CPUs (distill/threads.py); in tests (also in-process `main()` calls
# and the subprocesses, which inherit it) one thread, decided without sampling the machine's load.
os.environ["DISTILL_NUM_THREADS"] = "1"

# The same tiny digits run serves the evaluation tests (trained once per session, see `tiny_run`).
TINY_RUN = ["trainer.max_steps=4", "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1",
            "data.batch_size=16", "checkpoint.every_n_steps=2", "eval.every_n_steps=2", "eval.num=64",
            "student.network={name: small_unet, width: 8, channel_mult: [1, 2], num_blocks: 1}"]


@pytest.fixture(scope="session", autouse=True)
def distill_cache(tmp_path_factory):
    """One cache per test session: the digits feature network trains once, never into the user's home
    (subprocesses inherit the variable)."""
    path = tmp_path_factory.getbasetemp() / "distill-cache"
    old = os.environ.get("DISTILL_CACHE")
    os.environ["DISTILL_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("DISTILL_CACHE", None)
    else:
        os.environ["DISTILL_CACHE"] = old


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, distill_cache):
    """A 4-step digits run with FID logged at steps 2 and 4 (run directory path)."""
    run = tmp_path_factory.getbasetemp() / "tiny-run"
    if not (run / "student.json").is_file():
        from distill.config import resolve
        from distill.training.fit import fit

        fit(resolve(RECIPES / "demo.yaml", [f"run.dir={run}", *TINY_RUN]))
    return run


@pytest.fixture(scope="session")
def inception_file(tmp_path_factory):
    """FID Inception weights as torch-fidelity's file holds them (a plain state dict, torchvision's names),
    but random: He-normal convolutions and non-trivial BatchNorm statistics keep activations alive."""
    from torchvision.models import inception_v3

    from distill.evaluation.metrics.inception import WEIGHTS_FILE

    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = inception_v3(weights=None, aux_logits=False, init_weights=False, num_classes=1008)
        for m in net.modules():
            if isinstance(m, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            elif isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("inception") / WEIGHTS_FILE
    torch.save({k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}, path)
    return path


@pytest.fixture
def run_cli(tmp_path):
    """Run `distill ...` in a subprocess (as a user would); returns CompletedProcess."""
    def _run(*args, check=False, cwd=None, timeout=600, env=None):
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **(env or {})}
        proc = subprocess.run([sys.executable, "-m", "distill", *map(str, args)], cwd=cwd or tmp_path,
                              capture_output=True, text=True, timeout=timeout, env=full_env)
        if check and proc.returncode != 0:
            raise AssertionError(f"distill {' '.join(map(str, args))} exited {proc.returncode}:\n"
                                 f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        return proc
    return _run
