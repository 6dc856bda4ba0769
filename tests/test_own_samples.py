"""method.own_samples: CD pairs on the teacher's ODE trajectories through the student's own one-step samples."""

from __future__ import annotations

import pytest
import torch

import teachers
from distill.config import ConfigError, resolve
from distill.training.module import ConsistencyDistillation

TOY = "recipes/toy2d.yaml"


def _module(*overrides):
    torch.manual_seed(0)
    return ConsistencyDistillation(resolve(TOY, ["data.batch_size=8", *overrides]), teachers.load({"name": "toy2d"}))


def test_own_starts_replace_the_first_rows_with_the_students_one_step_samples():
    module = _module("method.own_samples=0.25")
    s = module.student
    x0 = torch.randn(8, 2)
    got = module.own_starts(x0, None, torch.Generator().manual_seed(3))
    noise = torch.randn(8, 2, generator=torch.Generator().manual_seed(3))[:2]  # the same draw, the first rows
    with torch.no_grad():
        expected = s(noise * s.sigma_max, s.sigma_max, None)
    assert module.own_rows == 2
    assert torch.equal(got[2:], x0[2:])
    assert torch.allclose(got[:2], expected)
    assert not got.requires_grad  # a start, not a path for gradients


def test_own_samples_change_the_pairs_and_still_train():
    batch = (torch.randn(8, 2, generator=torch.Generator().manual_seed(1)), None)
    plain, own = _module(), _module("method.own_samples=0.5")
    loss_plain, loss_own = plain.training_step(batch, 0), own.training_step(batch, 0)
    assert loss_plain.item() != loss_own.item()
    loss_own.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in own.student.parameters()
               if p.requires_grad)


@pytest.mark.parametrize("overrides, words", [
    (["method.own_samples=1.5"], "must lie in [0, 1]"),
    (["method.name=ct", "method.own_samples=0.25"], "needs CD's teacher ODE"),
])
def test_own_samples_are_checked(overrides, words):
    with pytest.raises(ConfigError, match=words.replace("[", r"\[").replace("]", r"\]")):
        resolve(TOY, overrides)
