"""`distill bench step`: a training step as Lightning runs it, against the network passes it needs.

DESIGN.md, "Measuring": a Heun CD step costs 2 teacher evaluations + 1 target forward + a student forward
and backward (about 6 forward passes), an Euler step one teacher evaluation less, a CT step none; an sCD step
(sCM) 1 teacher evaluation + a forward-mode JVP of the student (its stop-gradient target) + forward and backward. Here
a real Trainer drives the real module and all of `distill fit`'s callbacks; a probe callback stamps the
start of every step, so one interval is a whole step (data, forward, backward, optimizer, target and EMA
updates, logging), and on odd steps it first times the step's passes alone on that step's batch.
Intervals that contain a probe are dropped; the rest, after warm-up, give step_s. Interleaving the two
lets any drift in the machine's speed hit both sides of the ratio. The probe ends the fit with an
exception after the last step, so end-of-training work (sample grids, export) is not run.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import lightning as L
import torch

from distill.bench.common import build_teacher, clock_for, median, say, size_spec, sync, timed
from teachers.base import expand_like

# method key (DESIGN.md's JSON) -> recipe overrides. Teacher calls are counted, not assumed.
METHODS = {
    "heun_cd": {"method": {"name": "cd", "solver": "heun"}},
    "euler_cd": {"method": {"name": "cd", "solver": "euler"}},
    "ct": {"method": {"name": "ct"}},
    # sCD: one teacher velocity, one forward-mode JVP of the student (about 1.5-3 forwards), forward + backward.
    "scd": {"method": {"name": "scd"}},
}


class _Done(Exception):
    """Raised by the probe after the last measured step: stops the fit before on_train_end."""


class StepProbe(L.Callback):
    """Stamps each step's start; on odd steps after warm-up first times the step's passes alone."""

    def __init__(self, warmup: int, repeats: int, now):
        self.warmup, self.last, self.now = warmup, warmup + 2 * repeats + 1, now
        self.stamps: list[float] = []  # stamps[k]: start of step k
        self.passes: list[dict[str, float]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        step = trainer.global_step
        if step >= self.warmup and step % 2 == 1:
            self.passes.append(time_passes(pl_module, batch, step, self.now))
        sync(pl_module.device)
        self.stamps.append(self.now())
        if step == self.last:
            raise _Done

    def step_times(self) -> list[float]:
        # Step k is clean when no probe ran before step k + 1 starts, i.e. when k + 1 is even.
        return [self.stamps[k + 1] - self.stamps[k] for k in range(self.warmup, len(self.stamps) - 1)
                if k % 2 == 1]


def time_passes(module, batch, step: int, now=time.perf_counter) -> dict[str, float]:
    """The step's network passes, each timed alone, at the step's batch, sigmas, dtypes and modes.

    The target is built by the method's own target function with every teacher call timed (a mixture
    teacher costs several times more at small sigma, so the sigmas must be the step's); what the
    target function does between teacher calls is overhead, not a pass.
    """
    x0, labels = batch
    dev = module.device
    x0 = x0.to(dev)
    cond = labels.to(dev) if module.student.num_classes else None
    gen = torch.Generator(device=dev).manual_seed(0x5EED + step)
    if module.objective is not None:
        return time_continuous_passes(module, x0, cond, gen, step, now)
    sigma_cur, sigma_next = (s.to(x0.dtype) for s in module.plan.pairs.sample(step, x0.shape[0], gen))
    z = torch.randn(x0.shape, generator=gen, device=dev, dtype=x0.dtype)
    x_next = x0 + expand_like(sigma_next, x0) * z
    out = {"teacher": 0.0, "teacher_calls": 0}
    target_fn = module.plan.target
    with _TimedTeacher(target_fn, out, dev, now):
        x_cur = target_fn(x0, z, x_next, sigma_next, sigma_cur, cond)
    target_net = module.target if module.target is not None else module.student
    with torch.no_grad():
        out["target_forward"] = timed(lambda: target_net(x_cur, sigma_cur, cond), dev, now)
        out["student_forward"] = out["target_forward"] if module.target is None else \
            timed(lambda: module.student(x_next, sigma_next, cond), dev, now)

    def forward_backward():
        module.student(x_next, sigma_next, cond).square().mean().backward()

    out["student_forward_backward"] = timed(forward_backward, dev, now)
    for p in module.student.parameters():  # leave no gradient behind for the real step
        p.grad = None
    return out


class _TimedTeacher:
    """Wraps a target's `denoise` so that every teacher call is timed and counted into `out`."""

    def __init__(self, holder, out: dict, dev, now):
        self.holder, self.out, self.dev, self.now = holder, out, dev, now
        self.inner = getattr(holder, "denoise", None)

    def __call__(self, *args, **kwargs):
        sync(self.dev)
        start = self.now()
        result = self.inner(*args, **kwargs)
        sync(self.dev)
        self.out["teacher"] += self.now() - start
        self.out["teacher_calls"] += 1
        return result

    def __enter__(self):
        if self.inner is not None:
            self.holder.denoise = self
        return self

    def __exit__(self, *exc):
        if self.inner is not None:
            self.holder.denoise = self.inner


def time_continuous_passes(module, x0, cond, gen, step: int, now) -> dict[str, float]:
    """sCD/sCT's passes at the step's t: the teacher velocity, the student's JVP (in place of a target network's
    forward), the student's forward, and its forward + backward."""
    from distill.math.trigflow import t_of_sigma, time_derivative, trigflow_F

    dev, student, objective = module.device, module.student, module.objective
    sigma = module.plan.pairs.sample(step, x0.shape[0], gen).to(x0.dtype)
    t = t_of_sigma(sigma, student.sigma_data)
    z = torch.randn(x0.shape, generator=gen, device=dev, dtype=x0.dtype) * student.sigma_data
    x_t = expand_like(t.cos(), x0) * x0 + expand_like(t.sin(), x0) * z
    out = {"teacher": 0.0, "teacher_calls": 0}
    with _TimedTeacher(objective.velocity, out, dev, now):
        dxdt = objective.velocity(x0, z, x_t, t, cond)
    out["target_forward"] = 0.0  # no target network: the stop-gradient student's JVP takes its place
    out["jvp"] = timed(lambda: time_derivative(student, x_t, t, dxdt, cond), dev, now)
    with torch.no_grad():
        out["student_forward"] = timed(lambda: trigflow_F(student, x_t, t, cond), dev, now)
    out["student_forward_backward"] = timed(lambda: trigflow_F(student, x_t, t, cond).square().mean().backward(),
                                            dev, now)
    for p in student.parameters():  # leave no gradient behind for the real step
        p.grad = None
    return out


def step_config(spec: dict, key: str, run_dir: Path, max_steps: int, extra: dict | None = None):
    from distill.config import merge_blocks, to_config

    data = {
        "run": {"dir": str(run_dir), "seed": 0},
        "trainer": {"max_steps": max_steps, "accelerator": "cpu", "devices": 1,
                    "enable_progress_bar": False},
        "data": {"name": spec["data"], "batch_size": spec["batch"]},
        "student": {"network": dict(spec["network"])},
        # FID during training is an evaluation every n steps, not part of a step (and its set-up
        # may train the digits feature network).
        "eval": {"fid": False},
    }
    data = merge_blocks(data, METHODS[key])
    return to_config(merge_blocks(data, extra or {}))


def bench_method(spec: dict, key: str, repeats: int, warmup: int, extra: dict | None = None,
                 clock: str = "auto") -> tuple[dict, dict]:
    from distill.data import DistillDataModule
    from distill.training.fit import build_trainer, prepare_teacher_and_student

    with tempfile.TemporaryDirectory(prefix="distill-bench-") as tmp:
        probe_steps = warmup + 2 * repeats + 2
        cfg = step_config(spec, key, Path(tmp), probe_steps, extra)
        # As `distill fit` builds them, so recipe switches (student.compile, ...) apply.
        teacher, module = prepare_teacher_and_student(cfg, {}, build_teacher(spec))
        data = DistillDataModule(cfg, teacher)
        data_s = time_data(data, clock_for(torch.device("cpu"), clock), repeats)
        trainer = build_trainer(cfg, Path(tmp))
        probe = StepProbe(warmup, repeats, clock_for(torch.device("cpu") if cfg.trainer.accelerator == "cpu"
                                                     else torch.device("cuda"), clock))
        trainer.callbacks.append(probe)
        try:
            trainer.fit(module, datamodule=data)
        except _Done:
            pass
    passes = {k: median(p[k] for p in probe.passes) for k in probe.passes[0]}
    # The median of per-probe sums, not the sum of per-pass medians: on a loaded machine a long interval
    # always absorbs some preemption while a short pass's median does not, which would bias the ratio.
    passes_s = median(p["teacher"] + p["target_forward"] + p.get("jvp", 0.0) + p["student_forward_backward"]
                      for p in probe.passes)
    step_s = median(probe.step_times())
    return {"step_s": step_s, "passes_s": passes_s, "overhead_ratio": step_s / passes_s,
            "forward_units": step_s / passes["student_forward"]}, {**passes, "data": data_s}


def time_data(data, now, repeats: int) -> float:
    """One batch from the training dataloader, alone (it is also inside every timed step)."""
    batches = iter(data.train_dataloader())
    next(batches)
    return median(timed(lambda: next(batches), torch.device("cpu"), now) for _ in range(max(5, repeats)))


def describe(size: str, key: str, r: dict, passes: dict) -> str:
    """One line per method: the step against its passes, each pass alone."""
    second = (f"student JVP {passes['jvp'] * 1e3:.2f} ms ({passes['jvp'] / passes['student_forward']:.2f} forwards)"
              if "jvp" in passes else f"target forward {passes['target_forward'] * 1e3:.2f} ms")
    return (f"[{size}] {key}: step {r['step_s'] * 1e3:.2f} ms, passes {r['passes_s'] * 1e3:.2f} ms, "
            f"overhead x{r['overhead_ratio']:.3f}, {r['forward_units']:.2f} forward units; "
            f"alone: teacher {passes['teacher'] * 1e3:.2f} ms ({passes['teacher_calls']:.0f} calls), {second}, "
            f"student forward+backward {passes['student_forward_backward'] * 1e3:.2f} ms; a data batch "
            f"{passes['data'] * 1e3:.3f} ms ({passes['data'] / r['step_s']:.2%} of the step)")


def run_step(sizes=("demo",), methods=tuple(METHODS), repeats: int = 10, warmup: int = 3,
             extra: dict | None = None, threads: int | None = 1, clock: str = "auto",
             log=say) -> tuple[dict, dict]:
    """{size: {method: {step_s, passes_s, overhead_ratio, forward_units}}} and the pass breakdown.

    One intra-op thread by default: with two or more, OpenMP threads that wait on a descheduled peer
    spin, and a shared machine's load shows up as a 2-5x slower, erratic step (measured).
    """
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    previous_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    result, detail = {}, {}
    try:
        for size in sizes:
            spec = size_spec(size)
            for key in methods:
                r, passes = bench_method(spec, key, repeats, warmup, extra, clock)
                result.setdefault(size, {})[key] = r
                detail.setdefault(size, {})[key] = passes
                log(describe(size, key, r, passes))
    finally:
        torch.set_num_threads(previous_threads)
    return result, detail
