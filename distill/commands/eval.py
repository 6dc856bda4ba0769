"""distill eval PATH [--steps 1,2,4] [--teacher-nfe 1,3,5,9,17,35] [--num 1000] [--ref FILE] --out report.json

Also: --features auto|inception|digits|pixel|package.module:attr, --inception FILE (the FID network's
weights, never downloaded), --search-sigmas (find the 2- and 3-step sampling sigmas that minimise FID
first, and store them in student.json as the defaults of `distill sample --steps 2/3`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path


def add_parser(sub, name):
    p = sub.add_parser(name, help="FID/trajectory report of a student against its teacher",
                       description="Writes report.json (DESIGN.md shape), prints it as a table, and writes "
                                   "fid_vs_nfe.png and a side-by-side picture (true samples, teacher, "
                                   "student) beside it.")
    p.add_argument("path", help="run directory, student.safetensors or .ckpt")
    p.add_argument("--steps", default="1,2,4", help="student steps, comma-separated")
    p.add_argument("--teacher-nfe", default="1,3,5,9,17,35", help="odd NFE of the teacher's Heun sampler")
    p.add_argument("--num", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ref", default=None, help="reference statistics .npz (mu, sigma; EDM and ADM layouts "
                                               "read); default: exact samples of an analytic teacher")
    p.add_argument("--features", default=None, help="auto (default; or the recipe's eval.features), "
                                                    "inception, digits, pixel or package.module:attr")
    p.add_argument("--inception", default=None, metavar="FILE",
                   help="pt_inception-2015-12-05-6726825d.pth (pytorch-fid's plain state dict)")
    p.add_argument("--search-sigmas", action="store_true",
                   help="search the 2- and 3-step sigmas minimising FID and write them into student.json")
    p.add_argument("--search-num", type=int, default=500, help="samples per candidate in --search-sigmas")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--out", required=True)
    return p


def parse_ints(text: str, what: str) -> list[int]:
    from distill.cli import BadInput

    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise BadInput(f"{what} must be comma-separated integers, got {text!r}") from None


def student_json_path(path: Path) -> Path:
    from distill.cli import BadInput

    meta = path / "student.json" if path.is_dir() else path.with_suffix(".json")
    if path.suffix == ".ckpt" or not meta.is_file():
        raise BadInput(f"{path}: --search-sigmas stores its result in student.json; give a run directory or "
                       "a student.safetensors with student.json beside it")
    return meta


def build_features(args, student):
    """(extractor, reference stats or None), failing early (exit 2) on a missing file or a bad choice."""
    from distill.cli import BadInput
    from distill.evaluation.metrics.extractors import build_extractor
    from distill.evaluation.metrics.frechet import gaussian_stats
    from distill.evaluation.metrics.reference import check_compatible, load_stats

    recipe_eval = (student.meta.get("recipe") or {}).get("eval") or {}
    inception = args.inception or recipe_eval.get("inception_path")
    choice = args.features or ("inception" if args.inception else recipe_eval.get("features") or "auto")
    try:
        extractor = build_extractor(choice, student.image_shape, inception)
        ref_path = args.ref or recipe_eval.get("ref")
        ref = load_stats(ref_path) if ref_path else None
        if ref is not None and ref.mu is None:  # an image array: statistics in our feature space
            ref.mu, ref.sigma = gaussian_stats(extractor(ref.images))
            ref.pixel = gaussian_stats(ref.images.flatten(1))
        if ref is not None:
            check_compatible(ref, extractor.name, int(ref.mu.shape[0]), ref_path)
    except ValueError as err:
        raise BadInput(str(err)) from None
    return extractor, ref


def search(args, student, extractor, ref, teacher, ref_images) -> dict:
    from distill.evaluation.metrics.frechet import gaussian_stats
    from distill.evaluation.schedule_search import fid_objective, search_sigmas
    from distill.export import update_sampling_sigmas

    meta_path = student_json_path(Path(args.path))
    mu, sigma = (ref.mu, ref.sigma) if ref is not None else gaussian_stats(extractor(ref_images))
    t0 = time.perf_counter()
    found = search_sigmas(student, fid_objective(student, extractor, mu, sigma, args.search_num,
                                                 seed=args.seed + 10**6, batch_size=args.batch_size),
                          current=student.sampling_sigmas)
    record = {"features": extractor.name, "num": args.search_num, "fid": found["fid"],
              "evaluations": found["evaluations"], "seconds": round(time.perf_counter() - t0, 2)}
    update_sampling_sigmas(meta_path, {"2": found["2"], "3": found["3"]}, record)
    student.sampling_sigmas = dict(student.sampling_sigmas or {}, **{"2": found["2"], "3": found["3"]})
    print(f"schedule search ({found['evaluations']} candidates, {record['seconds']} s, {args.search_num} "
          f"samples each): 2 steps {[round(s, 4) for s in found['2']]} (FID {found['fid']['2']:.4f}), "
          f"3 steps {[round(s, 4) for s in found['3']]} (FID {found['fid']['3']:.4f}); stored in {meta_path}")
    return found


def reference(teacher, spec: dict, args, ref_stats) -> tuple:
    """(reference images or None, their description): exact samples of an analytic teacher, else the data a
    trained teacher recorded in its teacher.json (distill train-teacher). --ref's statistics, when given,
    replace these images' statistics for the FID (report.json's "reference" then names them)."""
    from distill.cli import BadInput
    from distill.evaluation.teacher_quality import reference_images

    try:
        found = reference_images(teacher, args.num, args.seed)
    except ValueError as err:  # the recorded data could not be read back as it was trained on
        raise BadInput(f"the teacher's recorded training data: {err}; give --ref FILE instead") from None
    if found is None and ref_stats is None:
        raise BadInput(f"the {spec.get('name', 'teacher')} teacher cannot draw exact samples and records no "
                       "in-memory training data (teacher.json's `data`); give reference statistics with "
                       "--ref FILE (.npz with mu and sigma)")
    return found if found is not None else (None, "")


def run(args) -> int:
    import teachers
    from distill.cli import BadInput
    from distill.evaluation.evaluate import format_table, generate, plot_fid_vs_nfe, report
    from distill.evaluation.figures import save_comparison
    from distill.export import load_student

    steps = parse_ints(args.steps, "--steps")
    nfes = parse_ints(args.teacher_nfe, "--teacher-nfe")
    even = [n for n in nfes if n < 1 or n % 2 == 0]
    if even:
        raise BadInput(f"--teacher-nfe {even}: the EDM Heun sampler has only odd NFE (2 * steps - 1)")
    if args.num < 2 or any(k < 1 for k in steps):
        raise BadInput("--num must be at least 2 and --steps positive")
    student = load_student(args.path)
    extractor, ref_stats = build_features(args, student)  # before any long work: bad input exits 2 now
    spec = student.meta["teacher"]["spec"]
    teacher = teachers.load(spec)
    ref, name = reference(teacher, spec, args, ref_stats)
    if args.search_sigmas:
        search(args, student, extractor, ref_stats, teacher, ref)
    t0 = time.perf_counter()
    samples = generate(student, teacher, steps=steps, teacher_nfe=nfes, num=args.num, seed=args.seed,
                       batch_size=args.batch_size)
    rep = report(samples, ref, name, extractor=extractor, ref_stats=ref_stats)
    seconds = time.perf_counter() - t0
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rep, indent=2) + "\n")
    print(format_table(rep))
    plot = plot_fid_vs_nfe(rep, out.with_name("fid_vs_nfe.png"))
    panels = {"true samples": ref[:64]} if ref is not None else {}
    if nfes:
        nfe = 35 if 35 in nfes else max(nfes)
        panels[f"teacher Heun, {nfe} NFE"] = samples["teacher"][nfe][:64]
    for k in steps[:2]:
        panels[f"student, {k} step{'s' if k > 1 else ''}"] = samples["student"][k][:64]
    save_comparison(panels, out.with_name("comparison.png"), title="same noise in every panel but the first")
    print(f"wrote {out}, {plot} and {out.with_name('comparison.png')} "
          f"(sampling and metrics: {seconds:.1f} s)")
    return 0
