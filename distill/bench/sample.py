"""`distill bench sample`: one student step against the teacher's 35-NFE Heun sampler, same backbone.

DESIGN.md, "Measuring": the 1-step student and the 35-NFE EDM Heun sampler of a teacher with the same
network, same batch (64), same process; the ideal speedup is 35 (the number of network evaluations).
Both run through the code users run (`distill.sampling.consistency_sample`, `distill.math.solvers.edm_sampler`)
on the same noise, timed alternately so that a change in the machine's speed hits both.

Deployment latency (CPU): the 1-step generator at batch 1 in PyTorch (`OneStepGenerator`, what
`distill export --onnx` exports) against the exported graph in onnxruntime with as many intra-op threads,
timed alternately: `torch_batch1_s` and `onnx_batch1_s`, medians over repeats of CALLS calls each.
"""

from __future__ import annotations

import logging

import torch

from distill.bench.common import NetworkTeacher, clock_for, median, say, size_spec, timed

TEACHER_NFE = 35
CALLS = 20  # batch-1 calls per timed repeat: one call of the demo student is well under a millisecond


def build_pair(spec: dict):
    """A random-weight teacher around the size's network and a student that starts as its copy."""
    from distill.config import to_config
    from distill.training.student import build_student

    teacher = NetworkTeacher(spec["network"], spec["image_shape"])
    cfg = to_config({"student": {"init": "teacher"}})
    return teacher, build_student(cfg, teacher).eval().requires_grad_(False)


def batch1_latency(student, repeats: int, now, log=say) -> dict:
    """{"torch_batch1_s", "onnx_batch1_s", "onnx_speedup"}: one image from noise, PyTorch vs onnxruntime (CPU)."""
    import tempfile
    from pathlib import Path

    from distill.export.onnx import OneStepGenerator, example_inputs, export_onnx, run_session, session

    student = student.to("cpu")
    generator = OneStepGenerator(student).eval()
    feeds = example_inputs(student, 1)
    with tempfile.TemporaryDirectory(prefix="distill-bench-onnx-") as tmp:
        export_onnx(student, Path(tmp) / "student.onnx")
        sess = session(Path(tmp) / "student.onnx", threads=torch.get_num_threads())

        def run_torch():
            with torch.no_grad():
                for _ in range(CALLS):
                    generator(*feeds.values())

        def run_onnx():
            for _ in range(CALLS):
                run_session(sess, feeds)

        run_torch(), run_onnx()  # warm-up
        cpu = torch.device("cpu")
        times = {"torch": [], "onnx": []}
        for _ in range(repeats):
            times["torch"].append(timed(run_torch, cpu, now) / CALLS)
            times["onnx"].append(timed(run_onnx, cpu, now) / CALLS)
    torch_s, onnx_s = median(times["torch"]), median(times["onnx"])
    log(f"batch 1 on the CPU: PyTorch {torch_s * 1e3:.3f} ms, onnxruntime {onnx_s * 1e3:.3f} ms "
        f"(x{torch_s / onnx_s:.2f})")
    return {"torch_batch1_s": torch_s, "onnx_batch1_s": onnx_s, "onnx_speedup": torch_s / onnx_s}


def run_sample(size: str = "demo", batch: int = 64, repeats: int = 5, threads: int | None = 1,
               clock: str = "auto", device: str = "cpu", onnx: bool = True, log=say) -> dict:
    """{"student_s", "teacher_s", "speedup"}: medians over `repeats` alternating runs; with `onnx`, also
    the batch-1 CPU latencies of `batch1_latency`."""
    from distill.math.solvers import edm_sampler, teacher_sigmas
    from distill.sampling import consistency_sample

    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    previous_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        dev = torch.device(device)
        now = clock_for(dev, clock)
        teacher, student = build_pair(size_spec(size))
        teacher.to(dev)
        student.to(dev)
        noise = torch.randn((batch, *teacher.image_shape), generator=torch.Generator().manual_seed(0)).to(dev)
        sigmas = teacher_sigmas(TEACHER_NFE, teacher.sigma_min, teacher.sigma_max,
                                round_sigma=teacher.round_sigma)

        def run_student():
            consistency_sample(student, [noise], [student.sigma_max])

        def run_teacher():
            edm_sampler(teacher.denoise, noise, sigmas, round_sigma=teacher.round_sigma)

        run_student(), run_teacher()  # warm-up: first-call allocations and kernel selection
        times = {"student": [], "teacher": []}
        for _ in range(repeats):
            times["student"].append(timed(run_student, dev, now))
            times["teacher"].append(timed(run_teacher, dev, now))
        student_s, teacher_s = median(times["student"]), median(times["teacher"])
        result = {"student_s": student_s, "teacher_s": teacher_s, "speedup": teacher_s / student_s}
        log(f"[{size}] batch {batch}: 1-step student {student_s * 1e3:.2f} ms, {TEACHER_NFE}-NFE Heun teacher "
            f"{teacher_s * 1e3:.2f} ms, speedup x{result['speedup']:.2f} (ideal {TEACHER_NFE})")
        if onnx:
            result.update(batch1_latency(student, repeats, clock_for(torch.device("cpu"), clock), log))
    finally:
        torch.set_num_threads(previous_threads)
    return result
