"""Student and target passes draw the same dropout masks (CM code; iCT sec. 3.1 stresses dropout)."""

from __future__ import annotations

import pytest
import torch

import teachers
from distill.config import resolve
from distill.training.module import ConsistencyDistillation, dropout_masks

RECIPES = {"toy2d": ("recipes/toy2d.yaml", {"name": "toy2d"}),
           "digits": ("recipes/demo.yaml", {"name": "digits"})}


def build(recipe: str, mu: float, dropout: float = 0.5, seed: int = 0):
    path, spec = RECIPES[recipe]
    cfg = resolve(path, [f"method.mu={mu}", f"method.dropout={dropout}", "student.network.width=16"])
    module = ConsistencyDistillation(cfg, teachers.load(spec)).train()
    with torch.no_grad():  # zero-initialised output layers would hide dropout: give them weights
        g = torch.Generator().manual_seed(seed)
        for p in module.student.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
        if module.target is not None:  # "equal weights": theta^- = theta
            module.target.load_state_dict(module.student.state_dict())
    return module


def inputs(module, batch=8):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, *module.student.image_shape, generator=g)
    sigma = torch.rand(batch, generator=g) * 5 + 0.1
    return x, sigma


@pytest.mark.parametrize("recipe", sorted(RECIPES))
@pytest.mark.parametrize("mu", [0.0, 0.9])  # stop-gradient student itself, and a separate target copy
def test_student_and_target_passes_share_dropout_masks(recipe, mu):
    module = build(recipe, mu)
    assert (module.target is None) == (mu == 0.0)
    x, sigma = inputs(module)
    pred, target = module.consistency_pair(x, sigma, x, sigma, None, dropout_seed=1234)
    assert torch.equal(pred.detach(), target)
    # Dropout is really on: another seed draws other masks, and eval mode differs from both.
    other, _ = module.consistency_pair(x, sigma, x, sigma, None, dropout_seed=99)
    assert not torch.allclose(other.detach(), pred.detach())
    with torch.no_grad():
        assert not torch.allclose(module.student.eval()(x, sigma), pred.detach())


def test_masks_leave_the_global_rng_stream_alone():
    before = torch.random.get_rng_state()
    with dropout_masks(7, torch.device("cpu")):
        torch.rand(10)
    assert torch.equal(torch.random.get_rng_state(), before)


def test_method_dropout_sets_the_rate_and_needs_dropout_layers():
    module = build("toy2d", 0.0, dropout=0.3)
    rates = {m.p for m in module.student.modules() if isinstance(m, torch.nn.Dropout)}
    assert rates == {0.3}


def test_training_step_with_dropout_runs():
    module = build("toy2d", 0.9, dropout=0.2)
    x0 = module.teacher.sample(16, torch.Generator().manual_seed(0))
    loss = module.training_step((x0, torch.full((16,), -1)), 0)
    assert torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in module.student.parameters() if p.requires_grad)
