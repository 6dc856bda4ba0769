"""Preemption-safe stop: a signal sets a flag; the ranks agree at a batch boundary; the checkpoint is saved
there; the job stops and (under SLURM) requeues itself.

Saving inside the signal handler can hang (FACTS.md): the handler may run on one rank in the middle of a
collective, and Lightning's own SLURM handler saves there (lightning 2.6,
trainer/connectors/signal_connector.py). So the handler only sets a flag; every rank all-reduces the
flag (MAX) at the end of each batch, so all ranks see the same decision at the same step, call the
collective `trainer.save_checkpoint` together, and raise `Preempted`, which `distill.training.fit` turns into a
clean exit. Lightning's SLURM auto-requeue is switched off in `build_trainer` so that it does not
install its handler over ours.

Signals: SIGUSR1 (what `#SBATCH --signal=USR1@120` sends before the time limit) and SIGTERM (what
`scancel`, torchrun's agent and Kubernetes send first).

A run can also be stuck between batches, waiting for data that never comes (a hung `pipe:` command, a
stalled file system): no batch boundary, so the flag would never be read and the signal ignored. So a
signal that arrives while the loop waits for its next batch starts a timer: if no batch has started
after `stall_grace_s`, or a second signal arrives first, the handler raises `Interrupted` (no new
checkpoint: the state is the last one saved). SIGINT (Ctrl-C) is Python's KeyboardInterrupt, which
Lightning turns into a shutdown.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
from pathlib import Path

import lightning as L
import torch

SIGNALS = (signal.SIGUSR1, signal.SIGTERM)
STALL_GRACE_S = 10.0  # a batch normally comes within this; Kubernetes' default grace before SIGKILL is 30 s


class Interrupted(Exception):
    """A signal stopped a run that was waiting for its next batch; no new checkpoint was written."""


class Preempted(Exception):
    """Raised on every rank after the preemption checkpoint is written."""

    def __init__(self, step: int, signum: int, requeued: str | None):
        self.step, self.signum, self.requeued = step, signum, requeued
        name = signal.Signals(signum).name if signum else "signal"
        again = f"; requeued SLURM job {requeued}" if requeued else "; run the same command again to resume"
        super().__init__(f"{name} received: checkpoint saved at step {step}{again}")


def slurm_job_id() -> str | None:
    array = os.environ.get("SLURM_ARRAY_JOB_ID")
    job = f"{array}_{os.environ['SLURM_ARRAY_TASK_ID']}" if array else os.environ.get("SLURM_JOB_ID")
    return job if job and re.fullmatch(r"[0-9_]+", job) else None


def requeue_slurm_job() -> str | None:
    """`scontrol requeue JOB` (rank 0 only); the job id, or None outside SLURM or when it fails."""
    job = slurm_job_id()
    if job is None:
        return None
    try:
        done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return job if done.returncode == 0 else None


class PreemptionCheckpoint(L.Callback):
    def __init__(self, checkpoint_path: Path, signals=SIGNALS, every_n_steps: int = 10,
                 stall_grace_s: float = STALL_GRACE_S):
        self.path = Path(checkpoint_path)
        self.signals = tuple(signals)
        # On several ranks the agreement costs a host sync, so it happens every n optimizer steps (a
        # signal comes minutes before the kill); one process checks its flag every step for free.
        self.every_n_steps = max(1, int(every_n_steps))
        self.stall_grace_s = float(stall_grace_s)
        self.received = 0  # the signal number, 0 while none arrived
        self._previous: dict[int, object] = {}
        self._seen_step = -1
        self._waiting = True  # between two batches (or before the first): see the module docstring
        self._timer: threading.Timer | None = None
        self._stalled = False
        self._step = 0

    def _handler(self, signum, frame):
        # No I/O, no collectives here (see module docstring): a flag, or a raise while no batch runs.
        first = not self.received
        self.received = self.received or signum
        if not self._waiting:
            return  # inside a batch: its end saves the checkpoint and stops
        if first:
            self._arm_timer()
            return
        raise Interrupted(self._interrupted_message())

    def _arm_timer(self) -> None:
        self._timer = threading.Timer(self.stall_grace_s, self._stall, args=(threading.main_thread().ident,))
        self._timer.daemon = True
        self._timer.start()

    def _stall(self, main_thread: int) -> None:
        """Timer thread: no batch started in time; a second signal (to the main thread) makes it stop."""
        if self._waiting:
            self._stalled = True
            signal.pthread_kill(main_thread, self.received)

    def _interrupted_message(self) -> str:
        name = signal.Signals(self.received).name
        why = (f"no batch came within {self.stall_grace_s:g} s" if self._stalled else "a second signal came")
        kept = "no checkpoint had been written yet"
        if self.path.is_file():
            step = torch.load(self.path, map_location="cpu", weights_only=True, mmap=True)["global_step"]
            kept = f"{self.path} (step {step}) is kept"
        return (f"{name} received while waiting for the next batch and {why}: stopped at step {self._step} "
                f"without a new checkpoint; {kept}. If the data source hangs, check data.path")

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def on_fit_start(self, trainer, pl_module):
        # Installed after Lightning's signal connector, so this replaces its SIGTERM handler (which
        # broadcasts inside the handler); teardown restores what was there before.
        for sig in self.signals:
            self._previous[sig] = signal.getsignal(sig)
            signal.signal(sig, self._handler)

    def teardown(self, trainer, pl_module, stage):
        self._cancel_timer()
        for sig, handler in self._previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._waiting = False
        self._cancel_timer()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        try:
            self._batch_end(trainer, pl_module)
        finally:
            self._step, self._waiting = trainer.global_step, True
            if self.received and self._timer is None:  # several ranks: a flag not yet agreed on
                self._arm_timer()

    def _batch_end(self, trainer, pl_module):
        step = trainer.global_step
        if step == self._seen_step:
            return  # inside a gradient-accumulation cycle: only optimizer-step boundaries resume exactly
        self._seen_step = step
        if trainer.max_steps != -1 and step >= trainer.max_steps:
            return  # the run ends now; on_train_end saves the final checkpoint after the final evaluation
        if trainer.world_size == 1:
            signum = self.received
        elif step % self.every_n_steps == 0:  # every rank reaches this at the same step
            flag = torch.tensor([self.received], dtype=torch.int64, device=pl_module.device)
            signum = int(trainer.strategy.reduce(flag, reduce_op="max").item())
        else:
            return
        if not signum:
            return
        trainer.save_checkpoint(self.path, weights_only=False)
        requeued = requeue_slurm_job() if trainer.is_global_zero else None
        raise Preempted(trainer.global_step, signum, requeued)
