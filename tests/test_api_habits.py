"""What users reach for: per-sample class labels, generation from given noise, images in [-1, 1], --scale."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _editing_runs import fresh_export
from PIL import Image

import distill
from distill.cli import main as cli_main


@pytest.fixture(scope="module")
def conditional():
    return distill.load_student(fresh_export(1, 8, num_classes=10))


@pytest.fixture(scope="module")
def unconditional():
    return distill.load_student(fresh_export(1, 8))


def test_per_sample_labels_as_list_or_tensor(conditional):
    labels = [3, 7, 3, 0]
    mixed = conditional.sample(4, cls=labels, seed=5)
    assert torch.equal(mixed, conditional.sample(4, cls=torch.tensor(labels), seed=5))
    # Sample i with label l equals sample i of a run where every label is l (same seed, same noise).
    for i, label in enumerate(labels):
        assert torch.equal(mixed[i], conditional.sample(4, cls=label, seed=5)[i])
    # Labels follow the samples across batches (other batch sizes may round the last float bit differently).
    torch.testing.assert_close(mixed, conditional.sample(4, cls=labels, seed=5, batch_size=3), atol=1e-5, rtol=0)


@pytest.mark.parametrize("cls, message", [
    (10, "out of range"), ([1, 2, -1, 0], "out of range"), ([1, 2], "one class label per sample"),
    (torch.tensor([0.5, 1, 2, 3]), "integers"),
])
def test_bad_labels_raise_clear_errors(conditional, cls, message):
    with pytest.raises(ValueError, match=message):
        conditional.sample(4, cls=cls)


def test_labels_for_an_unconditional_student_raise(unconditional):
    with pytest.raises(ValueError, match="unconditional"):
        unconditional.sample(2, cls=1)


def test_from_noise_is_sampling_with_the_noise_given(conditional, unconditional):
    from distill.sampling import per_sample_noise

    z = per_sample_noise(range(3), (1, 8, 8), 2)
    # One step at sigma_max by default: the same images as sample() draws from seeds 0..2.
    assert torch.equal(unconditional.from_noise(z[0]), unconditional.sample(3, seed=0))
    two = unconditional.from_noise(z, sigmas=[80.0, 2.0])
    assert torch.equal(two, unconditional.sample(3, sigmas=[80.0, 2.0], seed=0))
    assert torch.equal(two, unconditional.from_noise(torch.stack(z), sigmas=[80.0, 2.0]))
    labels = torch.tensor([1, 4, 9])
    assert torch.equal(conditional.from_noise(z[0], cond=labels), conditional.sample(3, cls=labels, seed=0))
    with pytest.raises(ValueError, match="class-conditional"):
        conditional.from_noise(z[0])
    with pytest.raises(ValueError, match="one .* tensor per sigma"):
        unconditional.from_noise(z[0], sigmas=[80.0, 2.0])
    with pytest.raises(ValueError, match="leave the student's range"):
        unconditional.from_noise(z[0], sigmas=[200.0])


def test_images_are_clamped_to_the_pixel_range(unconditional):
    import copy

    from distill.sampling import consistency_sample, per_sample_noise

    loud = copy.deepcopy(unconditional)
    loud.net.conv_out.weight.data *= 30  # overshoots [-1, 1] by far, as the trained demo student by a little
    raw = consistency_sample(loud, per_sample_noise(range(64), (1, 8, 8), 1), [80.0])
    assert raw.abs().max() > 1.5 and (raw.abs() < 1).float().mean() > 0.05
    x = loud.sample(64, seed=0)
    assert x.min() >= -1 and x.max() <= 1
    assert torch.equal(x, raw.clamp(-1, 1))
    # The ends of an interpolation strip are samples, clamped alike (batch sizes differ: last-bit rounding).
    torch.testing.assert_close(loud.interpolate(0, 1, num=2), x[:2], atol=1e-5, rtol=0)


def test_sample_scale_enlarges_png_output(tmp_path, capsys):
    run = str(fresh_export(1, 8))
    common = ["sample", run, "--num", "4", "--seed", "1"]
    assert cli_main([*common, "--out", str(tmp_path / "g1.png")]) == 0
    assert cli_main([*common, "--scale", "4", "--out", str(tmp_path / "g4.png")]) == 0
    small, big = np.asarray(Image.open(tmp_path / "g1.png")), np.asarray(Image.open(tmp_path / "g4.png"))
    assert big.shape == (small.shape[0] * 4, small.shape[1] * 4)
    assert np.array_equal(big[::4, ::4], small) and np.array_equal(big[3::4, 3::4], small)
    assert cli_main([*common, "--scale", "3", "--out", str(tmp_path / "folder")]) == 0
    assert np.asarray(Image.open(tmp_path / "folder" / "000000.png")).shape == (24, 24)
    for bad in (["--scale", "0", "--out", str(tmp_path / "x.png")], ["--scale", "2", "--out", str(tmp_path / "x.npz")]):
        assert cli_main([*common, *bad]) == 2
        assert "--scale" in capsys.readouterr().err
