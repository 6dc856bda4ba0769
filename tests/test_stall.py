"""A signal stops a run that waits for data that never comes: the preemption handler only sets a flag read at
batch boundaries, so a run stuck between batches used to ignore SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from distill.training.callbacks.preemption import Interrupted, PreemptionCheckpoint
from tests.conftest import RECIPES, ROOT


@pytest.fixture
def callback(tmp_path):
    cb = PreemptionCheckpoint(tmp_path / "last.ckpt", stall_grace_s=0.3)
    cb.on_fit_start(None, None)
    yield cb
    cb.teardown(None, None, "fit")


def test_a_signal_while_waiting_for_data_stops_after_the_grace(callback):
    start = time.monotonic()
    with pytest.raises(Interrupted, match="SIGTERM received while waiting for the next batch and no batch came "
                                          "within 0.3 s: stopped at step 0 without a new checkpoint; no checkpoint"):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)  # a blocking wait, as a DataLoader's on a hung source
    assert time.monotonic() - start < 10


def test_a_second_signal_while_waiting_stops_at_once(callback):
    os.kill(os.getpid(), signal.SIGUSR1)
    with pytest.raises(Interrupted, match="a second signal came"):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)


def test_inside_a_batch_a_signal_only_sets_the_flag(callback):
    callback.on_train_batch_start(None, None, None, 0)
    os.kill(os.getpid(), signal.SIGTERM)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.6)  # past the grace: no timer runs inside a batch
    assert callback.received == signal.SIGTERM  # the batch end saves and stops (test_resume.py)


def _tar(path: Path, n: int = 8) -> None:
    import io

    import webdataset as wds
    from PIL import Image

    with wds.TarWriter(str(path)) as sink:
        for i in range(n):
            buf = io.BytesIO()
            Image.fromarray(np.full((8, 8), 16 * i, np.uint8)).save(buf, format="png")
            sink.write({"__key__": f"{i:04d}", "png": buf.getvalue()})


@pytest.mark.slow
@pytest.mark.parametrize("sig, message", [(signal.SIGTERM, "no batch came within 10 s"),
                                          (signal.SIGINT, "")])
def test_fit_waiting_on_a_hung_data_source_stops_on_a_signal(tmp_path, sig, message):
    """Shards: a good tar and a FIFO nobody writes (open() blocks, as on a hung network mount). The run passes
    its start check on the good shard, then blocks as soon as it draws the FIFO."""
    _tar(tmp_path / "good.tar")
    os.mkfifo(tmp_path / "hung.tar")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "distill", "fit", str(RECIPES / "demo.yaml"), f"run.dir={tmp_path / 'run'}",
           "data.name=webdataset", f"data.path={tmp_path}/good.tar::{tmp_path}/hung.tar", "eval.fid=false",
           "trainer.max_steps=1000", "trainer.enable_progress_bar=false", "student.network.width=8"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    end = time.monotonic() + 300
    wchan = Path(f"/proc/{proc.pid}/wchan")
    while proc.poll() is None and wchan.read_text() != "wait_for_partner":  # blocked opening the FIFO
        assert time.monotonic() < end, "never blocked on the FIFO"
        time.sleep(0.1)
    assert proc.poll() is None, proc.stderr.read()[-3000:]
    proc.send_signal(sig)
    start = time.monotonic()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err[-3000:]
    assert time.monotonic() - start < 60
    assert message in err
    assert not (tmp_path / "run").exists()  # stopped before its first checkpoint: nothing left behind
