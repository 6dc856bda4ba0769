"""The denoiser warm start (student.denoiser_steps or _fraction) and the learning-rate schedule (optim.schedule)."""

from __future__ import annotations

import math

import pytest
import torch

import teachers
from distill.config import ConfigError, resolve, warm_start_steps
from distill.methods import curriculum as C
from distill.methods.denoiser import denoiser_loss, edm_weight
from distill.training.lr_schedule import lr_factor
from distill.training.module import ConsistencyDistillation

TOY = "recipes/toy2d.yaml"


def test_lr_factor_warms_up_then_follows_its_schedule():
    assert [lr_factor(k, warmup=4) for k in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    kw = dict(warmup=10, total=110, final_ratio=0.1)
    assert lr_factor(10, schedule="cosine", **kw) == pytest.approx(1.0)
    assert lr_factor(60, schedule="cosine", **kw) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_factor(110, schedule="cosine", **kw) == pytest.approx(0.1)
    assert lr_factor(35, schedule="linear", **kw) == pytest.approx(0.1 + 0.9 * 0.75)
    assert lr_factor(500, schedule="linear", **kw) == pytest.approx(0.1)  # held after the last step
    assert lr_factor(500, schedule="constant", **kw) == 1.0


def test_denoiser_loss_is_edms_weighted_error():
    sigma = torch.tensor([0.1, 1.0, 10.0], dtype=torch.float64)
    a, b = torch.randn(3, 2, dtype=torch.float64), torch.randn(3, 2, dtype=torch.float64)
    expected = (sigma**2 + 0.25) / (sigma * 0.5) ** 2 * (a - b).pow(2).mean(1)
    assert torch.allclose(denoiser_loss(a, b, sigma, 0.5), expected)
    assert torch.allclose(edm_weight(sigma, 0.5) * (0.5 * sigma / (sigma**2 + 0.25).sqrt()) ** 2,
                          torch.ones(3, dtype=torch.float64))  # lambda c_out^2 = 1: unit loss scale on F


def _denoise_error(module, exact, sigmas=(0.05, 0.5, 5.0)) -> float:
    x0 = exact.sample(512, torch.Generator().manual_seed(1))
    z = torch.randn(x0.shape, generator=torch.Generator().manual_seed(2))
    s = module.student
    errs = []
    with torch.no_grad():
        for sigma in sigmas:
            x = x0 + sigma * z
            mine = s.feeding.denoise(s.net, x, torch.full((512,), sigma), None)
            errs.append(float((mine - exact.denoise(x, sigma)).pow(2).mean().sqrt()))
    return max(errs)


def test_warm_start_trains_the_network_as_the_teachers_denoiser():
    cfg = resolve(TOY, ["student.denoiser_steps=400", "trainer.max_steps=401"])
    exact = teachers.load({"name": "toy2d"})
    torch.manual_seed(0)
    module = ConsistencyDistillation(cfg, exact)
    before = _denoise_error(module, exact)
    opt = torch.optim.Adam(module.student.parameters(), lr=2e-3)
    for k in range(400):
        module._trainer = None
        x0 = exact.sample(256, torch.Generator().manual_seed(100 + k))
        loss = module.denoiser_step(x0, None, torch.Generator().manual_seed(k))
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = _denoise_error(module, exact)
    assert after < 0.5 * before, (before, after)


def test_curricula_start_after_the_warm_start():
    cfg = resolve(TOY, ["method.name=ct", "trainer.max_steps=150", "student.denoiser_steps=50"])
    module = ConsistencyDistillation(cfg, teachers.load({"name": "toy2d"}))
    assert module.plan.levels(0) == C.ct_N(0, 100)  # method step 0 is global step 50
    assert module.plan.levels(100) == C.ct_N(100, 100) == 151  # K = 150 - 50


def test_warm_start_longer_than_the_run_is_refused():
    with pytest.raises(ConfigError, match="denoiser_steps"):
        resolve(TOY, ["student.denoiser_steps=600"])  # max_steps is 600 in the recipe


def test_warm_start_as_a_share_of_the_run_scales_with_its_length():
    cfg = resolve(TOY, ["method.name=ct", "trainer.max_steps=150", "student.denoiser_fraction=0.2"])
    assert warm_start_steps(cfg) == 30
    module = ConsistencyDistillation(cfg, teachers.load({"name": "toy2d"}))
    assert module.denoiser_steps == 30 and module.plan.levels(120) == C.ct_N(120, 120)  # K = 150 - 30
    assert warm_start_steps(resolve(TOY, ["trainer.max_steps=4", "student.denoiser_fraction=0.2"])) == 0


@pytest.mark.parametrize("overrides", [["student.denoiser_fraction=1.0"], ["student.denoiser_fraction=-0.1"],
                                       ["student.denoiser_fraction=0.2", "student.denoiser_steps=10"],
                                       ["student.denoiser_fraction=0.2", "trainer.max_steps=-1"]])
def test_bad_warm_start_share_is_refused(overrides):
    with pytest.raises(ConfigError, match="denoiser_fraction"):  # the message names the key and the fix
        resolve(TOY, overrides)


def test_cosine_schedule_reaches_lightning(tmp_path):
    from distill.training.fit import fit

    cfg = resolve(TOY, [f"run.dir={tmp_path / 'run'}", "trainer.max_steps=6", "optim.schedule=cosine",
                        "optim.final_lr_ratio=0.5", "trainer.enable_progress_bar=false", "eval.fid=false",
                        "checkpoint.every_n_steps=6", "data.batch_size=16"])
    lrs = []

    import lightning as L

    class Spy(L.Callback):
        def on_train_batch_start(self, trainer, *_):
            lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    from distill.training import fit as fit_module

    build = fit_module.build_trainer
    fit_module.build_trainer = lambda *a, **kw: build(*a, callbacks_extra=[Spy()], **kw)
    try:
        fit(cfg)
    finally:
        fit_module.build_trainer = build
    lr = cfg.optim.lr
    assert lrs == pytest.approx([lr * (0.5 + 0.5 * 0.5 * (1 + math.cos(math.pi * k / 6))) for k in range(6)])
