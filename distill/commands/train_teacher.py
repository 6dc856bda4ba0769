"""distill train-teacher RECIPE [key=value ...] [--dry-run]

EDM training (Karras et al. 2022) of a network from teachers/networks on any data source; writes
<run.dir>/teacher.safetensors + teacher.json (the EMA weights), which `teacher: {name: edm, path: ...}` loads.
"""

from __future__ import annotations

import sys

import yaml


def add_parser(sub, name):
    p = sub.add_parser(name, help="train a diffusion teacher (EDM) from a recipe",
                       description="Train a network as an EDM denoiser as RECIPE says (recipes/digits_teacher.yaml); "
                                   "writes teacher.safetensors + teacher.json. An existing run directory with "
                                   "the same config resumes from checkpoints/last.ckpt.")
    p.add_argument("recipe", help="teacher recipe YAML (see recipes/digits_teacher.yaml)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. trainer.max_steps=200")
    p.add_argument("--dry-run", action="store_true",
                   help="check the recipe, build the network, read the data and print the recipe resolved; "
                        "creates nothing")
    return p


# Recipe keys that name files a run reads.
FILE_KEYS = (("data", "path"), ("eval", "inception_path"), ("eval", "ref"))


def dry_run(cfg, plain: dict, missing: list[str]) -> int:
    import torch

    from distill.commands.fit import describe_run_dir
    from distill.config import ConfigError
    from distill.training.teacher_fit import prepare

    print(yaml.safe_dump(plain, sort_keys=False), end="")
    for m in missing:
        print(f"warning: {m} does not exist yet", file=sys.stderr)
    if not missing:  # build the network, read the data, denoise one small batch
        module, data = prepare(cfg)
        if data.streamed:
            print("data: streamed shards (not read by --dry-run)", file=sys.stderr)
        else:
            x = data.images[:2].float()
            cond = data.labels[:2] if module.spec.num_classes else None
            with torch.no_grad():
                out = module.feeding.denoise(module.net, x, torch.full((x.shape[0],), 1.0), cond)
            if out.shape != x.shape or not torch.isfinite(out).all():
                raise ConfigError(f"the network maps {tuple(x.shape)} to {tuple(out.shape)} (finite: "
                                  f"{bool(torch.isfinite(out).all())}); check model.network")
            print(f"data: {data.images.shape[0]} images of shape {tuple(data.images.shape[1:])}; network: "
                  f"{sum(p.numel() for p in module.net.parameters()):,} parameters", file=sys.stderr)
    try:
        print(describe_run_dir(cfg), file=sys.stderr)
    except ConfigError as err:
        print(f"warning: run.dir: a real run would stop: {err}", file=sys.stderr)
    return 0


def run(args) -> int:
    from distill.commands.fit import missing_files
    from distill.config import to_plain
    from distill.training.callbacks.nan_guard import NonFiniteLossError
    from distill.training.callbacks.preemption import Preempted
    from distill.training.fit import plan_run_dir
    from distill.training.teacher_fit import fit_teacher
    from distill.training.teacher_recipe import resolve_teacher_recipe

    cfg = resolve_teacher_recipe(args.recipe, args.overrides)
    plain = to_plain(cfg)
    missing = [] if cfg.run.smoke else missing_files(plain, FILE_KEYS)
    if args.dry_run:
        return dry_run(cfg, plain, missing)
    if missing:
        raise FileNotFoundError("; ".join(f"{m} does not exist" for m in missing) +
                                " (fix the path in the recipe or override it on the command line)")
    plan_run_dir(cfg)
    try:
        run_dir = fit_teacher(cfg)
    except Preempted as stop:
        print(f"distill train-teacher: {stop}", file=sys.stderr)
        return 0 if stop.requeued else 1
    except NonFiniteLossError as err:
        print(f"distill train-teacher: error: {err}", file=sys.stderr)
        return 1
    print(f"teacher: {run_dir / 'teacher.safetensors'} (use it as teacher: {{name: edm, path: "
          f"{run_dir / 'teacher.safetensors'}}})")
    return 0
