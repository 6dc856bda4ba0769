"""Small files that describe huge networks are refused before anything is allocated.

Each file holds the tensors of a tiny network but records a config for a huge one (the 0.8 MB .pkl recording
model_channels=2048 would build 3G parameters, 12 GB; student.json with width 100000, 80 GB). They are loaded
in one subprocess whose address space is capped at 2 GB above what its imports took: a loader that built the
recorded network before comparing it with the file would fail there with a raw allocation error.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from nvlabs_pickle import edm_pickle_bytes

from distill.export import rebuild_student, write_export

PRECOND = dict(img_resolution=8, img_channels=3, label_dim=0, use_fp16=False, sigma_min=0, sigma_max=float("inf"),
               sigma_data=0.5, model_type="SongUNet", model_channels=8, channel_mult=[1, 2], num_blocks=1,
               attn_resolutions=[4], dropout=0.0)
STUDENT = {"schema_version": 1, "recipe": {}, "teacher": {"spec": {"name": "digits"}},
           "network": {"name": "small_unet", "in_channels": 1, "width": 8, "channel_mult": [1, 2], "num_blocks": 1},
           "feeding": {"name": "edm", "sigma_data": 0.5}, "sigma_min": 0.002, "sigma_max": 80.0, "sigma_data": 0.5,
           "image_shape": [1, 8, 8], "num_classes": 0, "sampling_sigmas": {"1": [80.0]}, "reference_stats": None}

LOADER = r"""
import json, resource, sys, time
import teachers
from distill.export import load_student

vm_kb = int(next(l for l in open("/proc/self/status") if l.startswith("VmSize")).split()[1])
cap = (vm_kb << 10) + (2 << 30)
resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
results = {}
for case, (kind, arg) in json.loads(sys.argv[1]).items():
    start = time.perf_counter()
    try:
        if kind == "teacher":
            teachers.load(arg)
        elif kind == "recorded":
            from teachers.registry import load_recorded
            load_recorded(arg, "student.json")
        else:
            load_student(arg)
        results[case] = ["loaded", ""]
    except BaseException as err:
        results[case] = [type(err).__name__, str(err)[:400]]
    results[case].append(time.perf_counter() - start)
print(json.dumps(results))
"""


def small_song_unet():
    from teachers.networks import build_network

    kw = {k: PRECOND[k] for k in ("img_resolution", "model_channels", "channel_mult", "num_blocks",
                                  "attn_resolutions", "dropout")}
    return build_network("song_unet", in_channels=3, out_channels=3, **kw)


def student_files(tmp_path, name: str, network: dict):
    student = rebuild_student(json.loads(json.dumps(STUDENT)))
    run = tmp_path / name
    run.mkdir()
    write_export(run, {**STUDENT, "network": network}, student.net.state_dict(), weights="online")
    ckpt = run / "last.ckpt"
    torch.save({"distill": {**STUDENT, "network": network},
                "state_dict": {f"student.net.{k}": v for k, v in student.net.state_dict().items()}}, ckpt)
    return str(run / "student.safetensors"), str(ckpt)


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    from teachers.edm import save_edm

    tmp = tmp_path_factory.mktemp("sizes")
    pkl = tmp / "wide.pkl"
    pkl.write_bytes(edm_pickle_bytes(small_song_unet(), {**PRECOND, "model_channels": 2048}))
    st = save_edm(small_song_unet(), tmp / "wide.safetensors", sigma_min=0.002, sigma_max=80, sigma_data=0.5,
                  image_shape=(3, 8, 8))
    cfg = json.loads(st.with_suffix(".json").read_text())
    cfg["network"]["model_channels"] = 2048
    st.with_suffix(".json").write_text(json.dumps(cfg))
    pt = tmp / "adm.pt"
    adm = dict(image_size=8, model_channels=32, num_res_blocks=1, channel_mult=[1, 2], attention_resolutions=[4],
               num_head_channels=16)
    from teachers.networks import build_network

    torch.save(build_network("adm_unet", **adm).state_dict(), pt)
    wide = {**STUDENT["network"], "width": 100_000}
    deep = {**STUDENT["network"], "num_blocks": 10**9}
    cases = {
        "edm pkl, model_channels 2048": ("teacher", {"name": "edm", "path": str(pkl)}),
        "edm safetensors, model_channels 2048": ("teacher", {"name": "edm", "path": str(st)}),
        "openai pt, recorded model_channels 100000": (
            "recorded", {"name": "openai_cm", "path": str(pt), "arch": None, **adm, "model_channels": 100_000}),
        "student.json, width 100000": ("student", student_files(tmp, "wide", wide)[0]),
        "ckpt, width 100000": ("student", student_files(tmp, "wide_ckpt", wide)[1]),
        "student.json, num_blocks 10**9": ("student", student_files(tmp, "deep", deep)[0]),
    }
    proc = subprocess.run([sys.executable, "-c", LOADER, json.dumps(cases)], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.splitlines()[-1])


@pytest.mark.parametrize("case,error", [
    ("edm pkl, model_channels 2048", "TeacherSpecError"),
    ("edm safetensors, model_channels 2048", "TeacherSpecError"),
    ("openai pt, recorded model_channels 100000", "TeacherSpecError"),
    ("student.json, width 100000", "StudentLoadError"),
    ("ckpt, width 100000", "StudentLoadError"),
    ("student.json, num_blocks 10**9", "StudentLoadError"),
])
def test_a_huge_recorded_network_is_refused_before_it_is_built(outcomes, case, error):
    kind, message, seconds = outcomes[case]
    assert kind == error, (kind, message)
    assert "do not match" in message or "far more than" in message, message
    assert seconds < 60  # meta-device checks only (a few seconds on a busy CPU)
