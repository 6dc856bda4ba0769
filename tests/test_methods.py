"""Methods by `method.name`: each one trains (lowers the 1-step trajectory error on toy2d), CT/iCT/ECT never
call the teacher, and the method defaults resolve as the papers define them."""

from __future__ import annotations

import logging
import math
import warnings

import pytest
import torch

import teachers
from distill import config
from distill.bench.quality import pretrain_denoiser
from distill.config import resolve
from distill.evaluation.evaluate import generate, rms
from distill.export import load_student
from distill.methods import curriculum as C
from distill.methods.plan import METHODS, plan
from distill.training.module import ConsistencyDistillation

TOY = "recipes/toy2d.yaml"
# Test-sized runs (300 steps, < 10 s each); each method with its paper's loss and curriculum.
RUNS = {
    "cd": [],
    "ct": [],  # the paper's s1 = 150 and mu0 = 0.9, the rate scaled to the 300 steps
    "ict": ["loss.name=pseudo_huber", "loss.weighting=inverse_delta"],
    "ect": ["loss.name=pseudo_huber", "loss.c=0.0", "loss.weighting=inverse_delta"],
    "scd": ["method.tangent_warmup_steps=30"],
    "sct": ["method.tangent_warmup_steps=30"],
}
SLOW = {"scd", "sct"}  # a forward-mode JVP per step: about twice a CD step on these tiny networks


def traj_rmse(student, exact, num=256):
    s = generate(student, exact, steps=[1], teacher_nfe=[], num=num, seed=123, progress=False)
    return rms(s["student"][1], s["reference"])


@pytest.mark.parametrize("method", [pytest.param(m, marks=[pytest.mark.slow] if m in SLOW else [])
                                    for m in sorted(RUNS)])
def test_each_method_lowers_one_step_trajectory_error(method, tmp_path):
    from distill.training.fit import fit

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    exact = teachers.load({"name": "toy2d"})
    cfg = resolve(TOY, [f"method.name={method}", "trainer.max_steps=300", f"run.dir={tmp_path / 'run'}",
                        "trainer.enable_progress_bar=false", *RUNS[method]])
    teacher = exact
    if method == "ect":  # ECT tunes a pretrained diffusion model: make one of the student's MLP
        teacher = pretrain_denoiser(exact, {"name": "mlp", "width": 128, "depth": 3}, steps=300, batch=256)
    before = traj_rmse(ConsistencyDistillation(cfg, teacher).student, exact)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit(cfg, teacher=teacher)
    after = traj_rmse(load_student(tmp_path / "run"), exact)
    assert after < 0.8 * before, (method, before, after)


class NoTeacher:
    """A teacher whose denoiser must not be called (CT, iCT and ECT learn from data alone)."""

    def __init__(self):
        base = teachers.load({"name": "toy2d"})
        for k in ("sigma_min", "sigma_max", "sigma_data", "image_shape", "num_classes"):
            setattr(self, k, getattr(base, k))
        self.sample = base.sample

    def denoise(self, *a, **k):
        raise AssertionError("the teacher was evaluated")


@pytest.mark.parametrize("method", ["ct", "ict", "ect", "sct"])
def test_training_methods_never_evaluate_the_teacher(method):
    cfg = resolve(TOY, [f"method.name={method}"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = ConsistencyDistillation(cfg, NoTeacher())
    x0 = module.teacher.sample(32, torch.Generator().manual_seed(0))
    assert torch.isfinite(module.training_step((x0, torch.full((32,), -1)), 0))


def test_method_defaults_follow_the_papers():
    exact = teachers.load({"name": "toy2d"})
    expect = {"cd": ("fixed", "fixed", "uniform", False), "ct": ("ct", "adaptive", "uniform", True),
              "ict": ("ict", "none", "lognormal", False), "ect": ("ect", "none", None, False)}
    for name, (curriculum, mu_schedule, sampling, has_target) in expect.items():
        cfg = resolve(TOY, [f"method.name={name}", "trainer.max_steps=800"])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            p = plan(cfg, exact, 0.002, 80.0)
        assert (p.curriculum, p.mu_schedule, p.has_target_network) == (curriculum, mu_schedule, has_target)
        assert p.target.uses_teacher == (name == "cd")
        if sampling is not None:
            assert p.pairs.index_sampling == sampling
    cfg = resolve(TOY, ["method.name=ict", "trainer.max_steps=800"])
    assert plan(cfg, exact, 0.002, 80.0).levels(799) == 1281  # N doubles 10 -> 1280 over K
    # Any `auto` can be overridden: CD with the CT curriculum and its adaptive rate.
    cfg = resolve(TOY, ["method.name=cd", "method.curriculum=ct", "method.mu_schedule=adaptive"])
    p = plan(cfg, exact, 0.002, 80.0)
    assert p.target.uses_teacher and p.levels(0) == 2 and p.has_target_network
    assert config.CHOICES["method.name"] == tuple(METHODS)


def test_ct_target_network_follows_adaptive_mu():
    cfg = resolve(TOY, ["method.name=ct", "trainer.max_steps=100", "method.mu0=0.9", "method.mu_ref_steps=null"])
    module = ConsistencyDistillation(cfg, teachers.load({"name": "toy2d"}))
    assert module.target is not None
    x0 = module.teacher.sample(32, torch.Generator().manual_seed(0))
    old = [p.detach().clone() for p in module.target.parameters()]
    with torch.no_grad():
        for p in module.student.parameters():
            p.add_(0.1)
    module.training_step((x0, torch.full((32,), -1)), 0)
    mu = C.ct_mu(C.ct_N(0, 100, 2, 150), 2, 0.9)
    assert module._mu == pytest.approx(mu)
    module.on_train_batch_end(None, None, 0)
    for o, t, s in zip(old, module.target.parameters(), module.student.parameters()):
        assert torch.allclose(t, mu * o + (1 - mu) * s, atol=1e-6)


def test_ct_adaptive_mu_is_scaled_to_the_run():
    """The paper's rate at its own K = 800k (or with mu_ref_steps null); ln(mu) times 800k / K otherwise, K being
    the steps after a denoiser warm start."""
    exact = teachers.load({"name": "toy2d"})

    def mu(overrides, k):
        return plan(resolve(TOY, ["method.name=ct", *overrides]), exact, 0.002, 80.0).mu(k)

    for k in (0, 400_000, 799_999):
        assert mu(["trainer.max_steps=800000"], k) == C.ct_mu(C.ct_N(k, 800_000), 2, 0.9)
    assert mu(["trainer.max_steps=4500", "method.mu_ref_steps=null"], 4499) == C.ct_mu(C.ct_N(4499, 4500), 2, 0.9)
    n = C.ct_N(4499, 4500)
    assert mu(["trainer.max_steps=4500"], 4499) == pytest.approx(math.exp(800_000 / 4500 * 2 * math.log(0.9) / n))
    warm = ["trainer.max_steps=5000", "student.denoiser_steps=500"]
    assert mu(warm, 4499) == pytest.approx(mu(["trainer.max_steps=4500"], 4499))


@pytest.mark.parametrize("key,value", [("method.mu0", 1.0), ("method.mu0", 0), ("method.mu_ref_steps", 0),
                                       ("method.total_steps", 0)])
def test_ct_schedule_values_out_of_range_are_refused(key, value):
    with pytest.raises(config.ConfigError, match=key):
        resolve(TOY, ["method.name=ct", f"{key}={value}"])


def test_curricula_without_a_step_budget_are_refused():
    """`trainer.max_steps: -1` leaves K undefined: CT's N(k) and its scaled rate need it (or method.total_steps)."""
    exact = teachers.load({"name": "toy2d"})
    with pytest.raises(ValueError, match="method.total_steps"):
        plan(resolve(TOY, ["method.name=ct", "trainer.max_steps=-1"]), exact, 0.002, 80.0)
    p = plan(resolve(TOY, ["method.name=ct", "trainer.max_steps=-1", "method.total_steps=800000"]), exact, 0.002, 80.0)
    assert p.mu(0) == pytest.approx(0.9)
    assert plan(resolve(TOY, ["method.name=cd", "trainer.max_steps=-1"]), exact, 0.002, 80.0).mu(10**6) == 0.0


def test_pairs_depend_on_the_step_alone():
    """Resume is exact: the pairs at step k do not depend on which steps were drawn before."""
    cfg = resolve(TOY, ["method.name=ict", "trainer.max_steps=800"])
    exact = teachers.load({"name": "toy2d"})
    a, b = plan(cfg, exact, 0.002, 80.0), plan(cfg, exact, 0.002, 80.0)
    for k in (0, 500, 700):
        a.pairs.sample(k, 16, torch.Generator().manual_seed(k))
    ka = a.pairs.sample(300, 16, torch.Generator().manual_seed(9))
    kb = b.pairs.sample(300, 16, torch.Generator().manual_seed(9))
    assert all(torch.equal(x, y) for x, y in zip(ka, kb))


def test_contradictory_method_keys_are_refused():
    exact = teachers.load({"name": "toy2d"})
    with pytest.raises(ValueError, match="stop-gradient"):
        plan(resolve(TOY, ["method.name=ict", "method.mu=0.9"]), exact, 0.002, 80.0)
    with pytest.raises(ValueError, match="skip"):
        plan(resolve(TOY, ["method.name=ect", "method.skip=2"]), exact, 0.002, 80.0)
    with pytest.raises(ValueError, match="solver_steps"):
        plan(resolve(TOY, ["method.solver_steps=0"]), exact, 0.002, 80.0)


def test_bench_quality_reports_each_method(tmp_path):
    """The `distill bench quality` plumbing at a toy budget: {"<method>": report.json} per method."""
    import json

    from distill.bench.quality import run_quality

    out = tmp_path / "quality.json"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = run_quality(["cd", "ect", "scd"], out, steps=2, ect_pretrain_steps=2, num=16, log=lambda *_: None)
    assert json.loads(out.read_text()).keys() == result.keys() == {"cd", "ect", "scd"}
    for rep in result.values():
        assert {"1", "2"} <= rep["student"].keys() and "traj_rmse" in rep["student"]["1"]
        assert rep["num_samples"] == 16
