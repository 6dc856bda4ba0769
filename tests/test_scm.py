"""sCD / sCT (distill/methods/scm.py): the tangent is cos(t) df-/dt (finite differences of f along the ODE),
warm-up and normalisation behave as sCM's Algorithm 1, the adaptive weighting finds e^-w = loss, a step's
randomness depends on (seed, step) alone, the discrete keys that would do nothing are refused, and under bf16
autocast a step stays finite."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

import teachers
from distill.config import resolve
from distill.math.precond import ConsistencyStudent
from distill.math.trigflow import TrigFlowFeeding, teacher_velocity, time_derivative
from distill.methods.plan import plan
from distill.methods.scm import AdaptiveWeight, SCMObjective, normalise, tangent
from distill.training.module import ConsistencyDistillation
from teachers.base import expand_like
from teachers.networks import build_network

ROOT = Path(__file__).resolve().parents[1]
TOY = ROOT / "recipes" / "toy2d.yaml"
SD = 0.5


def test_tangent_is_cos_t_times_the_total_derivative_of_f():
    """g(r = 1) = cos t d/dt f(x_t(t), t) along the teacher's ODE, f = cos t x_t - sin t sd F (float64)."""
    torch.manual_seed(0)
    net = build_network("mlp", dim=2, width=32, depth=2)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    student = ConsistencyStudent(net, TrigFlowFeeding(SD), sigma_min=0.002, sigma_max=80.0, sigma_data=SD,
                                 image_shape=(2,), parameterisation="trigflow").double().eval()
    teacher = teachers.load({"name": "toy2d"})
    t = torch.tensor([0.05, 0.7, 1.5], dtype=torch.float64)
    x_t = torch.randn(3, 2, dtype=torch.float64)
    dxdt = teacher_velocity(teacher.denoise, x_t, t, SD)
    F, J = time_derivative(student, x_t, t, dxdt)
    g = tangent(F, J, x_t, dxdt, t, SD, r=1.0)

    def f(s):  # the student at (x_t + s dx/dt, t + s), i.e. along the ODE to first order, in sigma units
        tt = t + s
        return student((x_t + s * dxdt) / expand_like(tt.cos(), x_t), SD * tt.tan())

    eps = 1e-6
    dfdt = (f(eps) - f(-eps)) / (2 * eps)
    assert torch.allclose(g, expand_like(t.cos(), g) * dfdt, rtol=1e-6, atol=1e-9)
    # r scales only F's own change: r = 0 leaves -cos^2 t (sd F - dx/dt).
    g0 = tangent(F, J, x_t, dxdt, t, SD, r=0.0)
    assert torch.allclose(g0, -expand_like(t.cos().square(), F) * (SD * F - dxdt))


def test_warmup_and_normalisation():
    objective = SCMObjective.__new__(SCMObjective)  # only the warm-up schedule is read
    objective.warmup_steps = 100
    assert [objective.warmup(k) for k in (0, 50, 100, 5000)] == [0.0, 0.5, 1.0, 1.0]
    g = torch.randn(4, 3, 8, 8) * torch.tensor([1e-3, 0.1, 1.0, 100.0]).view(4, 1, 1, 1)
    rms = normalise(g, 0.1).flatten(1).square().mean(1).sqrt()
    assert torch.all(rms < 1) and rms[-1] > 0.999 and rms[0] < 0.011  # unit when large, ~g/c when small


def test_adaptive_weight_learns_the_inverse_loss():
    """Minimising e^w L - w over w gives w = -ln L at each noise level (EDM2's uncertainty weighting)."""
    weight = AdaptiveWeight()
    sigma = torch.tensor([0.05, 0.05, 5.0, 5.0])
    L = torch.tensor([4.0, 4.0, 0.01, 0.01])
    opt = torch.optim.Adam(weight.parameters(), lr=0.05)
    for _ in range(800):
        w = weight(sigma)
        loss = (w.exp() * L - w).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert torch.allclose(weight(sigma), -L.log(), atol=0.05)


def test_method_defaults_and_refusals():
    exact = teachers.load({"name": "toy2d"})
    for name, (p_mean, p_std, uses_teacher) in {"scd": (-1.0, 1.4, True), "sct": (-1.0, 1.4, False)}.items():
        p = plan(resolve(TOY, [f"method.name={name}"]), exact, 0.002, 80.0)
        assert (p.pairs.p_mean, p.pairs.p_std) == (p_mean, p_std)
        assert p.target.uses_teacher == uses_teacher and not p.has_target_network and p.mu(0) == 0
        sigma = p.pairs.sample(0, 4096, torch.Generator().manual_seed(0))
        assert sigma.min() >= 0.002 and sigma.max() <= 80.0
        assert abs(sigma.log().median() - p_mean) < 0.1
    assert plan(resolve(TOY, ["method.name=scd", "method.p_std=2.0"]), exact, 0.002, 80.0).pairs.p_std == 2.0
    for bad in ("loss.name=pseudo_huber", "method.mu=0.5", "method.curriculum=ict", "loss.weighting=snr",
                "method.pairs=grid"):
        with pytest.raises(ValueError, match="no effect"):
            plan(resolve(TOY, ["method.name=scd", bad]), exact, 0.002, 80.0)


def test_sct_never_evaluates_the_teacher_and_steps_depend_on_the_step_alone():
    class NoTeacher:
        def __init__(self):
            base = teachers.load({"name": "toy2d"})
            for k in ("sigma_min", "sigma_max", "sigma_data", "image_shape", "num_classes", "sample"):
                setattr(self, k, getattr(base, k))

        def denoise(self, *a, **k):
            raise AssertionError("the teacher was evaluated")

    cfg = resolve(TOY, ["method.name=sct"])
    a, b = ConsistencyDistillation(cfg, NoTeacher()), ConsistencyDistillation(cfg, NoTeacher())
    b.load_state_dict(a.state_dict())
    x0 = a.teacher.sample(32, torch.Generator().manual_seed(0))
    batch = (x0, torch.full((32,), -1))
    first = a.training_step(batch, 0)
    assert torch.isfinite(first) and torch.equal(first, b.training_step(batch, 0))  # resume draws the same


def test_scd_step_under_bf16_autocast_is_finite():
    cfg = resolve(TOY, ["method.name=scd"])
    module = ConsistencyDistillation(cfg, teachers.load({"name": "toy2d"}))
    x0 = module.teacher.sample(32, torch.Generator().manual_seed(0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = module.training_step((x0, torch.full((32,), -1)), 0)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert module.objective.weight.linear.weight.grad is not None  # w_phi trains with the student ...
    groups = module.configure_optimizers().param_groups  # ... at its own rate (method.weighting_lr)
    assert [g["lr"] for g in groups] == [cfg.optim.lr, cfg.method.weighting_lr]
    assert groups[1]["params"] == list(module.objective.parameters())


@pytest.mark.slow
def test_scd_ddp_two_processes_equal_one_process(tmp_path):
    """DDP == 1 process with the same global batch: t, z and the teacher's velocity are drawn for the global
    batch and sliced by rank (gloo, through the CLI, like tests/test_ddp.py)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    common = ["method.name=scd", "method.tangent_warmup_steps=2", "trainer.max_steps=6", "trainer.accelerator=cpu",
              "trainer.enable_progress_bar=false", "data.size=2000", "checkpoint.every_n_steps=3",
              "eval.fid=false", "student.network.width=32"]

    def fit(run, *extra):
        cmd = [sys.executable, "-m", "distill", "fit", str(TOY), f"run.dir={run}", *common, *extra]
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stderr[-4000:]
        return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]

    one = fit(tmp_path / "one", "trainer.devices=1", "data.batch_size=32")
    two = fit(tmp_path / "two", "trainer.devices=2", "trainer.strategy=ddp", "data.batch_size=16")
    assert any(k.startswith("objective.weight.") for k in one)  # w_phi is checkpointed for an exact resume
    worst = max((one[k] - two[k]).abs().max().item() for k in one)
    assert worst < 1e-5, worst



def test_a_fast_time_embedding_is_flagged_for_trigflow_students():
    for net in ("{name: mlp, embedding_scale: 250.0}", "{name: mlp}"):
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            ConsistencyDistillation(resolve(TOY, ["method.name=sct", f"student.network={net}"]),
                                    teachers.load({"name": "toy2d"}))
        assert any("smooth" in str(w.message) for w in seen) == ("250" in net)
