"""`make bench-gpu`: distil a CIFAR-10-size DDPM++ student from a random DDPM++ teacher on one CUDA GPU.

A real Lightning Trainer runs the real module and `distill fit`'s callbacks in bf16-mixed precision for a
few hundred steps (Heun CD, batch 128 by default); the steps after warm-up are timed between two device
syncs (none in between), and the script reports samples/s, model FLOP utilisation and peak memory.

Model FLOPs (FACTS.md): one DDPM++ CIFAR-10 forward is 42.4 GFLOP per image; a Heun CD step is about
6 forward-equivalents (2 teacher evaluations, the target forward, the student forward and backward),
254 GFLOP per sample. MFU = samples/s x 254 GFLOP / the card's dense bf16 peak (--peak-tflops).

    python scripts/bench_gpu.py [--steps 300] [--batch 128] [--compile] [--json runs/bench/gpu.json]

Without a CUDA device it exits 2 and says so; `--smoke` instead runs the same code path on the CPU at
the tiny benchmark size for a few steps (a check that the script works; its numbers mean nothing).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

GFLOP_PER_FORWARD = 42.4  # DDPM++ CIFAR-10, per image (FACTS.md)
FORWARDS_PER_HEUN_CD_SAMPLE = 254.0 / GFLOP_PER_FORWARD  # ~6: 2 teacher + target + forward and backward
# Dense (no sparsity) bf16 tensor-core peaks from the vendors' data sheets, TFLOP/s.
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100 SXM": 989.0, "H100 80GB HBM3": 989.0, "H100 PCIe": 756.0,
                    "H100 NVL": 835.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10": 125.0,
                    "RTX 4090": 165.0, "RTX 3090": 71.0}


def peak_tflops(name: str) -> float | None:
    for key, value in PEAK_BF16_TFLOPS.items():
        if key in name:
            return value
    return None


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=300, help="timed optimizer steps")
    p.add_argument("--warmup", type=int, default=20, help="untimed first steps (allocator, cuDNN autotune)")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--method", default="heun_cd", choices=("heun_cd", "euler_cd", "ct"))
    p.add_argument("--precision", default="bf16-mixed")
    p.add_argument("--compile", action="store_true", help="student.compile=true")
    p.add_argument("--teacher-fp32", action="store_true",
                   help="keep the teacher out of autocast (default: it runs in bf16 as the student does)")
    p.add_argument("--peak-tflops", type=float, default=None, help="the card's dense bf16 peak, TFLOP/s")
    p.add_argument("--max-minutes", type=float, default=7.0, help="stop timing early past this wall time")
    p.add_argument("--json", default="runs/bench/gpu.json")
    p.add_argument("--smoke", action="store_true", help="CPU, tiny size, 3 steps: checks the code path only")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    if not args.smoke and not torch.cuda.is_available():
        print("bench-gpu: no CUDA device is visible (torch.cuda.is_available() is False). This benchmark "
              "needs one NVIDIA GPU; run it on a GPU machine (`make bench-gpu`), or pass --smoke to check "
              "the code path on the CPU.", file=sys.stderr)
        return 2
    import lightning as L

    from distill.bench.common import SIZES, build_teacher, say
    from distill.bench.step import _Done, step_config
    from distill.data import DistillDataModule
    from distill.training.fit import build_trainer, prepare_teacher_and_student

    size = "tiny" if args.smoke else "cifar10"
    spec = dict(SIZES[size], batch=4 if args.smoke else args.batch)
    steps, warmup = (3, 1) if args.smoke else (args.steps, args.warmup)
    extra = {"trainer": {"accelerator": "cpu" if args.smoke else "gpu", "precision": args.precision,
                         "log_every_n_steps": 50},
             # float32 targets: a float64 Heun step runs at a fraction of a GPU's speed.
             "method": {"target_dtype": "float32"},
             "student": {"compile": bool(args.compile)}}
    if not args.smoke:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest convolutions
    start_wall = time.perf_counter()

    class Window(L.Callback):
        """Device-syncs only at the window's two ends, so the steps in between queue freely."""

        def __init__(self):
            self.t0 = self.t1 = None
            self.timed = 0

        def _sync(self):
            if torch.cuda.is_available() and not args.smoke:
                torch.cuda.synchronize()
            return time.perf_counter()

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            step = trainer.global_step
            if step == warmup:
                if not args.smoke:
                    torch.cuda.reset_peak_memory_stats()
                self.t0 = self._sync()
            elif step > warmup and (step == warmup + steps or
                                    (step % 10 == 0 and time.perf_counter() - start_wall > 60 * args.max_minutes)):
                self.t1, self.timed = self._sync(), step - warmup
                raise _Done

    import tempfile

    with tempfile.TemporaryDirectory(prefix="distill-bench-gpu-") as tmp:
        cfg = step_config(spec, args.method, Path(tmp), warmup + steps + 2, extra)
        teacher_spec = {} if args.teacher_fp32 else {"autocast": True}
        teacher, module = prepare_teacher_and_student(cfg, teacher_spec, build_teacher(spec))
        data = DistillDataModule(cfg, teacher)
        trainer = build_trainer(cfg, Path(tmp))
        window = Window()
        trainer.callbacks.append(window)
        try:
            trainer.fit(module, datamodule=data)
        except _Done:
            pass
    elapsed = window.t1 - window.t0
    samples_s = spec["batch"] * window.timed / elapsed
    result = {"device": "cpu (smoke)" if args.smoke else torch.cuda.get_device_name(),
              "method": args.method, "precision": args.precision, "batch": spec["batch"],
              "compile": bool(args.compile), "teacher_autocast": not args.teacher_fp32,
              "timed_steps": window.timed, "step_s": elapsed / window.timed, "samples_per_s": samples_s}
    if not args.smoke:
        forwards = FORWARDS_PER_HEUN_CD_SAMPLE if args.method == "heun_cd" else \
            {"euler_cd": 5.0, "ct": 4.0}[args.method]  # 1 teacher evaluation fewer; none for CT
        achieved = samples_s * forwards * GFLOP_PER_FORWARD / 1e3  # TFLOP/s
        peak = args.peak_tflops or peak_tflops(result["device"])
        result.update({"model_tflops": achieved, "peak_bf16_tflops": peak,
                       "mfu": achieved / peak if peak else None,
                       "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30})
    say(json.dumps(result, indent=2))
    if args.json and not args.smoke:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(f"{result['device']}: {samples_s:.1f} samples/s" +
          (f", MFU {result['mfu']:.1%}" if result.get("mfu") else "") +
          (f", peak memory {result['peak_memory_gib']:.1f} GiB" if "peak_memory_gib" in result else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
