"""`distill fit` end to end through the command line: files, dry-run, bad input, resume rules."""

import json

import pytest

from tests.conftest import RECIPES

FAST = ["trainer.max_steps=3", "data.batch_size=8", "student.network.width=8", "checkpoint.every_n_steps=2",
        "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1"]


def test_fit_writes_the_run_directory(run_cli, tmp_path):
    run_cli("fit", RECIPES / "demo.yaml", "run.dir=run", *FAST, check=True)
    run = tmp_path / "run"
    for name in ("config.yaml", "checkpoints/last.ckpt", "student.safetensors", "student.json", "metrics.csv",
                 "samples/final_1step.png"):
        assert (run / name).is_file(), name
    meta = json.loads((run / "student.json").read_text())
    assert meta["schema_version"] == 2 and meta["weights"] == "ema_0.999"
    assert meta["sampling_sigmas"]["1"] == [80.0] and len(meta["sampling_sigmas"]["2"]) == 2
    assert meta["teacher"]["spec"]["name"] == "digits" and meta["recipe"]["run"]["dir"] == "run"
    # Same config again: resumes (nothing to do beyond max_steps) and exits 0.
    again = run_cli("fit", RECIPES / "demo.yaml", "run.dir=run", *FAST, check=True)
    assert "already finished at step 3; raise trainer.max_steps" in again.stderr
    # A different config on the same directory: exit 2 naming the key; nothing changed.
    before = (run / "config.yaml").read_text()
    proc = run_cli("fit", RECIPES / "demo.yaml", "run.dir=run", *FAST, "optim.lr=0.1")
    assert proc.returncode == 2 and "optim.lr" in proc.stderr
    assert (run / "config.yaml").read_text() == before


@pytest.mark.parametrize("args, words", [
    (["trainer.max_stepz=3"], ["trainer.max_stepz"]),
    (["trainer.max_steps=abc"], ["trainer.max_steps"]),
    (["teacher.name=nonexistent"], ["teacher.name", "digits"]),
    (["teacher.name=edm", "teacher.path=/no/such/file.pkl"], ["/no/such/file.pkl"]),
])
def test_bad_input_exits_2_and_creates_nothing(run_cli, tmp_path, args, words):
    proc = run_cli("fit", RECIPES / "demo.yaml", "run.dir=run", *FAST, *args)
    assert proc.returncode == 2, proc.stderr
    for w in words:
        assert w in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists()


def test_dry_run_prints_recipe_warns_and_creates_nothing(run_cli, tmp_path):
    proc = run_cli("fit", RECIPES / "demo.yaml", "run.dir=run", "teacher.name=edm",
                   "teacher.path=weights/edm.pkl", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert "warning" in proc.stderr and "weights/edm.pkl" in proc.stderr
    assert "max_steps" in proc.stdout
    assert not (tmp_path / "run").exists()
