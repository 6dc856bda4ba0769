"""distill eval PATH [--steps 1,2,4] [--teacher-nfe 1,3,5,9,17,35] [--num 1000] [--ref FILE] --out report.json
distill eval --images FOLDER (--ref FILE | --ref-images FOLDER) [--out fid.json]

Also: --features auto|inception|digits|pixel|package.module:attr, --inception FILE (the FID network's
weights, never downloaded), --search-sigmas (find the 2- and 3-step sampling sigmas that minimise FID
first, and store them in student.json as the defaults of `distill sample --steps 2/3`), --teacher SPEC.
--images: FID of any image folder by clean-fid's "clean" protocol (docs/evaluation.md).

What student.json (or the .ckpt) records is data: its teacher is rebuilt from registered names only and its
eval.features only if built in. Code it names (teacher.target, eval.features 'package.module:attr') runs
only when the user says so on this command line (--teacher, --features).
Text-to-image students (method lcm): --captions FOLDER [--clip DIR] [--guidance W]: FID against the folder's
images and CLIP score against its captions, student and guided teacher (distill/evaluation/text2image.py).
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
    p.add_argument("path", nargs="?", help="run directory, student.safetensors or .ckpt")
    p.add_argument("--images", metavar="FOLDER", help="instead of PATH: FID of this image folder (clean-fid "
                                                     "protocol) against --ref or --ref-images")
    p.add_argument("--ref-images", metavar="FOLDER", help="with --images: the reference image folder")
    p.add_argument("--steps", default="1,2,4", help="student steps, comma-separated")
    p.add_argument("--teacher-nfe", default=None, help="odd NFE of the teacher's Heun sampler "
                                                       "(default 1,3,5,9,17,35; 49 with --captions)")
    p.add_argument("--num", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ref", default=None, help="reference statistics .npz (mu, sigma; EDM and ADM layouts "
                                               "read); default: exact samples of an analytic teacher")
    p.add_argument("--features", default=None, help="auto (default; or the recipe's eval.features), "
                                                    "inception, digits, pixel or package.module:attr")
    p.add_argument("--teacher", default=None, metavar="SPEC",
                   help="the teacher to compare with, instead of the one student.json records: a recipe or "
                        "YAML file (its teacher: block) or an inline mapping such as "
                        "'{target: mypkg.teachers:make, width: 64}'. Needed for a teacher of your own code: "
                        "a file's metadata is never imported")
    p.add_argument("--inception", default=None, metavar="FILE",
                   help="weights-inception-2015-12-05-6726825d.pth (torch-fidelity's plain state dict, read "
                        "weights-only; default: the torch hub cache)")
    p.add_argument("--search-sigmas", action="store_true",
                   help="search the 2- and 3-step sigmas minimising FID and write them into student.json")
    p.add_argument("--search-num", type=int, default=500, help="samples per candidate in --search-sigmas")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--captions", default=None, metavar="FOLDER",
                   help="text-to-image: images with .txt captions; FID against them, CLIP score against the texts")
    p.add_argument("--clip", default=None, metavar="DIR", help="local CLIP folder for the CLIP score (--captions)")
    p.add_argument("--guidance", type=float, default=None,
                   help="guidance scale of the teacher (and of students with a guidance embedding); default: the "
                        "teacher's, or the middle of its training range")
    p.add_argument("--out", help="report.json (required with PATH)")
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
    from distill.evaluation.metrics.reference import check_compatible, load_stats

    recipe_eval = (student.meta.get("recipe") or {}).get("eval") or {}
    inception = args.inception or recipe_eval.get("inception_path")
    recorded = recipe_eval.get("features")
    if args.features is None and not args.inception and isinstance(recorded, str) and ":" in recorded:
        raise BadInput(f"{args.path}: its recipe records eval.features {recorded!r}, code named by a file, which "
                       f"is never imported from one; if you trust it, pass --features {recorded}")
    choice = args.features or ("inception" if args.inception else recorded or "auto")
    try:
        extractor = build_extractor(choice, student.image_shape, inception)
        ref_path = args.ref or recipe_eval.get("ref")
        ref = load_stats(ref_path) if ref_path else None
        shape = tuple(student.image_shape)
        if ref is not None and ref.images is not None and tuple(ref.images.shape[1:]) != shape:
            raise ValueError(f"{ref_path}: images of shape {tuple(ref.images.shape[1:])}, the student makes {shape}")
        if ref is not None:  # an image array's images become the reference side (evaluate.report)
            check_compatible(ref, extractor.name, extractor.num_features, ref_path)
    except ValueError as err:
        raise BadInput(str(err)) from None
    return extractor, ref


def load_teacher(args, student):
    """The teacher given by --teacher (code the user chose), else the one the file records (data only)."""
    import teachers
    from distill.cli import BadInput
    from teachers.registry import load_recorded

    if args.teacher is None:
        recorded = student.meta.get("teacher")
        spec = recorded.get("spec") if isinstance(recorded, dict) else None
        how = (f"pass it yourself: distill eval {args.path} --teacher RECIPE.yaml (or an inline mapping such as "
               "'{target: package.module:factory, ...}')")
        return spec, load_recorded(spec, args.path, how)
    spec = teacher_block(args.teacher)
    if not isinstance(spec, dict) or not spec:
        raise BadInput(f"--teacher {args.teacher!r}: expected a recipe or YAML file with a teacher: block, or a "
                       "mapping such as '{name: edm, path: net.pkl}'")
    return spec, teachers.load(spec)


def teacher_block(text: str):
    """--teacher: a YAML file (a recipe's teacher: block, `base:` chain and ${...} resolved) or inline YAML."""
    import yaml
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from distill.cli import BadInput
    from distill.config import load_yaml_chain

    if Path(text).expanduser().is_file() or text.endswith((".yaml", ".yml")):
        data = load_yaml_chain(Path(text).expanduser())  # a missing file is a ConfigError (exit 2)
    else:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise BadInput(f"--teacher: neither a file nor a YAML mapping ({err})") from None
    if not isinstance(data, dict):
        return data
    try:
        cfg = OmegaConf.create(data)
        return OmegaConf.to_container(cfg.teacher if isinstance(data.get("teacher"), dict) else cfg, resolve=True)
    except OmegaConfBaseException as err:
        raise BadInput(f"--teacher: {str(err).splitlines()[0]}") from None


def search(args, student, extractor, ref, teacher, ref_images) -> dict:
    from distill.evaluation.metrics.fid import add, frechet_metric, set_reference_stats
    from distill.evaluation.schedule_search import fid_objective, search_sigmas
    from distill.export import update_sampling_sigmas

    meta_path = student_json_path(Path(args.path))
    metric = frechet_metric(extractor.module)
    if ref is not None and ref.mu is not None:
        set_reference_stats(metric, ref.mu, ref.sigma)
    else:
        add(metric, ref.images if ref is not None else ref_images, real=True, batch_size=args.batch_size)
    t0 = time.perf_counter()
    found = search_sigmas(student, fid_objective(student, metric, args.search_num, seed=args.seed + 10**6,
                                                 batch_size=args.batch_size),
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
        found = reference_images(teacher, max(args.num, 1000), args.seed)  # a reference of at least 1,000
    except ValueError as err:  # the recorded data could not be read back as it was trained on
        raise BadInput(f"the teacher's recorded training data: {err}; give --ref FILE instead") from None
    if found is None and ref_stats is None:
        raise BadInput(f"the {spec.get('name', 'teacher')} teacher cannot draw exact samples and records no "
                       "in-memory training data (teacher.json's `data`); give reference statistics with "
                       "--ref FILE (.npz with mu and sigma)")
    return found if found is not None else (None, "")


def run(args) -> int:
    from distill.cli import BadInput
    from distill.commands.eval_images import run_images
    from distill.evaluation.evaluate import format_table, generate, plot_fid_vs_nfe, report
    from distill.evaluation.figures import save_comparison
    from distill.export import load_student

    if args.images or args.ref_images:
        return run_images(args)
    if not args.path or not args.out:
        raise BadInput("distill eval needs PATH and --out report.json (or --images FOLDER for a folder's FID)")

    steps = parse_ints(args.steps, "--steps")
    nfes = parse_ints(args.teacher_nfe or ("49" if args.captions else "1,3,5,9,17,35"), "--teacher-nfe")
    even = [n for n in nfes if n < 1 or n % 2 == 0]
    if even:
        raise BadInput(f"--teacher-nfe {even}: the EDM Heun sampler has only odd NFE (2 * steps - 1)")
    if args.num < 2 or any(k < 1 for k in steps):
        raise BadInput("--num must be at least 2 and --steps positive")
    student = load_student(args.path)
    if args.captions:
        return run_captions(args, student, steps, nfes)
    extractor, ref_stats = build_features(args, student)  # before any long work: bad input exits 2 now
    spec, teacher = load_teacher(args, student)
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


def run_captions(args, student, steps, nfes) -> int:
    """--captions: the text-to-image report (student rows at `steps`, guided teacher rows at `nfes`)."""
    from distill.cli import BadInput
    from distill.data.captions import load_caption_folder
    from distill.evaluation.clip_score import load_clip
    from distill.evaluation.metrics.extractors import build_extractor
    from distill.evaluation.text2image import generate_text2image, text2image_report

    missing = [k for k in steps if str(k) not in (student.sampling_sigmas or {})]
    if getattr(student, "boundary", None) is None or missing:
        raise BadInput(f"--captions evaluates latent consistency students (method lcm) at 1-8 steps; this student "
                       f"has no sampling sigmas for steps {missing or steps}")
    spec, teacher = load_teacher(args, student)  # registered names only from the file, or --teacher
    images, captions, _ = load_caption_folder(args.captions, teacher.data_shape)
    images, captions = images[:args.num], captions.texts[:args.num]
    scale = spec.get("scale", 1.0)
    w = args.guidance if args.guidance is not None else \
        (float(scale) if isinstance(scale, int | float) else sum(map(float, scale)) / 2)
    try:
        extractor = build_extractor(args.features or ("inception" if args.inception else "pixel"),
                                    tuple(images.shape[1:]), args.inception)
    except ValueError as err:
        raise BadInput(str(err)) from None
    clip = load_clip(args.clip) if args.clip else None
    t0 = time.perf_counter()
    samples = generate_text2image(student, teacher, captions, steps=steps, teacher_nfe=nfes, w=w, seed=args.seed,
                                  batch_size=min(args.batch_size, 16))
    rep = dict(text2image_report(samples, images, captions, extractor=extractor, clip=clip), guidance=w)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rep, indent=2) + "\n")
    for row in ("student", "teacher"):
        for key, entry in rep[row].items():
            unit = "steps" if row == "student" else "NFE"
            print(f"{row:8s} {key:>3s} {unit:5s} " + "  ".join(f"{k} {v:.4f}" for k, v in entry.items()))
    print(f"wrote {out} ({len(captions)} captions, guidance {w:g}, {time.perf_counter() - t0:.1f} s)")
    return 0
