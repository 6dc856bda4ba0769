"""A short CD run on toy2d lowers the student's 1-step trajectory error at least 5x."""

import torch

import teachers
from distill.config import resolve
from distill.evaluation.evaluate import rms
from distill.export import load_student
from distill.math.solvers import reference_solution
from distill.sampling import consistency_sample, per_sample_noise
from distill.training.fit import fit
from distill.training.student import build_student
from tests.conftest import RECIPES


def one_step_traj_rmse(student, teacher, num=512, seed=123):
    noise = per_sample_noise(range(seed, seed + num), student.image_shape, 1)
    ref = reference_solution(teacher.denoise, noise[0].double() * student.sigma_max, student.sigma_max,
                             student.sigma_min)
    return rms(consistency_sample(student, noise, [student.sigma_max]), ref)


def test_cd_lowers_one_step_trajectory_error(tmp_path):
    cfg = resolve(RECIPES / "toy2d.yaml", [f"run.dir={tmp_path / 'run'}",
                                            "trainer.enable_progress_bar=false", "checkpoint.every_n_steps=0"])
    teacher = teachers.load(dict(cfg.teacher))
    torch.manual_seed(cfg.run.seed)
    initial = one_step_traj_rmse(build_student(cfg, teacher).eval(), teacher)
    fit(cfg)
    trained = one_step_traj_rmse(load_student(tmp_path / "run"), teacher)
    print(f"toy2d 1-step traj_rmse: initial {initial:.3f} -> trained {trained:.3f}")
    assert trained * 5 <= initial, (initial, trained)
