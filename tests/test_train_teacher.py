"""`distill train-teacher`: EDM's loss and EMA against their formulas, the run-directory rules of `fit`
(resume == uninterrupted, conflicts and bad input exit 2 creating nothing, --dry-run creates nothing), and the
export: teacher.safetensors + teacher.json load as `teacher: {name: edm, ...}` with the EMA weights and the
training data's record, which `distill eval` then uses as its reference."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import teachers
from distill.training.callbacks.halflife_ema import ema_beta
from distill.training.teacher_module import edm_loss, lognormal_sigmas
from teachers.base import BackboneFeeding, edm_scalings, expand_like
from teachers.networks import build_network

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "digits_teacher.yaml"
TINY = ["trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1", "data.batch_size=16",
        "model.network={name: small_unet, width: 8, channel_mult: [1, 2], num_blocks: 1}",
        "ema.halflife_kimg=[0.05, 1]", "eval.num=32", "eval.nfe=3", "eval.grid_num=4", "optim.warmup_steps=2"]


def tiny_cfg(run_dir: Path, *extra: str):
    from distill.training.teacher_recipe import resolve_teacher_recipe

    return resolve_teacher_recipe(RECIPE, [f"run.dir={run_dir}", *TINY, *extra])


def test_edm_loss_is_the_preconditioned_regression_of_edm_eq_8():
    """lambda(s) ||D - y||^2 = ||F - F_target||^2 with F_target = (y - c_skip x) / c_out (EDM eq. 8, Table 1):
    the loss weight makes every noise level a unit-scale regression of the raw network output."""
    torch.manual_seed(0)
    net = build_network("small_unet", in_channels=1, width=8, channel_mult=[1, 2], num_blocks=1)
    torch.nn.init.normal_(net.conv_out.weight, std=0.1)  # a non-zero output, so F matters
    feeding, sd = BackboneFeeding(0.5), 0.5
    y = torch.randn(6, 1, 8, 8, dtype=torch.float64) * 0.5
    sigma = torch.tensor([0.002, 0.05, 0.3, 1.0, 7.0, 80.0], dtype=torch.float64)
    x = y + expand_like(sigma, y) * torch.randn_like(y)
    net = net.double()
    ours = edm_loss(feeding.denoise(net, x, sigma), y, sigma, sd)
    c_skip, c_out, c_in, c_noise = edm_scalings(sigma, sd)
    F = net(expand_like(c_in, x) * x, c_noise, None)
    target = (y - expand_like(c_skip, x) * x) / expand_like(c_out, x)
    ref = (F - target).flatten(1).pow(2).mean(1)
    torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-12)


def test_lognormal_sigmas_follow_p_mean_and_p_std():
    s = lognormal_sigmas(200_000, -1.2, 1.2, torch.Generator().manual_seed(0), dtype=torch.float64)
    assert abs(float(s.log().mean()) + 1.2) < 0.01 and abs(float(s.log().std()) - 1.2) < 0.01
    again = lognormal_sigmas(200_000, -1.2, 1.2, torch.Generator().manual_seed(0), dtype=torch.float64)
    assert torch.equal(s, again)


def test_ema_half_life_is_counted_in_images_with_edms_rampup():
    # Past the ramp-up, the old average's weight halves every `halflife` images, whatever the batch size.
    for batch in (16, 128, 512):
        beta = ema_beta(10**9, batch, 50_000, 0.05)
        assert math.isclose(beta ** (50_000 / batch), 0.5, rel_tol=1e-12)
    # During the ramp-up the half-life is 5% of the images seen (NVlabs EDM training_loop.py).
    assert math.isclose(ema_beta(100_000, 100, 500_000, 0.05), 0.5 ** (100 / 5_000), rel_tol=1e-12)
    assert math.isclose(ema_beta(100_000, 100, 500_000, None), 0.5 ** (100 / 500_000), rel_tol=1e-12)


def test_train_teacher_writes_a_loadable_edm_teacher_and_resumes_exactly(tmp_path, distill_cache, monkeypatch):
    from safetensors.torch import load_file

    from distill.training.teacher_fit import fit_teacher
    from distill.training.teacher_module import EDMTeacherTraining

    straight = fit_teacher(tiny_cfg(tmp_path / "straight", "trainer.max_steps=6", "checkpoint.every_n_steps=3"))
    # Interrupted after 3 steps (the checkpoint), then the same command with the full budget resumes.
    part = tmp_path / "resumed"
    fit_teacher(tiny_cfg(part, "trainer.max_steps=3", "checkpoint.every_n_steps=3"))
    trained = []
    step = EDMTeacherTraining.training_step
    monkeypatch.setattr(EDMTeacherTraining, "training_step",
                        lambda self, *a: trained.append(self.global_step) or step(self, *a))
    fit_teacher(tiny_cfg(part, "trainer.max_steps=6", "checkpoint.every_n_steps=3"))
    assert trained == [3, 4, 5], "the second run must continue from the checkpoint, not start over"
    for name in ("teacher.safetensors", "checkpoints/last.ckpt"):
        assert (part / name).is_file()
    a, b = load_file(str(straight / "teacher.safetensors")), load_file(str(part / "teacher.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "resumed teacher differs"

    meta = json.loads((straight / "teacher.json").read_text())
    assert meta["data"]["name"] == "digits" and meta["licence"] == meta["data"]["licence"]
    assert "BSD-3-Clause" in meta["licence"]
    assert meta["training"]["steps"] == 6 and meta["training"]["weights"] == "ema_halflife_0.05kimg"
    assert meta["eval"]["nfe"] == 3 and math.isfinite(meta["eval"]["fid_heun3"])
    assert (straight / "samples" / "final_heun3.png").is_file()
    with open(straight / "metrics.csv") as f:
        assert "fid_heun3" in f.readline()

    # Exported: the first EMA average (not the online weights), as `teachers.load` rebuilds it.
    teacher = teachers.load({"name": "edm", "path": str(straight / "teacher.safetensors")})
    ckpt = torch.load(straight / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    ema = ckpt["callbacks"]["HalfLifeEMA"]["averages"]["halflife_0.05kimg"]
    online = {k[len("net."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
    state = teacher.backbone.state_dict()
    assert all(torch.equal(state[k], ema[k]) for k in state)
    assert any(not torch.equal(state[k], online[k]) for k in state if state[k].is_floating_point())
    assert teacher.training_data["name"] == "digits" and teacher.licence == meta["licence"]
    x = torch.randn(3, 1, 8, 8)
    out = teacher.denoise(x, torch.tensor([0.1, 1.0, 10.0]))
    assert out.shape == x.shape and torch.isfinite(out).all()


def cli(capsys, *args) -> tuple[int, str]:
    """`distill ARGS` in this process (the exit code main() returns, and stderr)."""
    from distill.cli import main

    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


def test_conflicts_and_bad_input_exit_2_and_create_nothing(tmp_path, capsys):
    run = tmp_path / "run"
    base = ["train-teacher", RECIPE, f"run.dir={run}", *TINY]
    code, err = cli(capsys, *base, "trainer.max_steps=1", "--dry-run")
    assert code == 0 and "would start a new run" in err and "1797 images of shape (1, 8, 8)" in err
    assert not run.exists()

    code, err = cli(capsys, *base, "model.widht=3")
    assert code == 2 and "model.widht" in err and not run.exists()
    code, err = cli(capsys, *base, "data.name=folder", "data.path=/nonexistent/images", "model.image_shape=[1, 8, 8]")
    assert code == 2 and "/nonexistent/images" in err and not run.exists()
    code, err = cli(capsys, *base, "data.name=folder", f"data.path={tmp_path}")
    assert code == 2 and "model.image_shape" in err and not run.exists()
    code, err = cli(capsys, *base, "model.num_classes=3")  # digits labels run to 9
    assert code == 2 and "num_classes" in err and not run.exists()

    assert cli(capsys, *base, "trainer.max_steps=1")[0] == 0 and (run / "teacher.safetensors").is_file()
    code, err = cli(capsys, *base, "trainer.max_steps=1", "--dry-run")
    assert code == 0 and "would resume" in err
    code, err = cli(capsys, *base, "trainer.max_steps=1", "loss.p_mean=-1.0")
    assert code == 2 and "loss.p_mean" in err


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory):
    from distill.training.teacher_fit import fit_teacher

    run = tmp_path_factory.mktemp("teacher") / "run"
    fit_teacher(tiny_cfg(run, "trainer.max_steps=2", "eval.fid=false"))
    return run / "teacher.safetensors"


def test_eval_of_a_network_teachers_student_uses_the_recorded_training_data(tiny_teacher, tmp_path, capsys):
    from distill.config import resolve
    from distill.evaluation.metrics.reference import save_stats
    from distill.training.fit import fit

    run = tmp_path / "student"
    fit(resolve(ROOT / "recipes" / "digits_edm_cd.yaml",
                [f"run.dir={run}", f"teacher.path={tiny_teacher}", "trainer.max_steps=2",
                 "trainer.enable_progress_bar=false", "eval.fid=false", "data.batch_size=8", "eval.grid_num=4"]))
    student = json.loads((run / "student.json").read_text())
    assert student["network"] == json.loads(tiny_teacher.with_suffix(".json").read_text())["network"]
    out = tmp_path / "report.json"
    assert cli(capsys, "eval", run, "--steps", "1", "--teacher-nfe", "1", "--num", "16", "--out", out)[0] == 0
    rep = json.loads(out.read_text())
    assert rep["reference"] == "1797 images of the digits data the teacher was trained on"
    assert math.isfinite(rep["student"]["1"]["fid"]) and "traj_rmse" in rep["teacher"]["1"]

    # --ref still wins.
    ref = save_stats(tmp_path / "ref.npz", torch.zeros(64).numpy(), torch.eye(64).numpy(), features="pixel",
                     description="my statistics")
    code, _ = cli(capsys, "eval", run, "--steps", "1", "--teacher-nfe", "1", "--num", "16", "--ref", ref,
                  "--features", "pixel", "--out", out)
    assert code == 0 and json.loads(out.read_text())["reference"] == "my statistics"

    # A teacher with neither exact samples nor recorded in-memory data: exit 2 asking for --ref.
    meta = json.loads(tiny_teacher.with_suffix(".json").read_text())
    meta["data"] = {"name": "webdataset", "path": "shards/{000..009}.tar"}
    tiny_teacher.with_suffix(".json").write_text(json.dumps(meta))
    code, err = cli(capsys, "eval", run, "--steps", "1", "--teacher-nfe", "1", "--num", "16", "--out", out)
    assert code == 2 and "--ref" in err


def test_bench_quality_network_teacher_with_sweep(tmp_path, distill_cache):
    """--teacher network trains (then reuses) the cached teacher; the report holds the teacher's own 35-NFE row,
    the ratios to it and the 2-step sweep over [0.2, 10]."""
    from distill.bench.network_teacher import cached_teacher_path
    from distill.bench.quality import run_quality

    teacher_overrides = ["trainer.max_steps=2", "eval.fid=false", "data.batch_size=8",
                         "model.network={name: small_unet, width: 8, channel_mult: [1, 2], num_blocks: 1}"]
    logs = []
    results = run_quality(["cd"], tmp_path / "q.json", steps=2, num=32, teacher="network", sweep=True,
                          extra=["data.batch_size=8"], teacher_overrides=teacher_overrides, log=logs.append)
    assert json.loads((tmp_path / "q.json").read_text()).keys() == {"cd"}
    rep = results["cd"]
    assert rep["reference"] == "1797 images of the digits data the teacher was trained on"
    t35 = rep["teacher"]["35"]["fid"]
    for k in ("1", "2"):
        assert math.isclose(rep["ratio_to_teacher"][k], rep["student"][k]["fid"] / t35)
    sweep = rep["sweep"]
    sigmas = torch.tensor(sweep["sigmas"], dtype=torch.float64)
    assert len(sigmas) >= 8 and math.isclose(sigmas[0], 0.2) and math.isclose(sigmas[-1], 10.0)
    ratios = sigmas[1:] / sigmas[:-1]
    assert torch.allclose(ratios, ratios[0].expand_as(ratios), rtol=1e-3)  # log-spaced (4-digit rounding)
    fids = sweep["fid"]
    assert len(fids) == len(sigmas) and math.isclose(sweep["max_over_min"], max(fids) / min(fids))
    assert any("training" in line for line in logs)
    path = cached_teacher_path(overrides=teacher_overrides, log=logs.append)
    assert "reusing" in logs[-1] and path.parent.parent == distill_cache / "teachers"


def test_rerun_completes_a_teacher_run_killed_during_its_export(tmp_path):
    """A kill after the final checkpoint left no teacher.safetensors; the rerun resumes at max_steps, where
    Lightning skips on_train_end, and must still write the evaluation and the export (issue 13 item 8)."""
    from distill.training.teacher_fit import fit_teacher

    cfg = tiny_cfg(tmp_path / "run", "trainer.max_steps=4", "checkpoint.every_n_steps=2")
    run = fit_teacher(cfg)
    first = (run / "teacher.safetensors").read_bytes()
    (run / "teacher.safetensors").unlink()
    (run / "teacher.json").unlink()
    (run / "teacher.json.tmp").write_text("{")  # a kill inside the atomic write
    fit_teacher(cfg)
    assert (run / "teacher.safetensors").read_bytes() == first  # the same EMA weights, from the checkpoint
    assert json.loads((run / "teacher.json").read_text())["training"]["steps"] == 4
    assert not (run / "teacher.json.tmp").exists()
