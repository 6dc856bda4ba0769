"""`distill eval` on a tiny trained run: report.json in DESIGN.md's shape, the FID-vs-NFE plot, --ref in the
EDM layout, bad input exits 2 (missing Inception file, even NFE), and --search-sigmas storing the schedule
that `distill sample --steps 2` then uses."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from distill.cli import main

ROOT = Path(__file__).resolve().parents[1]
# The same tiny run as tests/test_fid_callback.py (same overrides, same folder): trained once per session.
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def evaluated(tiny_run, tmp_path_factory):
    """One real `distill eval` subprocess, as a user runs it."""
    import subprocess
    import sys

    out = tmp_path_factory.mktemp("eval") / "report.json"
    proc = subprocess.run([sys.executable, "-m", "distill", "eval", str(tiny_run), "--num", "64", "--steps", "1,2",
                           "--teacher-nfe", "1,3", "--out", str(out)], capture_output=True, text=True,
                          timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1"), cwd=tmp_path_factory.getbasetemp())
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, json.loads(out.read_text()), proc.stdout


def test_report_has_the_design_shape_and_plots(evaluated):
    out, rep, stdout = evaluated
    assert set(rep) >= {"student", "teacher", "num_samples", "features", "reference"}
    assert set(rep["student"]) == {"1", "2"} and set(rep["teacher"]) == {"1", "3"}
    assert rep["num_samples"] == 64
    assert rep["features"].startswith("digits-classifier") and "exact samples" in rep["reference"]
    for part in ("student", "teacher"):
        for key, entry in rep[part].items():
            assert {"fd_pixel", "fid", "precision", "recall"} <= set(entry)
            assert all(np.isfinite(v) for v in entry.values())
            assert 0 <= entry["precision"] <= 1 and 0 <= entry["recall"] <= 1
            assert ("traj_rmse" in entry) == (part == "teacher" or key == "1")
    for png in ("fid_vs_nfe.png", "comparison.png"):
        assert (out.parent / png).read_bytes()[:8] == PNG
    assert "fid" in stdout and "teacher Heun, NFE 3" in stdout


def test_ref_in_edm_layout_gives_the_same_fid(evaluated, tiny_run, tmp_path):
    """Statistics of the same exact samples, saved as EDM saves them (mu, sigma only), read by --ref."""
    import teachers
    from distill.evaluation.metrics.extractors import build_extractor
    from distill.evaluation.metrics.reference import exact_samples
    from distill.export import load_student

    _, rep, _ = evaluated
    student = load_student(tiny_run)
    ext = build_extractor("digits", student.image_shape)
    feats = ext(exact_samples(teachers.load(student.meta["teacher"]["spec"]), 1000, 0)).numpy()
    mu, sigma = feats.mean(0), np.cov(feats, rowvar=False)
    np.savez(tmp_path / "ref.npz", mu=mu, sigma=sigma)
    out = tmp_path / "r" / "report.json"
    assert main(["eval", str(tiny_run), "--num", "64", "--steps", "1", "--teacher-nfe", "1", "--ref",
                 str(tmp_path / "ref.npz"), "--out", str(out)]) == 0
    got = json.loads(out.read_text())
    assert got["reference"] == "statistics in ref.npz"
    # `rep` comes from another process, which may run the float32 feature network on another number of
    # intra-op threads (distill/threads.py picks them from the free CPUs; a test may have set others): the
    # GEMMs then sum in another order and the features differ in their last bits (measured on the tiny run: 1 vs
    # 2 threads moves the 1-step FID from 2555.2131227 to 2555.2131139, 3.5e-9 relative). rel 1e-6 leaves
    # room for float32 sums of 1024 terms (unit roundoff 6e-8) in either order;
    # statistics of other samples move the FID by far more (one sample of the 1000 left out: 1e-4).
    assert got["student"]["1"]["fid"] == pytest.approx(rep["student"]["1"]["fid"], rel=1e-6)
    assert got["teacher"]["1"]["fid"] == pytest.approx(rep["teacher"]["1"]["fid"], rel=1e-6)


def test_bad_input_exits_2_with_a_useful_message(tiny_run, tmp_path, capsys):
    missing = tmp_path / "weights" / "weights-inception-2015-12-05-6726825d.pth"
    assert main(["eval", str(tiny_run), "--inception", str(missing), "--out", str(tmp_path / "r.json")]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "download it yourself" in err
    assert main(["eval", str(tiny_run)]) == 2  # no --out
    assert "--out" in capsys.readouterr().err
    assert main(["eval", str(tiny_run), "--teacher-nfe", "1,4", "--out", str(tmp_path / "r.json")]) == 2
    assert "only odd NFE" in capsys.readouterr().err
    assert main(["eval", str(tiny_run), "--features", "nope", "--out", str(tmp_path / "r.json")]) == 2
    assert "unknown feature extractor" in capsys.readouterr().err
    assert main(["eval", str(tiny_run), "--ref", str(tmp_path / "none.npz"), "--out", str(tmp_path / "r.json")]) == 2
    ckpt = tiny_run / "checkpoints" / "last.ckpt"
    assert main(["eval", str(ckpt), "--search-sigmas", "--num", "8", "--teacher-nfe", "1", "--steps", "1",
                 "--out", str(tmp_path / "r.json")]) == 2
    assert "student.json" in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()


def test_search_sigmas_is_stored_and_used_by_sample(tiny_run, tmp_path):
    from distill.export import load_student
    from distill.sampling import default_sigmas

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    before = json.loads((run / "student.json").read_text())
    out = tmp_path / "report.json"
    assert main(["eval", str(run), "--search-sigmas", "--search-num", "32", "--num", "32", "--steps", "2,3",
                 "--teacher-nfe", "1", "--out", str(out)]) == 0
    after = json.loads((run / "student.json").read_text())
    assert set(after) == set(before) | {"sampling_sigmas_search"}
    assert {k: v for k, v in after.items() if not k.startswith("sampling_sigmas")} == \
        {k: v for k, v in before.items() if not k.startswith("sampling_sigmas")}
    two, three = after["sampling_sigmas"]["2"], after["sampling_sigmas"]["3"]
    assert two[0] == three[0] == 80.0 and 0.002 < two[1] < 80 and 80 > three[1] > three[2] > 0.002
    record = after["sampling_sigmas_search"]
    assert record["num"] == 32 and record["evaluations"] > 20 and record["fid"]["2"] > 0
    student = load_student(run)  # what `distill sample --steps 2` reads
    assert default_sigmas(student, 2) == pytest.approx(two) and default_sigmas(student, 3) == pytest.approx(three)
    assert json.loads(out.read_text())["student_sigmas"]["2"] == pytest.approx(two)
