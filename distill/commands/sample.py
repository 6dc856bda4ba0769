"""distill sample PATH (--steps N | --sigmas 80,0.8) --num N --seed S [--batch-size B] [--class C] [--scale K]
--out OUT"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def add_parser(sub, name):
    p = sub.add_parser(name, help="sample images from a trained student",
                       description="Sample i uses seed S+i whatever the batch size. OUT ending in .png is a "
                                   "grid, in .npz an array as FID tools read it (uint8 NHWC RGB under 'arr_0'), "
                                   "anything else a folder of PNGs.")
    p.add_argument("path", help="run directory, student.safetensors or .ckpt")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--steps", type=int, default=1, help="1, 2 or 3: the student's default sigmas")
    g.add_argument("--sigmas", type=str, help="comma-separated sigmas, the first being sigma_max")
    p.add_argument("--num", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--class", dest="cls", type=int, default=None)
    p.add_argument("--scale", type=int, default=1,
                   help="enlarge PNG output K times, nearest neighbour (an 8x8 digit is hard to see)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", required=True)
    return p


def parse_floats(text: str, what: str) -> list[float]:
    from distill.cli import BadInput

    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise BadInput(f"{what} must be comma-separated numbers, got {text!r}") from None


def save_png(img: np.ndarray, path: Path, scale: int = 1) -> None:
    """uint8 (H, W, C) -> a PNG ('L' for one channel, else RGB), each pixel repeated `scale` times each way."""
    from PIL import Image

    img = img.repeat(scale, axis=0).repeat(scale, axis=1)
    Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(path)


def write_png(x, path: Path, scale: int = 1) -> None:
    """One image (C, H, W) in [-1, 1] -> a PNG of its size times `scale`."""
    from distill.evaluation.figures import to_uint8

    save_png(to_uint8(x[None])[0], path, scale)


def write_images(x, out: Path, scale: int = 1) -> None:
    """.png: a grid; .npz: uint8 (N, H, W, 3) under 'arr_0' (grey repeated to RGB), the layout of
    OpenAI's evaluator, clean-fid and torch-fidelity; anything else: a folder 000000.png, ...
    PNGs are enlarged `scale` times (nearest neighbour); the .npz keeps the native size FID tools expect."""
    from distill.evaluation.figures import tile, to_uint8

    if out.suffix == ".png":
        out.parent.mkdir(parents=True, exist_ok=True)
        save_png(tile(x), out, scale)
    elif out.suffix == ".npz":
        out.parent.mkdir(parents=True, exist_ok=True)
        arr = to_uint8(x)
        np.savez(out, arr_0=np.repeat(arr, 3, axis=-1) if arr.shape[-1] == 1 else arr)
    else:
        out.mkdir(parents=True, exist_ok=True)
        for i in range(len(x)):
            write_png(x[i], out / f"{i:06d}.png", scale)


def run(args) -> int:
    from distill.cli import BadInput
    from distill.export import load_student
    from distill.sampling import default_sigmas, sample

    student = load_student(args.path, device=args.device)
    if student.boundary is not None:  # LCM students: text-conditional latents, decoded by the teacher's VAE
        raise BadInput("this is a latent consistency (LCM) student: sample it through diffusers after "
                       "`distill export PATH --diffusers OUT` (docs/lcm.md), or report it with `distill eval PATH "
                       "--captions FOLDER`")
    if len(student.image_shape) != 3:
        raise BadInput("this student makes vectors, not images; use the Python API (distill.load_student)")
    if args.num < 1 or args.batch_size < 1:
        raise BadInput("--num and --batch-size must be positive")
    out = Path(args.out)
    if out.suffix not in (".png", ".npz", "") and not out.is_dir():
        raise BadInput(f"--out {out}: give a .png (grid), a .npz (for FID tools) or a folder name")
    if args.scale < 1 or (args.scale > 1 and out.suffix == ".npz"):
        raise BadInput(f"--scale {args.scale}: a positive integer, for PNG output only (a .npz keeps the "
                       "native size FID tools expect)")
    if args.cls is not None and not (0 <= args.cls < max(student.num_classes, 0)):
        raise BadInput(f"--class {args.cls}: this student has {student.num_classes} classes"
                       if student.num_classes else "--class given, but this student is unconditional")
    try:
        sigmas = parse_floats(args.sigmas, "--sigmas") if args.sigmas else default_sigmas(student, args.steps)
        x = sample(student, args.num, sigmas, seed=args.seed, batch_size=args.batch_size, cls=args.cls,
                   progress=True)
    except ValueError as err:
        raise BadInput(str(err)) from None
    write_images(x, out, args.scale)
    print(f"wrote {args.num} samples ({len(sigmas)} step(s), sigmas {sigmas}) to {args.out}")
    return 0
