"""distill fit RECIPE [key=value ...] [--dry-run]"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml


def add_parser(sub, name):
    p = sub.add_parser(name, help="train a student from a recipe",
                       description="Train a consistency student as RECIPE says. An existing run directory "
                                   "with the same config resumes from checkpoints/last.ckpt.")
    p.add_argument("recipe", help="recipe YAML (see recipes/)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. trainer.max_steps=200")
    p.add_argument("--dry-run", action="store_true",
                   help="check the recipe, build and call the teacher once, read the data source, say whether "
                        "run.dir would start, resume or conflict, and print the resolved recipe; creates nothing")
    return p


# Recipe keys that name files a run reads (weights, data, feature networks, statistics).
FILE_KEYS = (("teacher", "path"), ("data", "path"), ("loss", "lpips_backbone_path"), ("loss", "lpips_heads_path"),
             ("eval", "inception_path"), ("eval", "ref"))


def missing_files(plain: dict, keys=FILE_KEYS) -> list[str]:
    """Paths named in the recipe (at `keys`) that do not exist yet. URLs, `pipe:` commands and brace patterns
    (webdataset shards) are not checked here; their loaders report them."""
    found = []
    for block, key in keys:
        value = (plain.get(block) or {}).get(key)
        if value and not any(ch in str(value) for ch in "{}:") and not Path(value).exists():
            found.append(f"{block}.{key}: {value}")
    return found


def describe_run_dir(cfg) -> str:
    """What a real run would do with run.dir (ConfigError when it would conflict)."""
    from distill.training.fit import plan_run_dir

    run_dir, resume = plan_run_dir(cfg)
    if resume is not None:
        return f"run.dir {run_dir}: would resume from {resume}"
    if (run_dir / "config.yaml").is_file():
        return f"run.dir {run_dir}: holds a run that never saved a checkpoint; would start over"
    return f"run.dir {run_dir}: would start a new run ({'an empty directory' if run_dir.exists() else 'not there yet'})"


def dry_run(cfg, missing: list[str]) -> list[str]:
    """The checks a real run makes before creating anything, as far as the files exist (DESIGN.md: missing
    files are warnings in a dry run). Returns one line per check; bad input raises."""
    import torch

    import teachers
    from distill.config import ConfigError, to_plain
    from distill.training.fit import prepare, prepare_teacher_and_student
    from distill.training.loggers import check_available
    from distill.training.preflight import check_data, probe_teacher, target_dtype
    from teachers.registry import TeacherSpecError

    check_available(cfg.log.loggers)
    lines = [describe_run_dir(cfg)]
    if any(m.startswith("teacher.") for m in missing):
        return lines + ["teacher: not built (its file does not exist yet)"]
    spec = to_plain(cfg)["teacher"]
    try:
        if not missing:  # everything a real run reads is there: its own checks, in its order
            _, resume, step, teacher, module, _ = prepare(cfg)
            lines[0] += f" (step {step})" if resume is not None else ""
        else:
            teacher = teachers.load({k: v for k, v in spec.items() if k != "autocast"})
            # Without the loss's own files (LPIPS) the module cannot be built.
            module = None if any(m.startswith("loss.") for m in missing) else \
                prepare_teacher_and_student(cfg, spec, teacher)[1]
        dtype = target_dtype(module) if module is not None else getattr(torch, cfg.method.target_dtype)
        lines.append(f"teacher: {getattr(teacher, 'describe', lambda: type(teacher).__name__)()}; "
                     f"{probe_teacher(teacher, dtype, spec)}")
        if not any(m.startswith("data.") for m in missing):
            lines.append(f"data: {check_data(cfg, teacher)}")
    except (TeacherSpecError, ConfigError):
        raise
    except (ValueError, KeyError) as err:  # a recipe that names things that do not fit together
        raise ConfigError(str(err).strip("'\"")) from err
    if module is not None:
        params = sum(p.numel() for p in module.student.parameters())
        lines.append(f"student: {module.student.net.build_spec.get('name', '?')}, {params:,} parameters")
    return lines


def worker_message(err: BaseException) -> str:
    """A DataLoader worker's exception comes back with the worker's traceback in its text: keep the message."""
    text = str(err)
    marker = f"{type(err).__name__}: "
    return text[text.rindex(marker) + len(marker):].strip() if "Original Traceback" in text and marker in text \
        else text


def run(args) -> int:
    from distill.cli import BadInput
    from distill.config import resolve, to_plain
    from distill.data.corrupt import CorruptSampleError
    from distill.training.fit import fit

    cfg = resolve(args.recipe, args.overrides)
    plain = to_plain(cfg)
    missing = [] if cfg.run.smoke else missing_files(plain)
    if args.dry_run:
        for m in missing:
            print(f"warning: {m} does not exist yet", file=sys.stderr)
        checks = dry_run(cfg, missing)
        print(yaml.safe_dump(plain, sort_keys=False), end="")
        print("".join(f"# check: {line}\n" for line in checks), end="")
        return 0
    if missing:
        raise FileNotFoundError("; ".join(f"{m} does not exist" for m in missing) +
                                " (fix the path in the recipe or override it on the command line)")
    from distill.training.callbacks.nan_guard import NonFiniteLossError
    from distill.training.callbacks.preemption import Interrupted, Preempted

    try:
        run_dir = fit(cfg)
    except Preempted as stop:
        # Exit 0 once SLURM has the job back in its queue; otherwise 1, so a supervisor sees "not done".
        print(f"distill fit: {stop}", file=sys.stderr)
        return 0 if stop.requeued else 1
    except (NonFiniteLossError, Interrupted) as err:
        print(f"distill fit: error: {err}", file=sys.stderr)
        return 1
    except CorruptSampleError as err:  # also from a DataLoader worker, with its traceback in the text
        raise BadInput(worker_message(err)) from None
    print(f"run directory: {run_dir}")
    return 0
