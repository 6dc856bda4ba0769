"""`distill bench threads`: demo training throughput idle and beside busy processes, per thread setting.

Each measurement is a fresh process (`python -m distill.bench.threads`), so that it picks its threads the
way `distill fit` does: DISTILL_NUM_THREADS=auto runs the policy of distill/threads.py, a number fixes the
count (OMP_NUM_THREADS is removed from its environment). "Busy" processes are single-threaded Python spin
loops started a second before the worker, standing in for another user's job. The worker trains the demo
student (Heun CD on the digits teacher, batch 64 as recipes/demo.yaml) as `distill fit` builds it, with FID
off, and reports wall-clock steps per second over `steps` steps after `warmup` steps. Wall time on purpose:
the point is how much of the machine's time other processes cost us.

The target (issue 14): beside one busy process, demo throughput at least 0.67x idle with the default policy.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning as L

from distill.bench.common import say

SPIN = "while True: pass"
BATCH = {"demo": 64, "tiny": None}  # None: the size's own batch (distill/bench/common.py)


class _Clock(L.Callback):
    """Wall time from the end of step `warmup` to the end of the last step."""

    def __init__(self, warmup: int):
        self.warmup, self.start, self.end = warmup, None, None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        now = time.perf_counter()
        if trainer.global_step == self.warmup:
            self.start = now
        self.end = now


def train_steps(size: str, steps: int, warmup: int) -> dict:
    """In this process: the thread policy, then `warmup + steps` demo training steps; the measured rate."""
    import torch

    from distill import threads
    from distill.bench.common import build_teacher, size_spec
    from distill.bench.step import step_config
    from distill.data import DistillDataModule
    from distill.quiet import quiet_third_party
    from distill.training.fit import build_trainer, prepare_teacher_and_student

    quiet_third_party()
    choice = threads.apply()
    spec = size_spec(size)
    extra = {"checkpoint": {"every_n_steps": 10**9}, "eval": {"grid_num": 4}}
    if BATCH[size]:
        extra["data"] = {"batch_size": BATCH[size]}
    with tempfile.TemporaryDirectory(prefix="distill-bench-threads-") as tmp:
        cfg = step_config(spec, "heun_cd", Path(tmp), warmup + steps, extra)
        teacher, module = prepare_teacher_and_student(cfg, {}, build_teacher(spec))
        trainer = build_trainer(cfg, Path(tmp))
        clock = _Clock(warmup)
        trainer.callbacks.append(clock)
        trainer.fit(module, datamodule=DistillDataModule(cfg, teacher))
    seconds = clock.end - clock.start
    return {"threads": torch.get_num_threads(), "reason": choice.reason, "seconds": seconds,
            "steps_per_s": steps / seconds}


def _worker(size: str, steps: int, warmup: int, setting: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    env["DISTILL_NUM_THREADS"] = setting
    cmd = [sys.executable, "-m", "distill.bench.threads", size, str(steps), str(warmup)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark worker failed ({setting} threads):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _spinners(count: int) -> list[subprocess.Popen]:
    procs = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(count)]
    if procs:
        time.sleep(1.0)  # running by the time the worker looks at the load
    return procs


def run_threads(size: str = "demo", steps: int = 150, warmup: int = 10, busy=(0, 1), settings=("auto", "1", "2"),
                repeats: int = 1, log=say) -> dict:
    """{"runs": {"busy<k>": {setting: {...}}}, "ratio_to_idle": {"busy<k>": {setting: r}}, ...}."""
    runs: dict[str, dict] = {}
    for k in busy:
        spinners = _spinners(k)
        try:
            for setting in settings:
                results = [_worker(size, steps, warmup, setting) for _ in range(repeats)]
                rate = statistics.median(r["steps_per_s"] for r in results)
                runs.setdefault(f"busy{k}", {})[setting] = {
                    "threads": results[0]["threads"], "reason": results[0]["reason"],
                    "steps_per_s": rate, "seconds_per_step": 1.0 / rate,
                    "all_steps_per_s": [r["steps_per_s"] for r in results]}
                log(f"[{size}] {k} busy process(es), threads={setting} -> {results[0]['threads']}: "
                    f"{rate:.2f} steps/s ({steps} steps)")
        finally:
            for p in spinners:
                p.kill()
                p.wait()
    result = {"size": size, "steps": steps, "warmup": warmup, "repeats": repeats, "cpus": os.cpu_count(),
              "runs": runs}
    idle = runs.get("busy0")
    if idle:
        best_idle = max(v["steps_per_s"] for v in idle.values())
        result["ratio_to_idle"] = {b: {s: v["steps_per_s"] / idle[s]["steps_per_s"] for s, v in by.items()}
                                   for b, by in runs.items() if b != "busy0"}
        result["ratio_to_best_idle"] = {b: {s: v["steps_per_s"] / best_idle for s, v in by.items()}
                                        for b, by in runs.items() if b != "busy0"}
    return result


if __name__ == "__main__":  # the worker: python -m distill.bench.threads SIZE STEPS WARMUP
    print(json.dumps(train_steps(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))))
