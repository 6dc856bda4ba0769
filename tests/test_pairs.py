"""method.pairs: continuous positions along the Karras curve vs the paper's grid, and sampling that knows which
one a student was trained on (issue 11: students that work at every sigma)."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

import teachers
from distill.config import resolve
from distill.export import rebuild_student
from distill.math.schedules import cd_grid
from distill.methods import curriculum as C
from distill.methods.plan import plan
from distill.sampling import sample, snap_to_training_levels, training_levels
from tests.conftest import RECIPES

SMIN, SMAX = 0.002, 80.0


def test_karras_curve_meets_the_grid_at_integer_positions_and_inverts():
    grid = cd_grid(18, SMIN, SMAX)
    pos = torch.arange(18, dtype=torch.float64)
    assert torch.allclose(C.karras_at(pos, 18, SMIN, SMAX), grid, rtol=1e-12)
    s = torch.tensor([0.002, 0.01, 0.5, 2.5, 79.9], dtype=torch.float64)
    assert torch.allclose(C.karras_at(C.karras_position(s, 18, SMIN, SMAX), 18, SMIN, SMAX), s, rtol=1e-12)


@pytest.mark.parametrize("sampling", ["uniform", "lognormal"])
@pytest.mark.parametrize("skip", [1, 3])
def test_continuous_pairs_keep_the_gap_but_not_the_levels(sampling, skip):
    pairs = C.GridPairs(lambda k: 18, SMIN, SMAX, index_sampling=sampling, skip=skip, continuous=True)
    lo, hi = pairs.sample(0, 4096, torch.Generator().manual_seed(0))
    gap = C.karras_position(hi, 18, SMIN, SMAX) - C.karras_position(lo, 18, SMIN, SMAX)
    assert torch.allclose(gap, torch.full_like(gap, float(skip)), atol=1e-9)  # N sets the gap: `skip` intervals
    assert float(lo.min()) >= SMIN * (1 - 1e-12) and float(hi.max()) <= SMAX * (1 + 1e-12)
    grid = cd_grid(18, SMIN, SMAX)
    on_grid = ((lo[:, None] - grid[None]).abs() < 1e-9 * grid[None]).any(1)
    assert on_grid.float().mean() < 0.01  # the levels themselves are anywhere on the curve
    # ...and they cover the whole curve: every grid interval holds some lower ends.
    counts = torch.bincount(C.karras_position(lo, 18, SMIN, SMAX).floor().long().clamp(max=16), minlength=17)
    assert bool((counts[: 17 - skip] > 0).all())


def test_continuous_lognormal_pairs_follow_the_discrete_masses():
    """The continuous lognormal sampler puts as much weight on each stretch of the curve as iCT's discrete
    one puts on its interval (up to the smoothing of the uniform offset)."""
    pairs_c = C.GridPairs(lambda k: 41, SMIN, SMAX, index_sampling="lognormal", continuous=True)
    pairs_d = C.GridPairs(lambda k: 41, SMIN, SMAX, index_sampling="lognormal")
    lo_c, hi_c = pairs_c.sample(0, 200_000, torch.Generator().manual_seed(1))
    lo_d, hi_d = pairs_d.sample(0, 200_000, torch.Generator().manual_seed(1))
    mid = lambda lo, hi: 0.5 * (C.karras_position(lo, 41, SMIN, SMAX) + C.karras_position(hi, 41, SMIN, SMAX))
    assert float(mid(lo_c, hi_c).mean()) == pytest.approx(float(mid(lo_d, hi_d).mean()), abs=0.1)
    assert float(mid(lo_c, hi_c).std()) == pytest.approx(float(mid(lo_d, hi_d).std()), rel=0.05)


def test_grid_pairs_stay_on_the_grid():
    pairs = C.GridPairs(lambda k: 18, SMIN, SMAX)
    lo, hi = pairs.sample(0, 512, torch.Generator().manual_seed(0))
    grid = cd_grid(18, SMIN, SMAX)
    assert all(bool(((v[:, None] - grid[None]).abs() < 1e-12).any(1).all()) for v in (lo, hi))


def test_continuous_pairs_of_a_discrete_teacher_sit_on_its_timesteps():
    from teachers.vp import VPTeacher

    teacher = VPTeacher(torch.nn.Identity(), image_shape=(1, 8, 8),
                        schedule={"schedule": "linear", "num_steps": 1000, "beta_start": 1e-4, "beta_end": 0.02})
    pairs = C.GridPairs(lambda k: 18, teacher.sigma_min, teacher.sigma_max, round_sigma=teacher.round_sigma,
                        continuous=True)
    lo, hi = pairs.sample(0, 256, torch.Generator().manual_seed(0))
    table = torch.from_numpy(teacher.feeding.sigmas)
    for v in (lo, hi):
        assert bool(((v[:, None] - table[None]).abs() <= 1e-12 * table[None]).any(1).all())
    assert bool((hi > lo).all())


def test_the_default_is_continuous_and_the_plan_records_what_was_trained():
    exact = teachers.load({"name": "digits"})
    cont = plan(resolve(RECIPES / "demo.yaml"), exact, SMIN, SMAX)
    assert cont.pairs.continuous and cont.training_sigmas(4500) == {"pairs": "continuous"}
    grid = plan(resolve(RECIPES / "demo.yaml", ["method.pairs=grid"]), exact, SMIN, SMAX)
    rec = grid.training_sigmas(4500)
    assert rec["pairs"] == "grid" and rec["levels"] == pytest.approx(cd_grid(18, SMIN, SMAX).flip(0).tolist())
    ict = plan(resolve(RECIPES / "demo.yaml", ["method.name=ict", "method.pairs=grid", "loss.name=pseudo_huber",
                                               "trainer.max_steps=4500", "student.denoiser_fraction=0"]),
               exact, SMIN, SMAX)
    assert len(ict.training_sigmas(4500)["levels"]) == C.ict_N(4500, 4500)  # the grid of the last step


def _student(training_sigmas, seed=0):
    meta = {"schema_version": 2, "recipe": {}, "teacher": {"spec": {"name": "digits"}},
            "network": {"name": "small_unet", "in_channels": 1, "width": 8, "channel_mult": [1, 2],
                        "num_blocks": 1}, "feeding": {"name": "edm", "sigma_data": 0.5},
            "sigma_min": SMIN, "sigma_max": SMAX, "sigma_data": 0.5, "image_shape": [1, 8, 8], "num_classes": 0,
            "sampling_sigmas": {"1": [SMAX]}, "training_sigmas": training_sigmas}
    torch.manual_seed(seed)
    student = rebuild_student(meta).eval()
    for p in student.parameters():
        p.data.normal_(0, 0.2)
    return student


def test_a_grid_student_samples_at_its_levels_and_says_so():
    levels = cd_grid(18, SMIN, SMAX).flip(0).tolist()
    student = _student({"pairs": "grid", "levels": levels})
    nearest = min(levels, key=lambda v: abs(math.log(v) - math.log(2.5)))
    with pytest.warns(UserWarning, match="18-level grid.*2.5 ->"):
        off = sample(student, 8, [SMAX, 2.5], seed=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # on a level: nothing to say
        on = sample(student, 8, [SMAX, nearest], seed=3)
    assert torch.equal(off, on)
    assert snap_to_training_levels(student, [0.3, 2.5], keep_first=True)[0] == 0.3  # a denoising start stays


def test_a_continuous_student_samples_where_it_is_asked():
    student = _student({"pairs": "continuous"})
    assert training_levels(student) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert snap_to_training_levels(student, [SMAX, 2.5]) == [SMAX, 2.5]


def test_schedule_search_of_a_grid_student_returns_levels():
    from distill.evaluation.schedule_search import search_sigmas

    levels = cd_grid(10, SMIN, SMAX).flip(0).tolist()
    student = _student({"pairs": "grid", "levels": levels})
    target = {SMAX: 0.0, levels[4]: 1.0, levels[6]: 2.0}
    # A synthetic objective with its minimum at (levels[4]) for 2 steps and (levels[4], levels[6]) for 3.
    f = lambda s: sum(abs(math.log(a) - math.log(b)) for a, b in zip(s[1:], list(target)[1:])) + 0.1 * len(s)
    found = search_sigmas(student, f)
    assert found["2"] == [SMAX, levels[4]] and found["3"] == [SMAX, levels[4], levels[6]]


def test_a_schema_1_student_is_read_as_it_was_trained():
    """Students exported before method.pairs were trained on the grid with the 250x noise embedding."""
    meta = {"schema_version": 1, "recipe": {"method": {"name": "cd", "N": 18}},
            "teacher": {"spec": {"name": "digits"}},
            "network": {"name": "small_unet", "in_channels": 1, "width": 8, "channel_mult": [1, 2],
                        "num_blocks": 1}, "feeding": {"name": "edm", "sigma_data": 0.5},
            "sigma_min": SMIN, "sigma_max": SMAX, "sigma_data": 0.5, "image_shape": [1, 8, 8], "num_classes": 0,
            "sampling_sigmas": {"1": [SMAX]}}
    student = rebuild_student(meta)
    assert student.net.build_spec["embedding_scale"] == 250.0
    assert training_levels(student) == pytest.approx(cd_grid(18, SMIN, SMAX).flip(0).tolist())
