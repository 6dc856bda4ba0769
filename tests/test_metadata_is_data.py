"""What a student.json or a .ckpt records is data (DESIGN.md, "Metadata ... is data"): rebuilding from it imports
nothing it names, builds nothing it claims before checking the claim against the tensors in the file, and any
failure is a StudentLoadError / TeacherSpecError naming the file (exit 2), never a traceback. Code runs only
when the user names it on the command line (`distill eval --teacher`, `--features`)."""

from __future__ import annotations

import json
import sys
import zipfile

import pytest
import torch

import distill
from distill.cli import main
from distill.export import StudentLoadError, rebuild_student, write_export
from teachers.registry import TeacherSpecError

META = {"schema_version": 1, "recipe": {}, "teacher": {"spec": {"name": "digits"}},
        "network": {"name": "small_unet", "in_channels": 1, "width": 8, "channel_mult": [1, 2], "num_blocks": 1},
        "feeding": {"name": "edm", "sigma_data": 0.5}, "sigma_min": 0.002, "sigma_max": 80.0, "sigma_data": 0.5,
        "image_shape": [1, 8, 8], "num_classes": 0, "sampling_sigmas": {"1": [80.0], "2": [80.0, 2.0]},
        "reference_stats": None}


def export(tmp_path, edit=None, name="run"):
    """A run directory holding the export of a small random student, its student.json then edited."""
    torch.manual_seed(0)
    student = rebuild_student(json.loads(json.dumps(META)))
    run = tmp_path / name
    run.mkdir()
    meta = json.loads(json.dumps(META))
    if edit:
        edit(meta)
    write_export(run, meta, student.net.state_dict(), weights="online")
    return run


def checkpoint(tmp_path, distill_record, name="evil.ckpt"):
    """A .ckpt as `distill fit` writes it (weights only), with the 'distill' record given."""
    torch.manual_seed(0)
    student = rebuild_student(json.loads(json.dumps(META)))
    path = tmp_path / name
    torch.save({"distill": distill_record,
                "state_dict": {f"student.net.{k}": v for k, v in student.net.state_dict().items()}}, path)
    return path


@pytest.fixture
def evil(tmp_path, monkeypatch):
    """A module on sys.path whose import writes a marker file: proof that a file's metadata was run."""
    marker = tmp_path / "imported"
    folder = tmp_path / "site"
    folder.mkdir()
    (folder / "evilmod.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
                                       "def make(**kwargs):\n    raise AssertionError('called')\n")
    monkeypatch.syspath_prepend(str(folder))
    yield marker
    sys.modules.pop("evilmod", None)


def set_teacher(spec):
    return lambda meta: meta["teacher"].update(spec=spec)


@pytest.mark.parametrize("spec", [{"target": "evilmod:make"},
                                  {"name": "guidance", "teacher": {"target": "evilmod:make"}, "scale": 2.0}])
def test_eval_never_imports_a_teacher_named_in_student_json(tmp_path, evil, capsys, spec):
    run = export(tmp_path, set_teacher(spec))
    assert main(["eval", str(run), "--num", "8", "--features", "pixel", "--out", str(tmp_path / "r.json")]) == 2
    err = capsys.readouterr().err
    assert "evilmod:make" in err and "--teacher" in err, err
    assert not evil.exists() and "evilmod" not in sys.modules
    assert not (tmp_path / "r.json").exists()


def test_eval_never_imports_features_named_in_student_json(tmp_path, evil, capsys):
    run = export(tmp_path, lambda meta: meta["recipe"].update(eval={"features": "evilmod:make"}))
    assert main(["eval", str(run), "--num", "8", "--out", str(tmp_path / "r.json")]) == 2
    assert "--features evilmod:make" in capsys.readouterr().err
    assert not evil.exists()


def test_a_teacher_given_on_the_command_line_is_used(tmp_path, evil):
    run = export(tmp_path, set_teacher({"target": "evilmod:make"}))
    out = tmp_path / "r.json"
    assert main(["eval", str(run), "--num", "8", "--steps", "1", "--teacher-nfe", "1", "--teacher", "{name: digits}",
                 "--features", "pixel", "--out", str(out)]) == 0
    assert "exact samples of the digits teacher" in json.loads(out.read_text())["reference"]
    assert not evil.exists()


def test_teacher_option_reads_a_recipes_teacher_block(tmp_path, monkeypatch):
    from distill.commands.eval import teacher_block

    base = tmp_path / "base.yaml"
    base.write_text("teacher: {name: edm, path: a.pkl}\n")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("base: base.yaml\nteacher: {path: '${oc.env:TEACHER_PKL}'}\n")
    monkeypatch.setenv("TEACHER_PKL", "/models/b.pkl")
    assert teacher_block(str(recipe)) == {"name": "edm", "path": "/models/b.pkl"}
    assert teacher_block("{target: 'pkg.mod:make', width: 3}") == {"target": "pkg.mod:make", "width": 3}


def test_recorded_specs_accept_registered_names_only(evil):
    from teachers.registry import load_recorded

    with pytest.raises(TeacherSpecError, match="student.json.*never imported"):
        load_recorded({"name": "guidance", "teacher": {"target": "evilmod:make"}}, "x/student.json")
    with pytest.raises(TeacherSpecError, match="unknown teacher"):
        load_recorded({"name": "evilmod:make"}, "x/student.json")
    assert not evil.exists()
    assert load_recorded({"name": "digits"}, "x/student.json").image_shape == (1, 8, 8)


@pytest.mark.parametrize("key,value,message", [
    ("network", {"name": "evilmod:Net", "width": 8}, "unknown network"),
    ("feeding", {"name": "evilmod:Feeding"}, "unknown backbone feeding"),
    ("network", 5, "student.json"), ("network", [], "student.json"), ("feeding", None, "student.json"),
    ("sigma_min", "abc", "student.json"),
])
def test_bad_student_json_is_a_load_error_naming_it(tmp_path, evil, capsys, key, value, message):
    run = export(tmp_path, lambda meta: meta.update({key: value}))
    with pytest.raises(StudentLoadError, match=message):
        distill.load_student(run)
    assert main(["sample", str(run), "--steps", "1", "--num", "1", "--out", str(tmp_path / "s.png")]) == 2
    assert "student.json" in capsys.readouterr().err
    assert not evil.exists() and not (tmp_path / "s.png").exists()


@pytest.mark.parametrize("record", [5, {"network": 5}, {**META, "feeding": {"name": "nope"}}])
def test_bad_checkpoint_records_are_a_load_error_naming_it(tmp_path, record):
    with pytest.raises(StudentLoadError, match="evil.ckpt"):
        distill.load_student(checkpoint(tmp_path, record))


def test_compressed_checkpoints_are_refused_before_they_inflate(tmp_path):
    """torch stores zip records uncompressed; a deflated 64 MB record is a ~64 KB file: a zip bomb."""
    path = checkpoint(tmp_path, META, "plain.ckpt")
    bomb = tmp_path / "bomb.ckpt"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info.filename))
        dst.writestr(f"{src.namelist()[0].split('/')[0]}/extra", bytes(64 << 20))
    with pytest.raises(StudentLoadError, match="inflate"):
        distill.load_student(bomb)


def test_an_openai_state_dict_with_a_non_tensor_is_refused(tmp_path):
    import teachers
    from teachers.networks import build_network

    adm = dict(image_size=8, model_channels=32, num_res_blocks=1, channel_mult=[1, 2], attention_resolutions=[4],
               num_head_channels=16)
    state = build_network("adm_unet", **adm).state_dict()
    path = tmp_path / "odd.pt"
    torch.save({**state, "time_embed.0.weight": 5}, path)
    with pytest.raises(TeacherSpecError, match="odd.pt"):
        teachers.load({"name": "openai_cm", "path": str(path), "arch": None, **adm})
