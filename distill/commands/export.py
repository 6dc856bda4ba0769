"""distill export PATH --onnx OUT.onnx | --diffusers OUT: the trained student in the formats other tools run.

Each format is one entry of FORMATS (its flag, what it writes, and the `module:function` that writes it
from the loaded student), so another format is one more entry and one more flag; several flags in one
call write several files from one load.
"""

from __future__ import annotations

import importlib
from pathlib import Path

# flag -> (metavar, help, writer "module:function" taking (student, out) and returning a summary dict)
FORMATS = {
    "onnx": ("OUT.onnx", "one-step generator graph: unit-Gaussian noise (B, C, H, W) [+ int64 labels (B,) for a "
             "class-conditional student] -> images in [-1, 1]; dynamic batch; checked in onnxruntime",
             "distill.export.onnx:export_onnx"),
    "diffusers": ("OUT", "a latent consistency student (method lcm) as a UNet folder or LoRA weights plus its "
                  "LCMScheduler, which stock diffusers pipelines load (a new or empty folder)",
                  "distill.export.diffusers:write_diffusers"),
}


def add_parser(sub, name):
    p = sub.add_parser(name, help="export a trained student for other runtimes (ONNX, diffusers)",
                       description="Writes each format named by a flag. PATH is a run directory, a "
                                   "student.safetensors (student.json beside it) or a .ckpt.")
    p.add_argument("path", help="run directory, student.safetensors or .ckpt")
    for flag, (metavar, help_text, _) in FORMATS.items():
        p.add_argument(f"--{flag}", metavar=metavar, help=help_text)
    return p


def writer(flag: str):
    module, function = FORMATS[flag][2].split(":")
    return getattr(importlib.import_module(module), function)


def run(args) -> int:
    from distill.cli import BadInput
    from distill.export import load_student

    chosen = {flag: Path(getattr(args, flag)) for flag in FORMATS if getattr(args, flag, None)}
    if not chosen:
        raise BadInput("name a format to write: " + ", ".join(f"--{f} {FORMATS[f][0]}" for f in FORMATS))
    student = load_student(args.path)
    for flag, out in chosen.items():
        try:
            summary = writer(flag)(student, out)
        except (ImportError, ValueError, FileExistsError) as err:
            # an optional package the format needs (the message names pip), a student the format cannot hold,
            # an output folder in the way
            raise BadInput(str(err)) from None
        print(f"wrote {summary.pop('path')} ({flag}): " + ", ".join(f"{k} {v}" for k, v in summary.items()))
    return 0
