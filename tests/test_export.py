"""The export (student.safetensors + student.json) is all sampling and editing need: no teacher, no run."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from _editing_runs import trained_digits_run
from PIL import Image

import distill
from distill.export import StudentLoadError


@pytest.fixture
def copied_export(tmp_path):
    """Only the two export files, copied away from the run directory."""
    run = trained_digits_run()
    for name in ("student.safetensors", "student.json"):
        shutil.copy(run / name, tmp_path / name)
    return tmp_path / "student.safetensors"


@pytest.fixture
def no_teacher(monkeypatch):
    """Loading or building any teacher fails: proves the export alone is used."""
    import teachers.registry

    def refuse(*a, **k):
        raise AssertionError("the teacher was loaded")

    monkeypatch.setattr(teachers.registry, "load", refuse)
    monkeypatch.setattr("teachers.load", refuse, raising=False)
    monkeypatch.setitem(teachers.registry._TEACHERS, "digits", refuse)


def test_copied_export_samples_like_the_run_that_made_it(copied_export, no_teacher):
    run = trained_digits_run()
    student = distill.load_student(copied_export)
    assert isinstance(student, torch.nn.Module) and not student.training
    assert json.loads((run / "student.json").read_text())["weights"] == "ema_0.9"
    # Same weights as the checkpoint's EMA average (what the run evaluates), bit for bit.
    from_ckpt = distill.load_student(run / "checkpoints" / "last.ckpt")
    for k, v in from_ckpt.net.state_dict().items():
        assert torch.equal(student.net.state_dict()[k], v), k
    a = student.sample(16, steps=2, seed=3)
    assert torch.equal(a, from_ckpt.sample(16, steps=2, seed=3))
    assert torch.equal(a, distill.load_student(run).sample(16, steps=2, seed=3))
    # And the same pictures as the grids the training run wrote (64 samples, seed run.seed = 0, 8 columns).
    from distill.evaluation.figures import tile

    for k in (1, 2):
        mine = tile(student.sample(64, steps=k, seed=0), cols=8)[..., 0]
        theirs = np.asarray(Image.open(run / "samples" / f"final_{k}step.png"))
        assert np.abs(mine.astype(int) - theirs.astype(int)).max() <= 1 and (mine == theirs).mean() > 0.999


def test_loaded_student_edits_from_the_export_alone(copied_export, no_teacher):
    student = distill.load_student(copied_export)
    x = student.sample(4, seed=0)
    mask = torch.zeros(8, 8, dtype=torch.bool)
    mask[:, :4] = True
    assert torch.equal(student.inpaint(x, mask)[..., :4], x[..., :4])
    assert student.superres(x[..., ::2, ::2]).shape == x.shape
    assert student.interpolate(0, 1, num=3).shape == (3, 1, 8, 8)


def test_export_errors_name_the_fix(tmp_path, copied_export):
    (copied_export.with_suffix(".json")).unlink()
    with pytest.raises(StudentLoadError, match="student.json must sit beside it"):
        distill.load_student(copied_export)
    (tmp_path / "empty_run").mkdir()
    with pytest.raises(StudentLoadError, match="no student.safetensors or checkpoints/last.ckpt"):
        distill.load_student(tmp_path / "empty_run")
    bad = tmp_path / "x.safetensors"
    bad.write_bytes(b"not a tensor file")
    bad.with_suffix(".json").write_text((trained_digits_run() / "student.json").read_text())
    with pytest.raises(StudentLoadError, match="not a readable safetensors"):
        distill.load_student(bad)
