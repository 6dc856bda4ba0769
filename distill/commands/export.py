"""distill export PATH --diffusers OUT: a trained student as files other tools load (DESIGN.md, "Command line")."""

from __future__ import annotations


def add_parser(sub, name):
    p = sub.add_parser(name, help="export a student for other tools (diffusers)",
                       description="Export the student in PATH (a run directory, student.safetensors or .ckpt). "
                                   "--diffusers OUT: a latent consistency student (method lcm) as a UNet folder "
                                   "or LoRA weights plus its LCMScheduler, which stock diffusers pipelines load.")
    p.add_argument("path", help="run directory, student.safetensors or .ckpt")
    fmt = p.add_mutually_exclusive_group(required=True)
    fmt.add_argument("--diffusers", metavar="OUT", help="folder to write (new or empty)")
    return p


def run(args) -> int:
    from distill.cli import BadInput
    from distill.export import load_student
    from distill.export_diffusers import NotExportable, export_diffusers

    student = load_student(args.path)
    try:
        out = export_diffusers(student, args.diffusers)
    except (NotExportable, FileExistsError) as err:
        raise BadInput(str(err)) from None
    print(f"wrote {out} (see {out}/README.md for the lines that load it)")
    return 0
