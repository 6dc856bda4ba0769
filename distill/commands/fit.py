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
                   help="check the recipe and print it resolved; creates nothing")
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


def run(args) -> int:
    from distill.config import resolve, to_plain
    from distill.training.fit import fit, plan_run_dir

    cfg = resolve(args.recipe, args.overrides)
    plain = to_plain(cfg)
    missing = [] if cfg.run.smoke else missing_files(plain)
    if args.dry_run:
        print(yaml.safe_dump(plain, sort_keys=False), end="")
        for m in missing:
            print(f"warning: {m} does not exist yet", file=sys.stderr)
        return 0
    if missing:
        raise FileNotFoundError("; ".join(f"{m} does not exist" for m in missing) +
                                " (fix the path in the recipe or override it on the command line)")
    from distill.training.callbacks.nan_guard import NonFiniteLossError
    from distill.training.callbacks.preemption import Preempted

    plan_run_dir(cfg)
    try:
        run_dir = fit(cfg)
    except Preempted as stop:
        # Exit 0 once SLURM has the job back in its queue; otherwise 1, so a supervisor sees "not done".
        print(f"distill fit: {stop}", file=sys.stderr)
        return 0 if stop.requeued else 1
    except NonFiniteLossError as err:
        print(f"distill fit: error: {err}", file=sys.stderr)
        return 1
    print(f"run directory: {run_dir}")
    return 0
