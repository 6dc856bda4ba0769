"""`distill fit` before and after training: the teacher and data checks of --dry-run and of a real start (exit 2,
nothing created), the NaN guard at every exit (no NaN checkpoint or export, a true message), a failed first
run that does not block the corrected rerun, and a rerun that completes a finished run whose end was cut off."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys

import pytest
import torch

import teachers
from distill.cli import main
from tests.conftest import RECIPES, ROOT

FAST = ["trainer.max_steps=4", "data.batch_size=8", "student.network.width=8", "checkpoint.every_n_steps=2",
        "trainer.enable_progress_bar=false", "eval.fid=false", "eval.grid_num=4"]


def fit_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main(["fit", str(RECIPES / "demo.yaml"), *map(str, argv)])
    out = capsys.readouterr()
    return code, out.out, out.err


# -- teachers that break the Denoiser contract, named by `teacher.target` (this module is importable under
#    pytest as `test_fit_checks`) -----------------------------------------------------------------------
class Broken(teachers.Teacher):
    def __init__(self, shape=(1, 8, 8), out_shape=None, num_classes=0, **kw):
        super().__init__(sigma_min=0.002, sigma_max=80.0, sigma_data=0.5, image_shape=shape,
                         num_classes=num_classes, **kw)
        self.out_shape = out_shape

    def _denoise(self, x, sigma, cond):
        out = 0.25 / (0.25 + sigma[:, None, None, None] ** 2) * x
        return out if self.out_shape is None else out[:, :1].expand(x.shape[0], *self.out_shape).clone()


def one_channel_for_rgb():
    """A 3-channel teacher that answers (B, 1, H, W): broadcasts silently in the ODE step."""
    return Broken(shape=(3, 8, 8), out_shape=(1, 8, 8))


def wrong_size():
    return Broken(shape=(1, 8, 8), out_shape=(3, 8, 8))


class OwnSample(Broken):
    def sample(self, n):  # another meaning of `sample`: distill calls sample(num, generator, cond=None)
        return torch.zeros(n, 1, 8, 8)


def own_sample():
    return OwnSample()


class OneHotOnly(Broken):
    def _denoise(self, x, sigma, cond):
        assert cond.ndim == 2, "expects one-hot labels"
        return x


def one_hot_only():
    return OneHotOnly(num_classes=10)


@pytest.mark.parametrize("target, words", [
    ("test_fit_checks:no_such_factory", ["has no", "no_such_factory"]),
    ("test_fit_checkz:one_channel_for_rgb", ["cannot import"]),
    ("test_fit_checks:one_channel_for_rgb", ["returned shape (2, 1, 8, 8)", "(2, 3, 8, 8)"]),
    ("test_fit_checks:wrong_size", ["returned shape (2, 3, 8, 8)", "(2, 1, 8, 8)"]),
    ("test_fit_checks:own_sample", ["sample(num, generator, cond=None)", "(n)"]),
    ("test_fit_checks:one_hot_only", ["int64 labels of shape (2,)", "one-hot"]),
])
@pytest.mark.parametrize("dry", [True, False])
def test_teacher_is_built_and_called_once_before_anything(tmp_path, capsys, target, words, dry):
    code, out, err = fit_cli(capsys, f"run.dir={tmp_path / 'run'}", *FAST, "data.name=synthetic",
                             f"teacher={{target: '{target}'}}", *(["--dry-run"] if dry else []))
    assert code == 2, err
    assert all(w in err for w in words) and "Traceback" not in err, err
    assert not (tmp_path / "run").exists()


def test_dry_run_reads_the_data_and_says_what_run_dir_would_do(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, out, err = fit_cli(capsys, f"run.dir={tmp_path / 'run'}", *FAST, "data.name=folder",
                             f"data.path={tmp_path / 'empty'}", "--dry-run")
    assert code == 2 and "no readable images" in err, err
    code, out, err = fit_cli(capsys, f"run.dir={tmp_path / 'run'}", *FAST, "--dry-run")
    assert code == 0, err
    assert "# check: run.dir" in out and "would start a new run" in out
    assert "# check: teacher:" in out and "finite" in out and "# check: data: digits: 1797 samples" in out
    assert not (tmp_path / "run").exists()
    assert fit_cli(capsys, f"run.dir={tmp_path / 'run'}", *FAST)[0] == 0
    code, out, err = fit_cli(capsys, f"run.dir={tmp_path / 'run'}", *FAST, "trainer.max_steps=6", "--dry-run")
    assert code == 0 and "would resume from" in out and "(step 4)" in out, out + err
    code, out, err = fit_cli(capsys, f"run.dir={tmp_path / 'run'}", *FAST, "optim.lr=0.1", "--dry-run")
    assert code == 2 and "optim.lr" in err and "different config" in err, err


def test_nan_from_a_huge_learning_rate_exports_nothing_and_says_so(tmp_path, capsys):
    """`optim.lr=1e30 trainer.max_steps=10` used to exit 0 with every tensor NaN: the guard looked only every
    50 steps and on checkpoint steps, while the final checkpoint and export always ran."""
    code, out, err = fit_cli(capsys, f"run.dir={tmp_path / 'run'}", *FAST, "checkpoint.every_n_steps=500",
                             "optim.lr=1e30", "trainer.max_steps=10")
    assert code == 1, err
    assert "NaN/Inf" in err and "no checkpoint had been written yet" in err
    assert "student diverged" in err and "optim.lr (now 1e+30)" in err, err
    assert not (tmp_path / "run").exists()  # failed before its first checkpoint: nothing left behind
    # The corrected rerun is not blocked by what the failed one wrote.
    assert fit_cli(capsys, f"run.dir={tmp_path / 'run'}", *FAST)[0] == 0
    assert (tmp_path / "run" / "student.safetensors").is_file()


def test_nan_teacher_is_named_and_the_last_good_checkpoint_kept(tmp_path):
    from distill.config import resolve
    from distill.training.callbacks.nan_guard import NonFiniteLossError
    from distill.training.fit import fit

    cfg = resolve(RECIPES / "demo.yaml", [f"run.dir={tmp_path / 'run'}", *FAST, "trainer.max_steps=7"])
    teacher = teachers.load({"name": "digits"})
    calls = []
    inner = type(teacher).denoise

    def denoise(x, sigma, cond=None):  # 2 Heun calls per step (+1 start probe): NaN from step 3 on
        calls.append(1)
        out = inner(teacher, x, sigma, cond)
        return out * float("nan") if len(calls) > 7 else out

    teacher.denoise = denoise
    with pytest.raises(NonFiniteLossError) as err:
        fit(cfg, teacher=teacher)
    text = str(err.value)
    assert "at step 3" in text and "teacher returns NaN/Inf" in text, text
    assert "(step 2, finite weights) is kept" in text, text
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["global_step"] == 2 and all(torch.isfinite(v).all() for v in state["state_dict"].values())
    assert not (tmp_path / "run" / "student.safetensors").exists()


def test_non_finite_teacher_attribute_is_refused(tmp_path, capsys):
    from teachers.edm import save_edm
    from teachers.networks import build_network

    net = build_network("ddpmpp", img_resolution=8, in_channels=1, model_channels=16, channel_mult=[1, 2],
                        num_blocks=1, attn_resolutions=[4], dropout=0.0)
    path = save_edm(net, tmp_path / "t.safetensors", sigma_min=0.002, sigma_max=80.0, sigma_data=float("nan"),
                    image_shape=(1, 8, 8))
    code, out, err = fit_cli(capsys, f"run.dir={tmp_path / 'run'}", *FAST, "teacher.name=edm",
                             f"teacher.path={path}")
    assert code == 2 and "sigma_data = nan" in err, err
    assert not (tmp_path / "run").exists()


def test_leftover_of_a_run_killed_before_its_first_checkpoint_does_not_block(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("optim: {lr: 1.0e+30}\n")  # what a kill -9 at step 1 leaves
    (run / "metrics.csv").write_text("step,train/loss\n0,nan\n")
    assert fit_cli(capsys, f"run.dir={run}", *FAST)[0] == 0
    assert "1.0e+30" not in (run / "config.yaml").read_text()
    assert not (run / "metrics.csv").exists()  # no step was logged (log_every_n_steps 50): the old rows are gone


KILL_AT_EXPORT = """
import os, signal, sys
import distill.training.callbacks.export as export
export.write_export = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
from distill.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_rerun_completes_a_run_killed_during_its_export(tmp_path, capsys):
    """SIGKILL while the export is written, after the final checkpoint: the rerun used to resume at max_steps,
    where Lightning skips the loop and its end hooks, and exit 0 without any export or grid."""
    args = [str(RECIPES / "demo.yaml"), f"run.dir={tmp_path / 'run'}", *FAST]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", KILL_AT_EXPORT, "fit", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    run = tmp_path / "run"
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 4
    assert not (run / "student.safetensors").exists()
    (run / "checkpoints" / "last.ckpt.tmp").write_bytes(b"half a checkpoint")  # and a kill during a write
    assert main(["fit", *args]) == 0
    meta = json.loads((run / "student.json").read_text())
    assert meta["step"] == 4 and (run / "student.safetensors").is_file()
    assert (run / "samples" / "final_1step.png").is_file()
    assert not list(run.rglob("*.tmp"))
    # A later max_steps: the old export is stale, and after this run it is current again.
    shutil.rmtree(run / "samples")
    assert main(["fit", *args, "trainer.max_steps=6"]) == 0
    assert json.loads((run / "student.json").read_text())["step"] == 6
    assert (run / "samples" / "final_2step.png").is_file()
