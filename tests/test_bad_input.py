"""Every mistake gets exit 2 and a message naming it, not a traceback (README's exit-code promise): values out
of range, broken interpolations, YAML alias bombs, bad run.dir and output paths, truncated or foreign
checkpoints, student.json of another shape, a non-tensor in an OpenAI .pt, NaN weights in an export."""

from __future__ import annotations

import json
import shutil
import time

import pytest
import torch
from _editing_runs import fresh_export

from distill.cli import main
from tests.conftest import RECIPES

FAST = ["trainer.max_steps=2", "data.batch_size=8", "student.network.width=8", "checkpoint.every_n_steps=1",
        "trainer.enable_progress_bar=false", "eval.fid=false", "eval.grid_num=4"]


def exit_code(capsys, *argv) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("override, words", [
    ("optim.lr=${nope}", ["optim.lr", "nope", "interpolation"]),
    ("trainer.max_steps=${oc.env:DISTILL_NO_SUCH_VARIABLE}", ["trainer.max_steps", "DISTILL_NO_SUCH_VARIABLE"]),
    ("trainer.max_steps=-2", ["trainer.max_steps", "-2", "-1 (no limit)"]),
    ("optim.lr=.inf", ["optim.lr", "finite"]),
    ("optim.lr=.nan", ["optim.lr", "finite"]),
    ("optim.lr=0", ["optim.lr", "> 0"]),
    ("trainer.accumulate_grad_batches=0", ["trainer.accumulate_grad_batches", "at least 1"]),
    ("eval.steps=[0]", ["eval.steps", ">= 1"]),
    ("ema.rates=[1.0]", ["ema.rates", "[0, 1)"]),
    ("ema.rates=[-0.5]", ["ema.rates", "[0, 1)"]),
    ("student.sigma_min=0", ["student.sigma_min", "> 0"]),
    ("student.sigmas_2=[80.0, .nan]", ["student.sigmas_2", "finite"]),
    ("student.sigmas_3=[80.0, 0.5, 2.0]", ["student.sigmas_3", "decreasing"]),
])
def test_out_of_range_values_exit_2_naming_the_key(tmp_path, capsys, override, words):
    code, err = exit_code(capsys, "fit", RECIPES / "demo.yaml", f"run.dir={tmp_path / 'run'}", *FAST, override)
    assert code == 2, err
    assert all(w in err for w in words), err
    assert not (tmp_path / "run").exists()


def test_yaml_alias_bomb_is_refused_at_once(tmp_path, capsys):
    """Nine levels of nine aliases: 387 million strings once expanded. yaml.safe_load builds the shared graph
    in microseconds; the recipe merge then expanded it and `distill fit` hung."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    recipe = tmp_path / "bomb.yaml"
    recipe.write_text("\n".join(lines) + "\nrun: {dir: run}\n")
    code, err = exit_code(capsys, "fit", recipe, "--dry-run")
    assert code == 2 and "aliases" in err and "bomb.yaml" in err, err
    from distill.config import ConfigError, resolve

    start = time.monotonic()  # the refusal itself, imports done
    with pytest.raises(ConfigError):
        resolve(recipe)
    assert time.monotonic() - start < 2
    code, err = exit_code(capsys, "fit", RECIPES / "demo.yaml", "optim.betas=" + "&a [1, *a]", "--dry-run")
    assert code == 2 and "recursive alias" in err, err


@pytest.mark.parametrize("make, words", [
    (lambda tmp: "~/distill-runs/x", ["'~' is not expanded", "full path"]),
    (lambda tmp: (tmp / "afile").write_text("x") and tmp / "afile", ["is a file"]),
    (lambda tmp: (tmp / "afile").write_text("x") and tmp / "afile" / "run", ["is under", "afile"]),
])
def test_run_dir_that_cannot_be_a_directory_exits_2(tmp_path, capsys, monkeypatch, make, words):
    monkeypatch.chdir(tmp_path)
    code, err = exit_code(capsys, "fit", RECIPES / "demo.yaml", f"run.dir={make(tmp_path)}", *FAST)
    assert code == 2 and all(w in err for w in words), err
    assert not (tmp_path / "~").exists()


def test_output_path_under_a_file_exits_2(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    code, err = exit_code(capsys, "sample", fresh_export(1, 8), "--num", "2", "--out", tmp_path / "afile" / "x.png")
    assert code == 2 and "afile" in err, err


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A 2-step digits run written with a relative run.dir, so that a copy is the same run elsewhere."""
    import os

    base = tmp_path_factory.mktemp("finished")
    cwd = os.getcwd()
    os.chdir(base)
    try:
        assert main(["fit", str(RECIPES / "demo.yaml"), "run.dir=run", *FAST]) == 0
    finally:
        os.chdir(cwd)
    return base / "run"


def test_truncated_or_foreign_last_ckpt_exits_2(finished_run, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(finished_run, tmp_path / "run")
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 2])
    code, err = exit_code(capsys, "fit", RECIPES / "demo.yaml", "run.dir=run", *FAST, "trainer.max_steps=3")
    assert code == 2 and "last.ckpt" in err and "cannot be read" in err and "Traceback" not in err, err
    torch.save({"global_step": 1, "state_dict": {"w": torch.zeros(3)}}, ckpt)
    code, err = exit_code(capsys, "fit", RECIPES / "demo.yaml", "run.dir=run", *FAST, "trainer.max_steps=3")
    assert code == 2 and "not a checkpoint written by `distill fit`" in err, err
    good = torch.load(finished_run / "checkpoints" / "last.ckpt", weights_only=True)
    good["state_dict"] = {k + "_x": v for k, v in good["state_dict"].items()}
    torch.save(good, ckpt)
    code, err = exit_code(capsys, "fit", RECIPES / "demo.yaml", "run.dir=run", *FAST, "trainer.max_steps=3")
    assert code == 2 and "do not fit this recipe's student" in err, err


@pytest.mark.parametrize("edit, words", [
    (lambda m: {"hello": "world"}, ["no 'network' entry"]),
    (lambda m: [1, 2, 3], ["expected a JSON object"]),
    (lambda m: dict(m, image_shape="1x8x8"), ["'image_shape' is str"]),
    (lambda m: dict(m, sigma_max=None), ["'sigma_max' is NoneType"]),
    (lambda m: dict(m, network={"name": "small_unet", "width": "wide"}), ["cannot rebuild"]),
])
def test_student_json_of_another_shape_exits_2(tmp_path, capsys, edit, words):
    src = fresh_export(1, 8)
    for name in ("student.safetensors", "student.json"):
        shutil.copy(src / name, tmp_path / name)
    meta = json.loads((tmp_path / "student.json").read_text())
    (tmp_path / "student.json").write_text(json.dumps(edit(meta)))
    code, err = exit_code(capsys, "sample", tmp_path, "--num", "2", "--out", tmp_path / "x.png")
    assert code == 2 and all(w in err for w in words) and "Traceback" not in err, err


def test_student_with_nan_weights_is_refused(tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    src = fresh_export(1, 8)
    shutil.copy(src / "student.json", tmp_path / "student.json")
    state = load_file(str(src / "student.safetensors"))
    key = next(iter(state))
    state[key] = state[key].clone()
    state[key].view(-1)[0] = float("nan")
    save_file(state, str(tmp_path / "student.safetensors"), metadata={"weights": "online"})
    code, err = exit_code(capsys, "sample", tmp_path, "--num", "2", "--out", tmp_path / "x.png")
    assert code == 2 and "NaN/Inf" in err and key in err, err
    assert not (tmp_path / "x.png").exists()


def test_openai_pt_with_a_number_instead_of_a_tensor_is_refused(tmp_path):
    import teachers
    from teachers.registry import TeacherSpecError

    path = tmp_path / "edm_imagenet64_ema.pt"
    torch.save({"time_embed.0.weight": torch.zeros(2), "time_embed.0.bias": 7}, path)
    with pytest.raises(TeacherSpecError, match="'time_embed.0.bias' is int, not a tensor"):
        teachers.load({"name": "openai_cm", "path": str(path), "arch": "imagenet64"})


def png_header(width: int, height: int, mode_byte: int = 0) -> bytes:
    """A PNG that claims width x height pixels (grey, 8 bit) and holds one broken data chunk: what a
    decompression bomb looks like to a reader before it decodes (the real ones compress gigabytes of zeros)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, mode_byte, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"\x78\x9c garbage") + chunk(b"IEND", b"")


def truncated_ihdr() -> bytes:
    """A PNG whose header chunk is cut short: PIL raises ValueError, which used to escape as a traceback."""
    return png_header(8, 8)[:8] + bytes.fromhex("00000004") + b"IHDR" + bytes(4) + bytes(4)


@pytest.mark.parametrize("data, words", [
    (lambda: png_header(20000, 20000), ["decompression bomb"]),  # PIL's own error (over 2 x 89 Mpx)
    (lambda: png_header(9000, 9000), ["9000x9000 pixels", "decompression bomb"]),  # over our cap only
    (lambda: png_header(8, 8), ["not a readable image"]),  # the right size, corrupt data
    (truncated_ihdr, ["Truncated IHDR"]),
])
@pytest.mark.parametrize("which", ["--input", "--mask"])
def test_edit_refuses_bombs_and_corrupt_images_with_exit_2(tmp_path, capsys, data, words, which):
    import numpy as np
    from PIL import Image

    good = tmp_path / "good.png"
    Image.fromarray(np.full((8, 8), 100, np.uint8)).save(good)
    mask = tmp_path / "mask.png"
    Image.fromarray(np.where(np.arange(64).reshape(8, 8) < 32, 255, 0).astype(np.uint8)).save(mask)
    bad = tmp_path / "bad.png"
    bad.write_bytes(data())
    files = {"--input": bad, "--mask": mask} if which == "--input" else {"--input": good, "--mask": bad}
    code, err = exit_code(capsys, "edit", fresh_export(1, 8), "--task", "inpaint", "--input", files["--input"],
                          "--mask", files["--mask"], "--out", tmp_path / "o.png")
    assert code == 2 and which in err and all(w in err for w in words) and "Traceback" not in err, err
    assert not (tmp_path / "o.png").exists()


def test_data_folder_skips_a_bomb_and_an_all_bomb_folder_exits_2(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    from distill.data.folders import load_images

    (tmp_path / "data").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "data" / "a.png")
    (tmp_path / "data" / "b.png").write_bytes(png_header(20000, 20000))
    images, _, skipped = load_images(tmp_path / "data", (1, 8, 8))
    assert images.shape == (1, 1, 8, 8) and skipped == 1
    (tmp_path / "data" / "a.png").unlink()
    code, err = exit_code(capsys, "fit", RECIPES / "demo.yaml", f"run.dir={tmp_path / 'run'}", *FAST,
                          "data.name=folder", f"data.path={tmp_path / 'data'}")
    assert code == 2 and "no readable images" in err, err
    assert not (tmp_path / "run").exists()
