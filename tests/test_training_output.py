"""What `distill fit` shows and writes besides the model: progress, resume messages, loggers, training.png."""

from __future__ import annotations

import io
from types import SimpleNamespace

import pytest

from tests.conftest import RECIPES

FAST = ["trainer.max_steps=3", "data.batch_size=8", "student.network.width=8", "checkpoint.every_n_steps=2",
        "trainer.log_every_n_steps=1", "eval.num=16", "eval.grid_num=4"]


def test_plain_progress_lines_and_resume_message_in_a_log_file(run_cli, tmp_path):
    quick = [*FAST, "trainer.enable_progress_bar=true", "eval.fid=false"]
    proc = run_cli("fit", RECIPES / "demo.yaml", "run.dir=run", *quick, check=True)
    err = proc.stderr
    assert "step 0 of 3" in err and "step 3 of 3, loss" in err, err[-2000:]
    assert "\r" not in err and "\r" not in proc.stdout  # stderr is a pipe here: lines, not a redrawn bar
    for noise in ("litlogger", "litmodels", "LeafSpec"):  # third-party adverts and deprecations
        assert noise not in err, err
    proc = run_cli("fit", RECIPES / "demo.yaml", "run.dir=run", *quick, "trainer.max_steps=5", check=True)
    assert "resuming at step 3 of 5" in proc.stderr and "step 3 of 5" in proc.stderr
    assert "step 5 of 5" in proc.stderr and "Restoring states" not in proc.stderr
    assert (tmp_path / "run" / "training.png").stat().st_size > 0


def test_tensorboard_and_offline_wandb_write_under_the_run_directory(run_cli, tmp_path):
    pytest.importorskip("tensorboard")
    pytest.importorskip("wandb")
    proc = run_cli("fit", RECIPES / "demo.yaml", "run.dir=run", *FAST, "trainer.enable_progress_bar=false",
                   "log.loggers=[csv,tensorboard,wandb]", "eval.every_n_steps=2",
                   env={"WANDB_MODE": "online", "WANDB_API_KEY": ""}, check=True)  # offline whatever the env
    run = tmp_path / "run"
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    offline = list((run / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(offline) == 1 and offline[0].stat().st_size > 0
    assert "wandb sync" in proc.stderr and "anonymous" not in proc.stderr
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard")).Reload()
    assert {"train/loss", "fid_1step", "fid_2step"} <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("fid_1step")] == [2, 3]


def test_a_missing_logger_package_exits_2_naming_pip(monkeypatch, tmp_path, capsys):
    import importlib.util

    from distill.cli import main

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    run = tmp_path / "run"
    assert main(["fit", str(RECIPES / "demo.yaml"), f"run.dir={run}", *FAST, "log.loggers=[wandb]"]) == 2
    err = capsys.readouterr().err
    assert "pip install wandb" in err and "log.loggers" in err
    assert not run.exists()


def test_unknown_logger_is_a_recipe_error():
    from distill.config import ConfigError, resolve

    with pytest.raises(ConfigError, match="log.loggers.*'mlflow'.*tensorboard"):
        resolve(RECIPES / "demo.yaml", ["log.loggers=[csv,mlflow]"])


def test_terminal_bar_counts_steps_from_the_resumed_step():
    from distill.training.callbacks.progress import StepProgress

    out = io.StringIO()
    bar = StepProgress(stream=out, terminal=True)
    trainer = SimpleNamespace(global_step=40, max_steps=100, progress_bar_metrics={"train/loss": 0.5})
    bar.on_train_start(trainer, None)
    trainer.global_step = 41
    bar.on_train_batch_end(trainer, None, None, None, 0)
    bar.on_train_end(trainer, None)
    text = out.getvalue()
    assert "40/100" in text and "41/100" in text and "loss=0.5" in text


def test_training_plot_draws_loss_and_fid_against_step(tmp_path):
    from PIL import Image

    from distill.training.callbacks.plot import plot_training, read_series

    csv_path = tmp_path / "metrics.csv"
    csv_path.write_text("step,epoch,fid_1step,fid_2step,train/loss\n4,0,,,0.5\n5,,9.0,7.0,\n9,0,,,0.25\n"
                        "10,,8.0,nan,\n")
    series = read_series(csv_path)
    assert series["train/loss"] == ([4, 9], [0.5, 0.25]) and series["fid_2step"] == ([5], [7.0])
    assert plot_training(csv_path, tmp_path / "training.png")
    assert Image.open(tmp_path / "training.png").size[0] >= 800  # two panels side by side
    (tmp_path / "empty.csv").write_text("step\n")
    assert not plot_training(tmp_path / "empty.csv", tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()
