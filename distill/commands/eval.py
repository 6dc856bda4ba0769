"""distill eval PATH [--steps 1,2,4] [--teacher-nfe 1,3,5,9,17,35] [--num 1000] [--ref FILE] --out report.json"""

from __future__ import annotations

import json
from pathlib import Path


def add_parser(sub, name):
    p = sub.add_parser(name, help="FID/trajectory report of a student against its teacher",
                       description="Writes report.json (DESIGN.md shape), prints it as a table, and writes a "
                                   "side-by-side picture (true samples, teacher, student) beside it.")
    p.add_argument("path", help="run directory, student.safetensors or .ckpt")
    p.add_argument("--steps", default="1,2", help="student steps, comma-separated")
    p.add_argument("--teacher-nfe", default="1,3,5,9,17,35", help="odd NFE of the teacher's Heun sampler")
    p.add_argument("--num", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ref", default=None, help="reference statistics .npz (default: exact teacher samples)")
    p.add_argument("--out", required=True)
    return p


def parse_ints(text: str, what: str) -> list[int]:
    from distill.cli import BadInput

    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise BadInput(f"{what} must be comma-separated integers, got {text!r}") from None


def run(args) -> int:
    import teachers
    from distill.cli import BadInput
    from distill.evaluate import format_table, generate, report, true_samples
    from distill.export import load_student
    from distill.figures import save_comparison

    steps = parse_ints(args.steps, "--steps")
    nfes = parse_ints(args.teacher_nfe, "--teacher-nfe")
    even = [n for n in nfes if n < 1 or n % 2 == 0]
    if even:
        raise BadInput(f"--teacher-nfe {even}: the EDM Heun sampler has only odd NFE (2 * steps - 1)")
    student = load_student(args.path)
    spec = student.meta["teacher"]["spec"]
    teacher = teachers.load(spec)
    samples = generate(student, teacher, steps=steps, teacher_nfe=nfes, num=args.num, seed=args.seed)
    ref = true_samples(teacher, max(args.num, 1000), args.seed)
    rep = report(samples, ref, f"{ref.shape[0]} exact samples of the {spec.get('name', 'teacher')} teacher")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rep, indent=2) + "\n")
    print(format_table(rep))
    panels = {"true samples": ref[:64]}
    if 35 in samples["teacher"] or nfes:
        nfe = 35 if 35 in nfes else max(nfes)
        panels[f"teacher Heun, {nfe} NFE"] = samples["teacher"][nfe][:64]
    for k in steps[:2]:
        panels[f"student, {k} step{'s' if k > 1 else ''}"] = samples["student"][k][:64]
    save_comparison(panels, out.with_name("comparison.png"), title="same noise in every panel but the first")
    print(f"wrote {out} and {out.with_name('comparison.png')}")
    return 0
