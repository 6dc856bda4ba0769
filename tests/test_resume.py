"""Resume and fault tolerance: a preempted, then SIGKILLed, then resumed run ends bit for bit where an
uninterrupted run ends; metrics.csv is appended, not wiped; a kill while a checkpoint is written leaves the
previous one loadable; a NaN loss stops naming its step and keeps the last good checkpoint; run-directory
creation is rank-0-only and idempotent."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"

STEPS = 160
ARGS = [f"trainer.max_steps={STEPS}", "trainer.log_every_n_steps=5", "trainer.enable_progress_bar=false",
        "data.batch_size=32", "data.size=2000", "checkpoint.every_n_steps=10", "eval.fid=false",
        "student.network.width=32"]
# One thread per process: on a shared 2-core machine OpenMP spinning makes each step ~5x slower.
ENV = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))


def fit_cmd(run_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "distill", "fit", str(RECIPES / "toy2d.yaml"), f"run.dir={run_dir}",
            *ARGS, *extra]


def run_fit(run_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(fit_cmd(run_dir, *extra), cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def ckpt_step(path: Path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=True)["global_step"])


def wait_for(predicate, proc: subprocess.Popen, what: str, timeout: float = 300) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"training exited ({proc.returncode}) before {what}:\n"
                                 f"{proc.stderr.read()[-3000:]}")
        if time.monotonic() > end:
            proc.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    run_fit(run_dir)
    return run_dir


def test_preempt_then_kill9_then_resume_is_bit_exact(reference, tmp_path):
    run_dir = tmp_path / "run"
    ckpt = run_dir / "checkpoints" / "last.ckpt"

    # 1. SIGUSR1 (what SLURM sends before the time limit): the checkpoint is saved at the next batch
    #    boundary and the process exits 1 (no SLURM job to requeue here).
    proc = subprocess.Popen(fit_cmd(run_dir), cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    wait_for(ckpt.is_file, proc, "the first checkpoint")
    proc.send_signal(signal.SIGUSR1)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, err[-3000:]
    assert "SIGUSR1 received: checkpoint saved at step" in err
    preempted_at = ckpt_step(ckpt)
    assert 10 <= preempted_at < STEPS and f"step {preempted_at}" in err
    assert not (run_dir / "student.safetensors").exists(), "a preempted run must not export"

    # 2. Resume, then kill -9 once it has written a newer checkpoint.
    proc = subprocess.Popen(fit_cmd(run_dir), cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    wait_for(lambda: ckpt_step(ckpt) > preempted_at, proc, "a checkpoint after the resume")
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert not (run_dir / "student.safetensors").exists(), "killed too late; raise STEPS"
    assert ckpt_step(ckpt) < STEPS

    # 3. `distill fit` on the same directory finishes the run.
    run_fit(run_dir)
    ours = (run_dir / "student.safetensors").read_bytes()
    assert ours == (reference / "student.safetensors").read_bytes(), "resumed export differs from uninterrupted"
    a = torch.load(ckpt, map_location="cpu", weights_only=True)
    b = torch.load(reference / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert a["global_step"] == b["global_step"] == STEPS
    for key in b["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key

    # metrics.csv: appended across the three processes, each logged step exactly once.
    with open(run_dir / "metrics.csv") as f:
        steps = [int(r["step"]) for r in csv.DictReader(f) if r.get("train/loss")]
    assert steps == list(range(4, STEPS, 5))


KILL_SCRIPT = """
import os, signal, sys
import torch
import teachers.files
from distill.training.callbacks.checkpointing import AtomicCheckpointIO

path, mode = sys.argv[1], sys.argv[2]
io = AtomicCheckpointIO()
io.save_checkpoint({"global_step": 1, "state_dict": {"w": torch.ones(4096)}}, path)
die = lambda *a: os.kill(os.getpid(), signal.SIGKILL)
if mode == "mid-write":  # half the bytes reach the temporary file
    real_open = open
    class Half:
        def __init__(self, *a):
            self.f = real_open(*a)
        def __enter__(self):
            return self
        def __exit__(self, *a):
            self.f.close()
        def write(self, data):
            self.f.write(data[: len(data) // 2]); self.f.flush(); die()
    teachers.files.open = Half  # where atomic_write_bytes lives
else:  # all bytes written, killed before the rename
    os.fsync = die
io.save_checkpoint({"global_step": 2, "state_dict": {"w": torch.zeros(4096)}}, path)
"""


@pytest.mark.parametrize("mode", ["mid-write", "before-rename"])
def test_kill_during_checkpoint_write_leaves_previous_loadable(tmp_path, mode):
    path = tmp_path / "last.ckpt"
    proc = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(path), mode], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert path.with_name("last.ckpt.tmp").is_file()
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert state["global_step"] == 1 and torch.equal(state["state_dict"]["w"], torch.ones(4096))


@pytest.mark.slow
def test_kill_during_checkpoint_write_in_training_keeps_previous(tmp_path):
    """SIGKILL after the second checkpoint's bytes are on disk but before the rename: last.ckpt is still
    the first checkpoint, complete and loadable."""
    run_dir = tmp_path / "run"
    killer = (
        "import os, signal, sys\n"
        "real, seen = os.fsync, []\n"
        "def fsync(fd):\n"
        "    if os.readlink(f'/proc/self/fd/{fd}').endswith('last.ckpt.tmp'):\n"
        "        seen.append(fd)\n"
        "        if len(seen) == 2:\n"
        "            os.kill(os.getpid(), signal.SIGKILL)\n"
        "    return real(fd)\n"
        "os.fsync = fsync\n"
        "from distill.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n")
    cmd = [sys.executable, "-c", killer, *fit_cmd(run_dir)[3:]]
    proc = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    assert (run_dir / "checkpoints" / "last.ckpt.tmp").is_file()  # the write that was cut off
    assert ckpt_step(ckpt) == 10
    from distill.export import load_student

    student = load_student(ckpt)
    assert all(torch.isfinite(p).all() for p in student.parameters())


def test_nan_guard_names_step_and_keeps_last_good_checkpoint(tmp_path):
    import teachers
    from distill.config import resolve
    from distill.training.callbacks.nan_guard import NonFiniteLossError
    from distill.training.fit import fit

    cfg = resolve(RECIPES / "toy2d.yaml", [f"run.dir={tmp_path / 'run'}", *ARGS, "checkpoint.every_n_steps=5",
                                           "trainer.max_steps=40"])
    inner = teachers.load({"name": "toy2d", "modes": 8, "radius": 2.0, "sigma0": 0.5})
    calls = []

    def denoise(x, sigma, cond=None):  # the start check's call, then Heun: 2 per step; NaN from step 12 on
        calls.append(1)
        out = inner.__class__.denoise(inner, x, sigma, cond)
        return out * float("nan") if len(calls) > 25 else out

    inner.denoise = denoise
    with pytest.raises(NonFiniteLossError, match="at step 12"):
        fit(cfg, teacher=inner)
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert state["global_step"] == 10
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values())
    assert not (tmp_path / "run" / "student.safetensors").exists()


def test_run_dir_is_rank0_only_and_idempotent(tmp_path, monkeypatch):
    from distill.config import ConfigError, resolve
    from distill.training.fit import plan_run_dir, write_config

    run_dir = tmp_path / "run"
    cfg = resolve(RECIPES / "toy2d.yaml", [f"run.dir={run_dir}"])
    run_dir.mkdir()
    (run_dir / "checkpoints").mkdir()  # rank 0 is part-way through creating it
    monkeypatch.setenv("RANK", "1")
    assert plan_run_dir(cfg) == (run_dir, None)  # another rank does not judge the directory
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(ConfigError, match="not a distill run"):
        plan_run_dir(cfg)
    write_config(run_dir, cfg)
    first = (run_dir / "config.yaml").stat().st_mtime_ns
    time.sleep(0.01)
    write_config(run_dir, cfg)  # the ddp launcher's re-run: nothing rewritten
    assert (run_dir / "config.yaml").stat().st_mtime_ns == first
    assert plan_run_dir(cfg) == (run_dir, None)


def test_csv_logger_appends_and_drops_replayed_rows(tmp_path):
    from distill.training.csv_logger import AppendingCSVLogger

    path = tmp_path / "metrics.csv"
    # Training-loop rows (Lightning adds `epoch`) carry the batch index; the FID callback's rows carry the
    # number of steps done, so its row at the checkpoint's step 20 belongs to the checkpoint.
    path.write_text("step,epoch,train/loss,fid_1step\n" + "".join(f"{s},0,{s / 10},\n" for s in range(0, 30, 5))
                    + "20,,,6.0\n25,,,6.5\n")
    logger = AppendingCSVLogger(tmp_path, resume_step=20)  # killed at 25, last checkpoint at 20
    logger.log_metrics({"train/loss": 2.0, "epoch": 0}, step=20)
    logger.log_metrics({"train/loss": 2.5, "epoch": 0}, step=25)
    logger.log_metrics({"fid_1step": 7.0}, step=25)
    logger.save()
    with open(path) as f:
        rows = list(csv.DictReader(f))
    assert [(int(r["step"]), bool(r["fid_1step"])) for r in rows] == [
        (0, False), (5, False), (10, False), (15, False), (20, True), (20, False), (25, False), (25, True)]
    assert rows[4]["fid_1step"] == "6.0" and rows[5]["train/loss"] == "2.0" and rows[-1]["fid_1step"] == "7.0"
