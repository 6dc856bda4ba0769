"""Zero-shot editing (CM paper, Alg. 4): projection exactness, usefulness on a trained student, the CLI.

Exactness tests run on untrained students (they hold whatever the network outputs); the usefulness
tests share one demo student distilled for a few hundred steps (tests/_editing_runs.py).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _editing_runs import ROOT, fresh_export, trained_digits_run
from PIL import Image

import distill
from distill import editing
from distill.cli import main as cli_main
from teachers.analytic import load_digits_array


def rmse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b) ** 2).mean().sqrt())


@pytest.fixture(scope="module")
def grey():
    return distill.load_student(fresh_export(1, 8))


@pytest.fixture(scope="module")
def rgb():
    return distill.load_student(fresh_export(3, 8))


@pytest.fixture(scope="module")
def trained():
    return distill.load_student(trained_digits_run())


@pytest.fixture(scope="module")
def digits():
    """200 held-in digits in [-1, 1] (the teacher's own data: the truth an edit should recover)."""
    images, _ = load_digits_array()
    idx = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))[:200]
    return torch.from_numpy(images[idx.numpy()]).float()


# ---- operators ----

@pytest.mark.parametrize("obs", [editing.luminance_observation(3), editing.block_mean_observation(2),
                                 editing.block_mean_observation(4)], ids=["luma", "block2", "block4"])
def test_operators_are_orthogonal_projections(obs):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(2, 3, 8, 8, generator=g), torch.randn(2, 3, 8, 8, generator=g)
    assert torch.allclose(obs.A_inv(obs.A(x)), x, atol=1e-5)  # A^-1 A = I
    assert torch.allclose(obs.A(x).norm(), x.norm(), rtol=1e-5)  # orthogonal: norms kept
    p = obs.project(x, y)
    assert torch.allclose(obs.project(p, y), p, atol=1e-5)  # idempotent
    assert torch.allclose(obs.project(y, y), y, atol=1e-5)


def test_edit_sigmas_defaults_and_errors(grey):
    assert editing.edit_sigmas(grey, "interpolate") == [80.0]
    s = editing.edit_sigmas(grey, "inpaint")
    assert s[0] == 80.0 and len(s) == 8 and all(a > b for a, b in zip(s[1:], s[2:]))
    assert editing.edit_sigmas(grey, "denoise", sigma=0.3) == [0.3]
    assert editing.edit_sigmas(grey, "stroke", 2, sigma=1.5)[0] == 1.5
    with pytest.raises(ValueError, match="sigma"):
        editing.edit_sigmas(grey, "denoise")
    with pytest.raises(ValueError, match="outside"):
        editing.edit_sigmas(grey, "denoise", sigma=500.0)
    with pytest.raises(ValueError, match="unknown editing task"):
        editing.edit_sigmas(grey, "deblur")


def test_slerp_ends_and_norm():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(1, 1, 8, 8, generator=g), torch.randn(1, 1, 8, 8, generator=g)
    assert torch.allclose(editing.slerp(a, b, 0.0), a, atol=1e-6)
    assert torch.allclose(editing.slerp(a, b, 1.0), b, atol=1e-6)
    mid = editing.slerp(a, b, 0.5)  # equal-norm ends stay on (about) the same sphere
    assert abs(float(mid.norm()) - (float(a.norm()) + float(b.norm())) / 2) < 0.1 * float(a.norm())


# ---- projection exactness, whatever the network (untrained students) ----

def test_inpaint_returns_known_pixels_unchanged(grey, digits):
    mask = torch.rand(len(digits[:16]), 1, 8, 8, generator=torch.Generator().manual_seed(2)) > 0.5  # per image
    out = grey.inpaint(digits[:16], mask, seed=0)
    assert out.shape == digits[:16].shape
    assert torch.equal(out[mask], digits[:16][mask])  # bit for bit: A = I, torch.where


def test_superres_block_means_equal_low_input(grey, digits):
    for factor in (2, 4):
        low = editing.block_mean(digits[:16], factor)  # (16, 1, 8/f, 8/f)
        out = grey.superres(low, seed=0)
        assert out.shape == (16, 1, 8, 8)
        assert (editing.block_mean(out, factor) - low).abs().max() < 1e-5


def test_colorize_luminance_equals_grey_input(rgb):
    g = torch.Generator().manual_seed(3)
    grey_in = torch.rand(8, 1, 8, 8, generator=g) * 1.6 - 0.8
    out = rgb.colorize(grey_in, seed=0)
    assert out.shape == (8, 3, 8, 8)
    assert (editing.luminance(out) - grey_in).abs().max() < 1e-5
    assert float((out - out.mean(1, keepdim=True)).abs().max()) > 1e-3  # some colour, not only grey


def test_editing_is_independent_of_batch_size(grey, digits):
    mask = torch.zeros(8, 8, dtype=torch.bool)
    mask[:4] = True
    one = grey.inpaint(digits[:6], mask, seed=7, batch_size=1)
    all_ = grey.inpaint(digits[:6], mask, seed=7)
    assert (one - all_).abs().max() < 1e-5
    assert (grey.inpaint(digits[:6], mask, seed=8) - all_).abs().max() > 1e-3  # the seed matters


class _IdentityWithScales(torch.nn.Module):
    """f(x, s) = x with a family's own re-noising multipliers (as LCM students have)."""
    sigma_min = 0.002

    def __init__(self, scales):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # a parameter, so editing finds a device
        self.scales = scales

    def noise_scales(self, sigmas):
        return self.scales

    def forward(self, x, sigma, cond=None):
        return x


def test_edits_re_noise_with_the_students_own_multipliers():
    y = torch.zeros(2, 1, 4, 4)
    noise = [torch.full((2, 1, 4, 4), 0.01), torch.full((2, 1, 4, 4), 0.1)]
    x = editing.consistency_edit(_IdentityWithScales([7.0, 2.0]), y, None, [1.0, 0.5], noise)
    # First step: y + s0 z_0 (the observation noised, not the family's start multiplier 7); then + 2 z_1.
    assert torch.allclose(x, torch.full_like(x, 1.0 * 0.01 + 2.0 * 0.1))


def test_interpolation_ends_are_the_seeds_samples(grey):
    strip = grey.interpolate(3, 11, num=5)
    assert strip.shape == (5, 1, 8, 8)
    ends = torch.cat([grey.sample(1, seed=3), grey.sample(1, seed=11)])
    assert (strip[[0, -1]] - ends).abs().max() < 1e-5


def test_stroke_and_denoise_at_sigma_min_return_the_input(grey, digits):
    # f(x, sigma_min) = x (the boundary condition), so starting there leaves the image as it was.
    x = digits[:4]
    assert (grey.denoise(x, grey.sigma_min) - x).abs().max() < 1e-6
    assert (grey.stroke(x, sigma=grey.sigma_min, steps=1) - x).abs().max() < 0.02  # + sigma_min z


def test_shape_mismatches_raise(grey, rgb, digits):
    with pytest.raises(ValueError, match="shape"):
        grey.inpaint(digits[:2, :, :4], torch.ones(8, 8))
    with pytest.raises(ValueError, match="mask"):
        grey.inpaint(digits[:2], torch.ones(4, 4))
    with pytest.raises(ValueError, match="low-resolution"):
        grey.superres(torch.zeros(1, 1, 3, 3))
    with pytest.raises(ValueError, match="RGB student"):
        grey.colorize(torch.zeros(1, 1, 8, 8))


# ---- the RGB teacher that colorisation runs on ----

def test_patches_rgb_teacher_is_registered_and_exact():
    import teachers
    from teachers.patches import sample_image_patches

    t = teachers.load({"name": "patches_rgb", "num": 64})
    assert t.image_shape == (3, 8, 8) and t.means.shape == (64, 192)
    assert np.array_equal(sample_image_patches(num=64), sample_image_patches(num=64))  # seeded positions
    x = t.sample(4, torch.Generator().manual_seed(0))
    assert x.shape == (4, 3, 8, 8) and float(x.abs().max()) <= 1.0
    assert torch.allclose(t.denoise(x, 1e-3), x, atol=1e-4)  # sigma_0 = 0: its own patches are fixed points
    assert float((x - x.mean(1, keepdim=True)).abs().mean()) > 0.01  # colour, not grey


@pytest.mark.slow
def test_colorize_trained_rgb_student(tmp_path):
    """recipes/patches_rgb.yaml, briefly: luminance kept, and colours closer to the truth than those of an
    unconditional sample given the same luminance (the colour analogue of the inpainting test)."""
    import teachers
    from distill.config import resolve
    from distill.training.fit import fit

    cfg = resolve(ROOT / "recipes" / "patches_rgb.yaml", [
        f"run.dir={tmp_path / 'rgb'}", "trainer.max_steps=300", "trainer.enable_progress_bar=false",
        "ema.rates=[0.9]", "eval.num=16", "checkpoint.every_n_steps=300"])
    student = distill.load_student(fit(cfg))
    truth = teachers.load(dict(cfg.teacher)).sample(200, torch.Generator().manual_seed(1))
    grey_in = editing.luminance(truth)
    out = student.colorize(grey_in, seed=0)
    assert (editing.luminance(out) - grey_in).abs().max() < 1e-4
    uncond = editing.luminance_observation(3).project(student.sample(200, seed=99), grey_in.expand_as(truth))
    print(f"colorize RMSE {rmse(out, truth):.4f}; unconditional colours {rmse(uncond, truth):.4f}")
    assert rmse(out, truth) < 0.9 * rmse(uncond, truth)


# ---- usefulness on a (briefly) trained digits student ----

def test_inpainting_beats_an_unconditional_sample(trained, digits):
    """Bottom half masked: Alg. 4's fill is closer to the truth than a 1-step sample's bottom half."""
    mask = torch.zeros(8, 8, dtype=torch.bool)
    mask[:4] = True
    out = trained.inpaint(digits, mask, seed=1000)
    uncond = trained.sample(len(digits), steps=1, seed=1000)
    err_edit = rmse(out[..., 4:, :], digits[..., 4:, :])
    err_uncond = rmse(uncond[..., 4:, :], digits[..., 4:, :])
    print(f"masked-half RMSE: inpaint {err_edit:.4f}, unconditional 1-step {err_uncond:.4f}")
    # A 200-step student's unconditional samples are plausible digits (bottom-half RMSE ~0.76; 0.89 before the
    # smooth noise embedding), so Alg. 4's margin over them is ~5%: ratios 0.945-0.962 over two seeds, 400 steps
    # and lr 2e-3 (measured). 0.98 keeps the claim (conditioning on the known half helps) without flaking.
    assert err_edit < 0.98 * err_uncond
    assert torch.equal(out[..., :4, :], digits[..., :4, :])


def test_denoising_lowers_the_error(trained, digits):
    sigma = 0.3
    noisy = digits + sigma * torch.randn(digits.shape, generator=torch.Generator().manual_seed(4))
    out = trained.denoise(noisy, sigma)
    print(f"RMSE at sigma {sigma}: noisy {rmse(noisy, digits):.4f}, denoised {rmse(out, digits):.4f}")
    assert rmse(out, digits) < 0.8 * rmse(noisy, digits)


# ---- distill edit (in-process: the same code path as the command, without a new interpreter) ----

def save_png(arr: np.ndarray, path) -> str:
    Image.fromarray(arr.astype(np.uint8)).save(path)
    return str(path)


def read_png(path) -> np.ndarray:
    return np.asarray(Image.open(path))


@pytest.mark.parametrize("channels", [1, 3])
def test_cli_inpaint_keeps_white_mask_pixels(tmp_path, channels):
    run = fresh_export(channels, 8)
    shape = (8, 8) if channels == 1 else (8, 8, 3)
    img = np.random.default_rng(0).integers(0, 256, shape)
    mask = np.zeros((8, 8))
    mask[:, :3] = 255
    args = [str(run), "--task", "inpaint", "--input", save_png(img, tmp_path / "in.png"),
            "--mask", save_png(mask, tmp_path / "m.png")]
    assert cli_main(["edit", *args, "--out", str(tmp_path / "out.png")]) == 0
    out = read_png(tmp_path / "out.png")
    assert out.shape == shape
    assert np.array_equal(out[:, :3], img[:, :3])
    assert cli_main(["edit", *args, "--num", "3", "--out", str(tmp_path / "many")]) == 0  # seeds S..S+2
    many = [read_png(tmp_path / "many" / f"00000{i}.png") for i in range(3)]
    assert np.array_equal(many[0], out) and not np.array_equal(many[1], out)
    assert all(np.array_equal(m[:, :3], img[:, :3]) for m in many)


def test_cli_superres_returns_student_resolution(tmp_path):
    run = fresh_export(1, 8)
    low = np.random.default_rng(1).integers(0, 256, (4, 4))
    assert cli_main(["edit", str(run), "--task", "superres", "--input", save_png(low, tmp_path / "low.png"),
                     "--out", str(tmp_path / "sr.png")]) == 0
    out = read_png(tmp_path / "sr.png").astype(float)
    assert out.shape == (8, 8)
    means = out.reshape(4, 2, 4, 2).mean((1, 3))
    assert np.abs(means - low).max() <= 1.0  # exact before the uint8 rounding of each pixel


def test_cli_colorize_and_interpolate_strip(tmp_path):
    grey_png = save_png(np.random.default_rng(2).integers(40, 216, (8, 8)), tmp_path / "g.png")
    assert cli_main(["edit", str(fresh_export(3, 8)), "--task", "colorize", "--input", grey_png,
                     "--out", str(tmp_path / "c.png")]) == 0
    rgb_out = read_png(tmp_path / "c.png").astype(float) / 127.5 - 1
    luma = editing.luminance(torch.from_numpy(rgb_out).permute(2, 0, 1)[None])[0, 0].numpy()
    assert np.abs((luma + 1) * 127.5 - read_png(grey_png)).max() <= 1.0
    assert cli_main(["edit", str(fresh_export(1, 8)), "--task", "interpolate", "--seeds", "1,2", "--num", "6",
                     "--out", str(tmp_path / "strip.png")]) == 0
    assert read_png(tmp_path / "strip.png").shape == (10, 6 * 9 + 1)  # 6 images of 8 px, 1 px borders


@pytest.mark.parametrize("case,message", [
    ("size", "works at 8x8"), ("channels", "is RGB"), ("mask_size", "the mask must have"),
    ("mask_white", "all white"), ("no_mask", "needs --mask"), ("superres_size", "low-resolution"),
    ("colorize_grey_student", "RGB student"), ("colorize_colour_input", "grey image"),
    ("denoise_sigma", "needs --sigma"), ("seeds", "--seeds a,b"), ("missing", "no such file"),
    ("sigma_range", "outside"), ("denoise_sigmas", "must begin with --sigma"),
])
def test_cli_bad_inputs_exit_2(tmp_path, capsys, case, message):
    grey_run, rgb_run = str(fresh_export(1, 8)), str(fresh_export(3, 8))
    g8 = save_png(np.zeros((8, 8)), tmp_path / "g8.png")
    g4 = save_png(np.zeros((4, 4)), tmp_path / "g4.png")
    c8 = save_png(np.random.default_rng(0).integers(0, 256, (8, 8, 3)), tmp_path / "c8.png")
    white = save_png(np.full((8, 8), 255), tmp_path / "w.png")
    out = str(tmp_path / "o.png")
    argv = {
        "size": [grey_run, "--task", "stroke", "--input", g4],
        "channels": [grey_run, "--task", "denoise", "--sigma", "0.5", "--input", c8],
        "mask_size": [grey_run, "--task", "inpaint", "--input", g8, "--mask", g4],
        "mask_white": [grey_run, "--task", "inpaint", "--input", g8, "--mask", white],
        "no_mask": [grey_run, "--task", "inpaint", "--input", g8],
        "superres_size": [grey_run, "--task", "superres", "--input", save_png(np.zeros((3, 3)), tmp_path / "3.png")],
        "colorize_grey_student": [grey_run, "--task", "colorize", "--input", g8],
        "colorize_colour_input": [rgb_run, "--task", "colorize", "--input", c8],
        "denoise_sigma": [grey_run, "--task", "denoise", "--input", g8],
        "seeds": [grey_run, "--task", "interpolate", "--seeds", "1"],
        "missing": [grey_run, "--task", "stroke", "--input", str(tmp_path / "nope.png")],
        "sigma_range": [grey_run, "--task", "denoise", "--sigma", "1000", "--input", g8],
        "denoise_sigmas": [grey_run, "--task", "denoise", "--sigma", "0.5", "--sigmas", "1,0.5", "--input", g8],
    }[case]
    assert cli_main(["edit", *argv, "--out", out]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o.png").exists()


def test_cli_edit_subprocess_end_to_end(run_cli, tmp_path):
    """One real `distill edit` process on a trained run directory."""
    run = trained_digits_run()
    img = save_png(np.full((8, 8), 40), tmp_path / "s.png")
    proc = run_cli("edit", run, "--task", "stroke", "--input", img, "--num", "3", "--out", tmp_path / "o.png")
    assert proc.returncode == 0, proc.stderr
    assert read_png(tmp_path / "o.png").shape == (10, 28)
