"""Distributed training from the recipe: 2-process DDP (gloo, through the CLI) equals 1 process with the
same global batch; DDP wraps only the student and the teacher is in no checkpoint; FSDP on CPU fails
clearly; compile and activation checkpointing keep checkpoint keys; mixed precision keeps the teacher
out of autocast."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
TOY = ROOT / "recipes" / "toy2d.yaml"
ENV = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
COMMON = ["trainer.max_steps=6", "trainer.accelerator=cpu", "trainer.enable_progress_bar=false",
          "trainer.log_every_n_steps=1", "data.size=2000", "checkpoint.every_n_steps=3", "eval.fid=false",
          "student.network.width=32"]
# Same global batch, different summation order across ranks: float32 rounding only.
TOLERANCE = 1e-5


def _fit(run_dir: Path, *extra: str) -> dict:
    cmd = [sys.executable, "-m", "distill", "fit", str(TOY), f"run.dir={run_dir}", *COMMON, *extra]
    proc = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)


def test_ddp_two_processes_equal_one_process(tmp_path):
    one = _fit(tmp_path / "one", "trainer.devices=1", "data.batch_size=32")
    two = _fit(tmp_path / "two", "trainer.devices=2", "trainer.strategy=ddp", "data.batch_size=16")
    assert one["global_step"] == two["global_step"] == 6
    assert not any("teacher" in k for k in two["state_dict"]), "the teacher must not be checkpointed"
    diffs = {k: (one["state_dict"][k] - two["state_dict"][k]).abs().max().item() for k in one["state_dict"]}
    worst = max(diffs.values())
    print(f"DDP(2x16) vs 1x32 after 6 steps: max abs weight difference {worst:.3g}")
    assert worst < TOLERANCE, diffs
    moved = max((one["state_dict"][k] - _initial(k, tmp_path)).abs().max().item() for k in diffs)
    assert moved > 100 * TOLERANCE, "the weights must have trained for the comparison to mean anything"
    ema_one = one["callbacks"]["StudentEMA"]["averages"]
    ema_two = two["callbacks"]["StudentEMA"]["averages"]
    for rate in ema_one:
        for k in ema_one[rate]:
            assert (ema_one[rate][k] - ema_two[rate][k]).abs().max() < TOLERANCE
    assert (tmp_path / "two" / "student.safetensors").is_file()
    assert (tmp_path / "two" / "config.yaml").is_file()


def _initial(key: str, tmp_path: Path) -> torch.Tensor:
    from distill.config import resolve
    from distill.training.fit import prepare_teacher_and_student

    cfg = resolve(TOY, [f"run.dir={tmp_path / 'x'}", *COMMON])
    _, module = prepare_teacher_and_student(cfg, {"name": "toy2d", "modes": 8, "radius": 2.0, "sigma0": 0.5})
    return module.state_dict()[key]


def test_ddp_wraps_only_the_student(tmp_path, monkeypatch):
    """Lightning's own DDP wrapping (1 process, gloo): the wrapped parameters are the student's, the
    teacher is on the right device but in no module tree."""
    import lightning as L
    import torch.distributed as dist

    from distill.config import resolve
    from distill.data import DistillDataModule
    from distill.training.fit import build_trainer, prepare_teacher_and_student

    for var in ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE", "RANK"):
        monkeypatch.delenv(var, raising=False)  # restored afterwards: Lightning exports them
    cfg = resolve(TOY, [f"run.dir={tmp_path / 'run'}", *COMMON, "trainer.strategy=ddp", "trainer.max_steps=1",
                        "data.batch_size=8"])
    teacher, module = prepare_teacher_and_student(cfg, {"name": "toy2d", "modes": 8, "radius": 2.0,
                                                        "sigma0": 0.5})
    seen = {}

    class Probe(L.Callback):
        def on_train_start(self, trainer, pl_module):
            wrapped = trainer.strategy.model
            seen["type"] = type(wrapped).__name__
            seen["params"] = {id(p) for p in wrapped.parameters()}
            seen["modules"] = [n for n, _ in wrapped.named_modules()]

    trainer = build_trainer(cfg, tmp_path / "run", callbacks_extra=[Probe()])
    try:
        trainer.fit(module, datamodule=DistillDataModule(cfg, teacher))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    assert seen["type"] == "DistributedDataParallel"
    assert seen["params"] == {id(p) for p in module.student.parameters()}
    assert not any("teacher" in n for n in seen["modules"])
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert all(k.startswith("student.") for k in state["state_dict"])
    ema = state["callbacks"]["StudentEMA"]["averages"]
    assert all(set(avg) == set(module.student.net.state_dict()) for avg in ema.values())


def test_fsdp_on_cpu_fails_with_a_clear_message(tmp_path, capsys):
    from distill.cli import main

    run_dir = tmp_path / "run"
    code = main(["fit", str(TOY), f"run.dir={run_dir}", *COMMON, "trainer.strategy=fsdp"])
    assert code == 2
    err = capsys.readouterr().err
    assert "trainer.strategy=fsdp needs CUDA GPUs" in err and "scripts/fsdp_gpu_check.py" in err
    assert not run_dir.exists(), "bad input must not leave a run directory behind"


def _student():
    from distill.config import resolve
    from distill.training.fit import prepare_teacher_and_student

    cfg = resolve(TOY, ["student.network.width=16"])
    return prepare_teacher_and_student(cfg, {"name": "toy2d"})[1].student


def test_compile_in_place_keeps_checkpoint_keys():
    from distill.training.scaling import compile_student

    plain, compiled = _student(), _student()
    compiled.load_state_dict(plain.state_dict())
    compile_student(compiled, backend="eager")  # inductor needs a C++ toolchain; keys do not depend on it
    assert list(compiled.state_dict()) == list(plain.state_dict())
    assert not any("_orig_mod" in k for k in compiled.state_dict())
    x, sigma = torch.randn(5, 2), torch.rand(5) * 10 + 0.01
    assert torch.allclose(compiled(x, sigma), plain(x, sigma))


def test_activation_checkpointing_keeps_keys_and_gradients():
    from distill.training.scaling import checkpoint_blocks

    plain, ckpt = _student(), _student()
    ckpt.load_state_dict(plain.state_dict())
    assert checkpoint_blocks(ckpt.net) > 0
    assert list(ckpt.state_dict()) == list(plain.state_dict())
    x, sigma = torch.randn(5, 2), torch.rand(5) * 10 + 0.01
    for m in (plain, ckpt):
        m.zero_grad()
        m(x, sigma).square().sum().backward()
    for (name, a), (_, b) in zip(plain.named_parameters(), ckpt.state_dict(keep_vars=True).items(), strict=True):
        assert torch.allclose(a.grad, b.grad), name


def test_mixed_precision_keeps_the_teacher_out_of_autocast():
    from distill.training.scaling import teacher_outside_autocast

    class Teacher:
        def __init__(self):
            self.lin = torch.nn.Linear(4, 4)

        def denoise(self, x, sigma, cond=None):
            return self.lin(x)

    t = Teacher()
    x = torch.randn(3, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert t.denoise(x, 1.0).dtype == torch.bfloat16  # what would happen without the switch
        teacher_outside_autocast(t)
        assert t.denoise(x, 1.0).dtype == torch.float32


@pytest.mark.slow
def test_bf16_compile_checkpointing_accumulation_run(tmp_path):
    """The recipe switches together, end to end on CPU (inductor compile: slow)."""
    state = _fit(tmp_path / "run", "trainer.precision=bf16-mixed", "student.compile=true",
                 "student.checkpointing=true", "trainer.accumulate_grad_batches=2", "data.batch_size=16")
    assert state["global_step"] == 6
    assert not any("_orig_mod" in k or "checkpoint_wrapped" in k for k in state["state_dict"])
