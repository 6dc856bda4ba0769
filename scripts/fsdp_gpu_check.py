"""GPU check for the large-student switches: trainer.strategy=fsdp, bf16-mixed, student.checkpointing.

Run on a machine with CUDA (no download needed; about 2-4 minutes):
    .venv/bin/python scripts/fsdp_gpu_check.py --out runs/fsdp_check.json

1. `distill fit recipes/demo.yaml` with strategy=fsdp and with strategy=ddp (same devices, bf16-mixed,
   activation checkpointing on): both must finish; their final online weights are compared (bf16
   rounding: reported, loose bound); the checkpoint keys must match DDP's, with no teacher key.
2. The FSDP export (student.safetensors) must load and give finite samples.
3. Peak GPU memory of one student forward/backward with and without activation checkpointing.
Writes a JSON record and exits 1 if a check fails (2 without CUDA).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
COMMON = ["trainer.accelerator=gpu", "trainer.precision=bf16-mixed", "trainer.max_steps=60",
          "trainer.enable_progress_bar=false", "checkpoint.every_n_steps=30", "eval.fid=false",
          "student.checkpointing=true", "data.batch_size=64"]


def fit(run_dir: Path, strategy: str, devices: int) -> dict:
    cmd = [sys.executable, "-m", "distill", "fit", str(ROOT / "recipes" / "demo.yaml"), f"run.dir={run_dir}",
           f"trainer.strategy={strategy}", f"trainer.devices={devices}", *COMMON]
    start = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=dict(os.environ))
    out = {"returncode": proc.returncode, "seconds": round(time.time() - start, 1),
           "stderr_tail": proc.stderr[-2000:]}
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    if proc.returncode == 0 and ckpt.is_file():
        out["state"] = torch.load(ckpt, map_location="cpu", weights_only=True)
    return out


def peak_memory(checkpointing: bool) -> float:
    """MiB for one bf16 forward/backward of a SmallUNet (3x64x64, width 64, batch 32)."""
    from distill.training.scaling import checkpoint_blocks
    from teachers.networks import build_network

    net = build_network("small_unet", in_channels=3, width=64, channel_mult=[1, 2, 2], num_blocks=2).cuda()
    if checkpointing:
        checkpoint_blocks(net)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    x = torch.randn(32, 3, 64, 64, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        net(x, torch.zeros(32, device="cuda")).float().square().mean().backward()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2**20


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/fsdp_check.json")
    parser.add_argument("--devices", type=int, default=0, help="GPUs to use (default: all, at most 2)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("fsdp_gpu_check: no CUDA device here; run this on a GPU machine", file=sys.stderr)
        return 2
    devices = args.devices or min(2, torch.cuda.device_count())
    record: dict = {"gpu": torch.cuda.get_device_name(0), "devices": devices, "torch": torch.__version__}
    checks: dict[str, bool] = {}
    with tempfile.TemporaryDirectory() as tmp:
        runs = {s: fit(Path(tmp) / s, s, devices) for s in ("fsdp", "ddp")}
        for s, r in runs.items():
            record[s] = {k: v for k, v in r.items() if k != "state"}
            checks[f"{s}_finished"] = r["returncode"] == 0 and "state" in r
        if all(checks.values()):
            a, b = runs["fsdp"]["state"]["state_dict"], runs["ddp"]["state"]["state_dict"]
            checks["same_keys_as_ddp"] = sorted(a) == sorted(b)
            checks["no_teacher_keys"] = not any("teacher" in k for k in a)
            diff = max((a[k].float() - b[k].float()).abs().max().item() for k in b if k in a)
            record["fsdp_vs_ddp_max_abs_weight_diff"] = diff
            checks["fsdp_close_to_ddp"] = diff < 5e-2  # bf16-mixed, 60 steps: rounding, not divergence
            from distill.export import load_student

            student = load_student(Path(tmp) / "fsdp" / "student.safetensors", device="cuda")
            with torch.no_grad():
                x = student(torch.randn(16, *student.image_shape, device="cuda") * student.sigma_max,
                            student.sigma_max)
            checks["export_loads_and_samples"] = bool(torch.isfinite(x).all())
    mem = {"off": peak_memory(False), "on": peak_memory(True)}
    record["peak_memory_mib"] = mem
    checks["checkpointing_saves_memory"] = mem["on"] < mem["off"]
    record["checks"] = checks
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps({"checks": checks, "peak_memory_mib": mem,
                      "fsdp_vs_ddp": record.get("fsdp_vs_ddp_max_abs_weight_diff")}, indent=2))
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
