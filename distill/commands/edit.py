"""distill edit PATH --task inpaint|colorize|superres|stroke|denoise|interpolate --input IMG [--mask M]
[--sigma S] [--seeds a,b] [--steps N | --sigmas ...] --out OUT

PNG in, PNG out (DESIGN.md, "Images and tensors"): pixels map linearly from [0, 255] to [-1, 1]; mask
white (255) = known and kept, black = to fill. Size, channel and mask mismatches exit 2 (BadInput).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from distill.editing import TASKS

NEEDS_INPUT = ("inpaint", "colorize", "superres", "stroke", "denoise")


def add_parser(sub, name):
    p = sub.add_parser(name, help="edit images zero-shot with a trained student (CM paper, Alg. 4)",
                       description="inpaint: --input and --mask (white = known) at the student's size. "
                                   "colorize: a grey --input (RGB students). superres: the low-resolution "
                                   "--input; the output has the student's size. stroke: a stroke painting. "
                                   "denoise: a noisy --input and its --sigma. interpolate: --seeds a,b, "
                                   "writes a strip of --num images.")
    p.add_argument("path", help="run directory, student.safetensors or .ckpt")
    p.add_argument("--task", required=True, choices=TASKS)
    p.add_argument("--input", help="PNG to edit (all tasks but interpolate)")
    p.add_argument("--mask", help="inpaint: PNG of the student's size, white = known, black = fill")
    p.add_argument("--sigma", type=float, help="denoise: noise level of --input (required); stroke: start sigma")
    p.add_argument("--seeds", help="interpolate: two seeds a,b")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--steps", type=int, help="number of student evaluations (the task's default schedule)")
    g.add_argument("--sigmas", help="comma-separated sigmas at which the student is evaluated")
    p.add_argument("--num", type=int, default=None,
                   help="outputs: edits of the same input with seeds S..S+num-1 (default 1), or images "
                        "along the interpolation (default 8)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--class", dest="cls", type=int, default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", required=True, help=".png (one image or a strip) or a folder of PNGs")
    return p


def read_png(path: str, what: str):
    """PNG -> float tensor (C, H, W) in [-1, 1]: 'L' gives C = 1, RGB gives C = 3 (alpha dropped)."""
    import torch

    from distill.cli import BadInput
    from distill.data.images import UndecodableImage, open_image

    if not Path(path).is_file():
        raise BadInput(f"{what} {path}: no such file")
    try:
        img = open_image(path)
        img.load()
    except UndecodableImage as err:
        raise BadInput(f"{what} {path}: {err}") from None
    except Exception as err:  # noqa: BLE001 - corrupt data: OSError, SyntaxError, EOFError, struct.error...
        raise BadInput(f"{what} {path}: not a readable image ({type(err).__name__}: {err})") from None
    grey = img.mode in ("1", "L", "LA", "I", "F") or img.mode.startswith("I;")
    arr = np.asarray(img.convert("L"))[..., None] if grey else np.asarray(img.convert("RGB"))
    return torch.from_numpy(arr.astype(np.float32) / 127.5 - 1.0).permute(2, 0, 1)


def _check_image(x, shape, what: str, path: str):
    from distill.cli import BadInput

    c, h, w = shape
    if tuple(x.shape[1:]) != (h, w):
        raise BadInput(f"{what} {path} is {x.shape[2]}x{x.shape[1]} pixels, but this student works at "
                       f"{w}x{h}; resize it first")
    if x.shape[0] != c:
        kind = {1: "grey", 3: "RGB"}
        raise BadInput(f"{what} {path} is {kind.get(x.shape[0], x.shape[0])}, but this student makes "
                       f"{kind.get(c, f'{c}-channel')} images; convert it first")


def _grey(x, path: str):
    """colorize input: one channel, or RGB whose three channels are equal."""
    from distill.cli import BadInput

    if x.shape[0] == 3 and bool((x[0] == x[1]).all() and (x[1] == x[2]).all()):
        x = x[:1]
    if x.shape[0] != 1:
        raise BadInput(f"colorize takes a grey image; {path} has colour (convert it to greyscale, mode 'L')")
    return x


def build_inputs(args, student):
    """The task's tensors from the PNG files, with the checks that make bad input exit 2."""
    from distill.cli import BadInput

    c, h, w = student.image_shape
    task = args.task
    if task in NEEDS_INPUT and not args.input:
        raise BadInput(f"--task {task} needs --input IMG")
    if args.mask and task != "inpaint":
        raise BadInput("--mask is for --task inpaint only")
    if args.seeds and task != "interpolate":
        raise BadInput("--seeds a,b is for --task interpolate only; use --seed S for the other tasks")
    if task == "interpolate":
        try:
            seeds = [int(v) for v in (args.seeds or "").split(",")]
        except ValueError:
            seeds = []
        if len(seeds) != 2:
            raise BadInput(f"--task interpolate needs --seeds a,b (two integers), got {args.seeds!r}")
        return {"seeds": seeds}
    x = read_png(args.input, "--input")
    if task == "colorize":
        if c != 3:
            raise BadInput(f"colorize needs an RGB student; this one makes {c}-channel images")
        x = _grey(x, args.input)
        _check_image(x, (1, h, w), "--input", args.input)
    elif task == "superres":
        lh, lw = x.shape[1:]
        if h % lh or w % lw or h // lh != w // lw or h // lh < 2:
            raise BadInput(f"superres takes the low-resolution image: {args.input} is {lw}x{lh}, which "
                           f"is not {w}x{h} divided by one integer factor >= 2 (e.g. {w // 2}x{h // 2})")
        if x.shape[0] != c:
            _check_image(x, (c, lh, lw), "--input", args.input)
    else:
        _check_image(x, (c, h, w), "--input", args.input)
    out = {"x": x[None]}
    if task == "inpaint":
        if not args.mask:
            raise BadInput("--task inpaint needs --mask M (white = known, black = to fill)")
        m = read_png(args.mask, "--mask")
        if tuple(m.shape[1:]) != (h, w):
            raise BadInput(f"--mask {args.mask} is {m.shape[2]}x{m.shape[1]}, but --input is {w}x{h}; "
                           "the mask must have the image's size")
        if m.shape[0] not in (1, c):
            raise BadInput(f"--mask {args.mask} has {m.shape[0]} channels; give a grey mask (or one "
                           f"per channel of the {c}-channel image)")
        known = m > 0  # pixel >= 128 counts as white (known)
        if bool(known.all()):
            raise BadInput(f"--mask {args.mask} is all white (everything known): nothing to inpaint")
        out["mask"] = known.expand(c, h, w)[None]
    if task == "denoise" and args.sigma is None:
        raise BadInput("--task denoise needs --sigma S, the noise level of --input (in [-1, 1] pixel units)")
    return out


def run(args) -> int:
    from distill import editing
    from distill.cli import BadInput
    from distill.commands.sample import parse_floats, write_images, write_png
    from distill.evaluation.figures import save_grid
    from distill.export import load_student

    student = load_student(args.path, device=args.device)
    if len(student.image_shape) != 3:
        raise BadInput("this student makes vectors, not images; use the Python API (distill.load_student)")
    if args.cls is not None and not (0 <= args.cls < max(student.num_classes, 0)):
        raise BadInput(f"--class {args.cls}: this student has {student.num_classes} classes"
                       if student.num_classes else "--class given, but this student is unconditional")
    inputs = build_inputs(args, student)
    num = args.num if args.num is not None else (8 if args.task == "interpolate" else 1)
    if num < 1:
        raise BadInput("--num must be positive")
    kw = {"cls": args.cls}
    try:
        kw["sigmas"] = parse_floats(args.sigmas, "--sigmas") if args.sigmas else \
            editing.edit_sigmas(student, args.task, args.steps, args.sigma)
        if args.task == "denoise" and kw["sigmas"][0] != args.sigma:
            raise BadInput(f"denoise starts at the input's noise level: --sigmas must begin with --sigma "
                           f"{args.sigma:g}, got {args.sigmas}")
        if args.task == "interpolate":
            a, b = inputs["seeds"]
            x = editing.interpolate(student, a, b, num, **kw)
        else:
            fn = getattr(editing, args.task)
            rep = {k: v.expand(num, *v.shape[1:]) for k, v in inputs.items()}  # seeds S..S+num-1
            extra = {"sigma": args.sigma} if args.task == "denoise" else {}
            args_ = (rep["x"], rep["mask"]) if args.task == "inpaint" else (rep["x"],)
            x = fn(student, *args_, seed=args.seed, **extra, **kw)
    except ValueError as err:
        raise BadInput(str(err)) from None
    out = Path(args.out)
    if out.suffix == ".png" and len(x) > 1:
        out.parent.mkdir(parents=True, exist_ok=True)
        save_grid(x, out, cols=len(x))  # a strip
    elif out.suffix == ".png":
        out.parent.mkdir(parents=True, exist_ok=True)
        write_png(x[0], out)  # the image alone, no border: it can be fed back in
    else:
        write_images(x, out)
    print(f"{args.task}: wrote {len(x)} image(s) ({len(kw['sigmas'])} step(s), sigmas "
          f"{[round(s, 4) for s in kw['sigmas']]}) to {out}")
    return 0
