"""Runs shared by test_editing.py, test_sample_cli.py and test_export.py, built once per pytest process.

`trained_digits_run()` distils the demo recipe for a few hundred steps through the Python API (the same
path as `distill fit`); `fresh_export(shape)` writes the export of an untrained student, for tests whose
property (projection exactness, batch independence, file handling) does not depend on training.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_TMP = Path(tempfile.mkdtemp(prefix="distill-edit-tests-"))
atexit.register(shutil.rmtree, _TMP, ignore_errors=True)

# 200 steps at lr 1e-3 with a short EMA (0.9): long enough for Alg. 4 to beat unconditional sampling
# (masked RMSE ~0.72 against ~0.76 for a 1-step sample), short enough for the default test run (~20 s of CPU).
TRAIN_STEPS = 200


@functools.cache
def trained_digits_run() -> Path:
    from distill.config import resolve
    from distill.training.fit import fit

    cfg = resolve(ROOT / "recipes" / "demo.yaml", [
        f"run.dir={_TMP / 'digits'}", f"trainer.max_steps={TRAIN_STEPS}", "trainer.enable_progress_bar=false",
        "trainer.log_every_n_steps=1000", "data.batch_size=64", "optim.lr=1e-3", "ema.rates=[0.9]", "eval.num=16",
        f"checkpoint.every_n_steps={TRAIN_STEPS}"])
    return fit(cfg)  # one intra-op thread, as every test (tests/conftest.py)


@functools.cache
def fresh_export(channels: int = 1, size: int = 8, num_classes: int = 0) -> Path:
    """student.safetensors + student.json of a randomly initialised small UNet student."""
    import torch

    from distill.export import rebuild_student, write_export

    meta = {"schema_version": 2, "recipe": {}, "teacher": {"spec": {"name": "none"}},
            "network": {"name": "small_unet", "in_channels": channels, "width": 8, "channel_mult": [1, 2],
                        "num_blocks": 1, "num_classes": num_classes},
            "feeding": {"name": "edm", "sigma_data": 0.5}, "sigma_min": 0.002, "sigma_max": 80.0,
            "sigma_data": 0.5, "image_shape": [channels, size, size], "num_classes": num_classes,
            "sampling_sigmas": {"1": [80.0], "2": [80.0, 2.0]}, "reference_stats": None,
            "training_sigmas": {"pairs": "continuous"}}
    torch.manual_seed(0)
    student = rebuild_student(meta)
    for p in student.parameters():  # the UNet zero-initialises its last convs; make every weight count
        p.data.normal_(0, 0.2)
    out = _TMP / f"fresh_c{channels}_s{size}_k{num_classes}"
    out.mkdir()
    write_export(out, meta, student.net.state_dict(), weights="online")
    return out
