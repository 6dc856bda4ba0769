"""`distill sample` (DESIGN.md, "Command line"): per-sample seeds, output formats, --class, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _editing_runs import fresh_export
from PIL import Image

import distill
from distill.cli import main as cli_main
from distill.sampling import labels_for


def same_uint8(a: np.ndarray, b: np.ndarray) -> None:
    """Equal images. Batches of different sizes may round the last float bit differently (~1e-6), so a
    pixel sitting on a rounding boundary may flip by one level; anything more is a real difference."""
    assert a.shape == b.shape
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1
    assert (a == b).mean() > 0.999


def test_batch_size_does_not_change_the_images(tmp_path):
    run = str(fresh_export(1, 8))
    for bs in (1, 16):
        assert cli_main(["sample", run, "--steps", "2", "--num", "16", "--seed", "5", "--batch-size", str(bs),
                         "--out", str(tmp_path / f"b{bs}.npz")]) == 0
    same_uint8(np.load(tmp_path / "b1.npz")["arr_0"], np.load(tmp_path / "b16.npz")["arr_0"])
    student = distill.load_student(run)  # the floats agree to the last bits
    a = student.sample(16, steps=2, seed=5, batch_size=1)
    b = student.sample(16, steps=2, seed=5, batch_size=16)
    assert (a - b).abs().max() < 1e-5
    assert (student.sample(16, steps=2, seed=6) - b).abs().max() > 1e-2  # the seed does matter
    assert torch.allclose(student.sample(4, steps=2, seed=7), b[2:6], atol=1e-5)  # sample i uses seed S+i


def test_output_formats_grid_folder_npz(tmp_path):
    run = str(fresh_export(1, 8))
    common = ["sample", run, "--num", "10", "--seed", "1"]
    assert cli_main([*common, "--out", str(tmp_path / "grid.png")]) == 0
    assert cli_main([*common, "--out", str(tmp_path / "folder")]) == 0
    assert cli_main([*common, "--out", str(tmp_path / "s.npz")]) == 0
    assert np.asarray(Image.open(tmp_path / "grid.png")).shape == (3 * 9 + 1, 4 * 9 + 1)  # 4 x 3, 1 px gaps
    arr = np.load(tmp_path / "s.npz")["arr_0"]
    assert arr.dtype == np.uint8 and arr.shape == (10, 8, 8, 3)  # NHWC RGB, as FID tools read it
    assert (arr[..., 0] == arr[..., 2]).all()  # a grey student's images, repeated to RGB
    files = sorted((tmp_path / "folder").glob("*.png"))
    assert [f.name for f in files][:2] == ["000000.png", "000001.png"] and len(files) == 10
    same_uint8(np.stack([np.asarray(Image.open(f)) for f in files]), arr[..., 0])


def test_class_conditional_sampling(tmp_path, capsys):
    run = str(fresh_export(1, 8, num_classes=10))
    student = distill.load_student(run)
    three, seven = student.sample(4, cls=3), student.sample(4, cls=7)
    assert (three - seven).abs().max() > 1e-3
    assert cli_main(["sample", run, "--num", "4", "--class", "3", "--out", str(tmp_path / "c.npz")]) == 0
    same_uint8(np.load(tmp_path / "c.npz")["arr_0"][..., 0],
               ((three[:, 0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy())
    # Without --class, each sample's class comes from its own seed: batch-independent too.
    assert torch.equal(labels_for(student, range(5, 9)), labels_for(student, range(0, 16))[5:9])
    assert cli_main(["sample", run, "--num", "4", "--class", "10", "--out", str(tmp_path / "x.npz")]) == 2
    assert "has 10 classes" in capsys.readouterr().err
    assert cli_main(["sample", str(fresh_export(1, 8)), "--class", "0", "--out", str(tmp_path / "x.npz")]) == 2
    assert "unconditional" in capsys.readouterr().err


@pytest.mark.parametrize("extra,message", [
    (["--steps", "5"], "no default sigmas for 5 steps"),
    (["--sigmas", "100,1"], "leave the student's range"),
    (["--sigmas", "80,abc"], "comma-separated numbers"),
    (["--num", "0"], "must be positive"),
    (["--batch-size", "0"], "must be positive"),
])
def test_bad_inputs_exit_2(tmp_path, capsys, extra, message):
    assert cli_main(["sample", str(fresh_export(1, 8)), *extra, "--out", str(tmp_path / "o.png")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o.png").exists()


def test_bad_paths_and_outputs_exit_2(tmp_path, capsys):
    assert cli_main(["sample", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o.png")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert cli_main(["sample", str(fresh_export(1, 8)), "--out", str(tmp_path / "o.jpg")]) == 2
    assert ".npz" in capsys.readouterr().err


def test_subprocess_shows_progress_and_writes(run_cli, tmp_path):
    proc = run_cli("sample", fresh_export(1, 8), "--num", "20", "--batch-size", "8", "--out", tmp_path / "g.png")
    assert proc.returncode == 0, proc.stderr
    assert "sampling" in proc.stderr and "20/20" in proc.stderr  # tqdm progress bar, in images
    assert (tmp_path / "g.png").is_file()
