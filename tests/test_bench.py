"""`distill bench step|sample` write DESIGN.md's JSON shapes; `bench threads` and `bench quality` check their
input. Shapes only: speed goals live in the benchmarks (docs/benchmarks.md), never in timed tests."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys

import pytest
import torch

from distill.bench.common import clock_for
from distill.bench.step import StepProbe
from tests.conftest import ROOT

STEP_KEYS = {"step_s", "passes_s", "overhead_ratio", "forward_units"}


def positive(x) -> bool:
    return isinstance(x, float) and math.isfinite(x) and x > 0


def test_bench_step_json_shape(run_cli, tmp_path):
    out = tmp_path / "step.json"
    proc = run_cli("bench", "step", "--size", "tiny", "--repeats", "2", "--warmup", "1", "--json", out,
                   check=True)
    result = json.loads(out.read_text())
    assert json.loads(proc.stdout) == result  # stdout carries the JSON alone; progress goes to stderr
    assert set(result) == {"tiny"}
    assert set(result["tiny"]) == {"heun_cd", "euler_cd", "ct"}
    for entry in result["tiny"].values():
        assert set(entry) == STEP_KEYS and all(positive(v) for v in entry.values())
        assert math.isclose(entry["overhead_ratio"], entry["step_s"] / entry["passes_s"])
    assert "2 calls" in proc.stderr and "0 calls" in proc.stderr  # Heun CD's teacher calls, CT's none


def test_bench_sample_json_shape(run_cli, tmp_path):
    out = tmp_path / "sample.json"
    run_cli("bench", "sample", "--size", "tiny", "--batch", "4", "--repeats", "1", "--json", out, check=True)
    result = json.loads(out.read_text())
    assert set(result) >= {"student_s", "teacher_s", "speedup"}
    if importlib.util.find_spec("onnxruntime") and importlib.util.find_spec("onnxscript"):  # the onnx extra
        assert set(result) == {"student_s", "teacher_s", "speedup", "torch_batch1_s", "onnx_batch1_s", "onnx_speedup"}
        assert math.isclose(result["onnx_speedup"], result["torch_batch1_s"] / result["onnx_batch1_s"])
    assert all(positive(v) for v in result.values())
    assert math.isclose(result["speedup"], result["teacher_s"] / result["student_s"])


def test_bench_step_rejects_unknown_size(run_cli):
    proc = run_cli("bench", "step", "--size", "imagenet")
    assert proc.returncode == 2 and "--size" in proc.stderr


def test_probe_keeps_only_steps_without_a_probe_before_their_end():
    probe = StepProbe(warmup=2, repeats=2, now=None)
    probe.stamps = [0.0, 1.0, 2.0, 10.0, 11.0, 20.0, 21.0]  # probes ran before steps 3 and 5 started
    assert probe.step_times() == [1.0, 1.0]  # steps 3 and 5; steps 2 and 4 contain a probe


def test_cpu_benchmarks_read_process_time():
    import time

    assert clock_for(torch.device("cpu")) is time.process_time
    assert clock_for(torch.device("cpu"), "wall") is time.perf_counter


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without a GPU")
def test_bench_gpu_says_it_needs_a_gpu():
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_gpu.py")], capture_output=True,
                          text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 2 and "no CUDA device" in proc.stderr


@pytest.mark.slow  # a spin loop takes a core for the worker's lifetime: not on every `make test` of a shared CPU
def test_bench_threads_runs_a_worker_beside_a_busy_process(run_cli, tmp_path):
    out = tmp_path / "threads.json"
    run_cli("bench", "threads", "--size", "tiny", "--steps", "2", "--warmup", "1", "--busy", "1", "--threads",
            "auto", "--json", out, check=True)
    result = json.loads(out.read_text())
    entry = result["runs"]["busy1"]["auto"]
    assert result["steps"] == 2 and entry["threads"] >= 1 and entry["reason"].startswith("auto:")
    assert positive(entry["steps_per_s"]) and "ratio_to_idle" not in result  # no idle run to compare with


def test_bench_threads_ratios(monkeypatch):
    from distill.bench import threads as bench_threads

    rates = {(0, "auto"): 10.0, (0, "1"): 8.0, (1, "auto"): 7.0, (1, "1"): 6.0}
    state = {"busy": 0}
    monkeypatch.setattr(bench_threads, "_spinners", lambda k: state.update(busy=k) or [])
    monkeypatch.setattr(bench_threads, "_worker", lambda size, steps, warmup, setting: {
        "threads": 1, "reason": "test", "steps_per_s": rates[(state["busy"], setting)]})
    result = bench_threads.run_threads("tiny", 5, 1, busy=(0, 1), settings=("auto", "1"), log=lambda m: None)
    assert result["ratio_to_idle"] == {"busy1": {"auto": 0.7, "1": 0.75}}
    assert result["ratio_to_best_idle"] == {"busy1": {"auto": 0.7, "1": 0.6}}


def test_bench_threads_rejects_bad_settings(run_cli):
    proc = run_cli("bench", "threads", "--threads", "auto,zero")
    assert proc.returncode == 2 and "--threads" in proc.stderr


def test_bench_quality_overrides_reach_every_method_after_the_bench_settings():
    """Trailing key=value overrides apply to each method's recipe on top of the bench's pins (cosine lr)."""
    from pathlib import Path

    from distill.bench.quality import method_config

    cfg = method_config("ct", Path("unused"), 10, 0, ["method.mu_schedule=none", "optim.lr=1e-4"])
    assert cfg.method.mu_schedule == "none" and cfg.optim.lr == 1e-4
    assert cfg.optim.schedule == "cosine" and cfg.student.denoiser_fraction == 0.0  # the bench's own pins
    assert method_config("ct", Path("unused"), 10, 0).method.mu_schedule == "auto"


def test_bench_quality_rejects_a_bad_override_before_training(run_cli):
    proc = run_cli("bench", "quality", "--method", "cd,ct", "--steps", "2", "method.bogus=1", timeout=120)
    assert proc.returncode == 2 and "method.bogus" in proc.stderr
    assert "reference ODE" not in proc.stdout + proc.stderr  # failed before the expensive part began


def test_quality_sweep_steps_from_the_ode_endpoints():
    """`from_ode` starts one step at the teacher's ODE endpoints re-noised to s. With the exact digits denoiser as
    the "student", a step from s = 0.2 returns the endpoints themselves (training digits, each far from the
    others at that noise), so it scores what the endpoints score; from s = 10 it returns blurred posterior means."""
    import teachers
    from distill.bench.quality import SWEEP_SIGMAS, Evaluator

    teacher = teachers.load({"name": "digits"})

    class Denoiser(torch.nn.Module):
        sigma_min, sigma_max = teacher.sigma_min, teacher.sigma_max

        def __init__(self):
            super().__init__()
            self.unused = torch.nn.Parameter(torch.zeros(()))

        def forward(self, x, sigma, cond=None):
            return teacher.denoise(x.double(), torch.full((x.shape[0],), float(sigma), dtype=torch.float64)).float()

    evaluate = Evaluator(teacher, 64, 0)
    sweep = evaluate.sweep(Denoiser())
    assert len(sweep["from_ode"]) == len(SWEEP_SIGMAS)
    endpoints = evaluate.fid(evaluate.reference)
    assert sweep["from_ode"][0] == pytest.approx(endpoints, rel=0.02)
    assert sweep["from_ode"][-1] > 2 * endpoints


def test_quality_sweep_scores_a_perfect_students_two_steps():
    """`exact_second_step(s)` is a perfect consistency model's 2 steps [sigma_max, s]: the teacher's ODE from the
    exact endpoints re-noised to s. From s = 0.2 it returns to the same training digits (but for the odd sample
    with a near twin among them); from s = 10 to other ones, which are still training digits: a new draw of exact
    samples, the perfect student's only error."""
    import teachers
    from distill.bench.quality import Evaluator

    teacher = teachers.load({"name": "digits"})
    evaluate = Evaluator(teacher, 64, 0)

    def rms(a, b):
        return (a - b).flatten(1).square().mean(1).sqrt()

    near, far = evaluate.exact_second_step(0.2), evaluate.exact_second_step(10.0)
    assert (rms(near, evaluate.reference) < 0.01).float().mean() > 0.9
    assert (rms(far, evaluate.reference) > 0.3).float().mean() > 0.9
    for x in (near, far):  # RMS distance to the nearest training digit: sigma_min's noise and no more
        assert (torch.cdist(x.flatten(1), teacher.means.to(x.dtype)).min(1).values / x[0].numel() ** 0.5).max() < 0.01
