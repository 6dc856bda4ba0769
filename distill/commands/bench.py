"""distill bench step|sample|quality|threads [--json FILE]

step and sample time the training step and sampling (distill.bench.step, distill.bench.sample); quality
trains each consistency method on the digits benchmark for one budget and reports report.json per method
(distill.bench.quality); threads measures demo training throughput beside busy processes per thread setting
(distill.bench.threads). Benchmarks are measurements, not tests: see docs/benchmarks.md.
"""

from __future__ import annotations

import importlib
import sys


def add_parser(sub, name):
    p = sub.add_parser(name, help="benchmarks: training-step cost, sampling speedup, method quality",
                       description="Each prints its JSON (DESIGN.md shapes) and writes it to --json.")
    bench = p.add_subparsers(dest="bench", required=True, metavar="BENCH")
    q = bench.add_parser("step", help="training-step time against the network passes it needs",
                         description="Times a full training step as Lightning runs it and, in the same "
                                     "process, the step's network passes alone; medians over repeats.")
    q.add_argument("--size", default="demo", help="comma-separated: demo (the small conv UNet student, batch "
                   "32), demo_mlp (recipes/demo.yaml's MLP student, batch 32), cifar10 (DDPM++ student and "
                   "teacher, batch 2), tiny (tests)")
    q.add_argument("--methods", default="heun_cd,euler_cd,ct", help="comma-separated: heun_cd, euler_cd, ct, scd")
    q.add_argument("--repeats", type=int, default=None,
                   help="timed steps (and as many probes) per method (default: 30 demo/tiny, 3 cifar10)")
    q.add_argument("--warmup", type=int, default=None, help="untimed first steps (default: 3, 1 cifar10)")
    q.add_argument("--compile", action="store_true", help="student.compile=true (torch.compile in place)")
    _common(q)
    q.set_defaults(_bench="step")
    q = bench.add_parser("sample", help="1-step student against the 35-NFE teacher, same backbone",
                         description="The 1-step student and the 35-NFE EDM Heun sampler of a random-weight "
                                     "teacher with the same network, same batch, alternately timed.")
    q.add_argument("--size", default="demo", choices=("demo", "cifar10", "tiny"))
    q.add_argument("--batch", type=int, default=64)
    q.add_argument("--repeats", type=int, default=7)
    q.add_argument("--device", default="cpu", help="cpu or cuda")
    q.add_argument("--no-onnx", dest="onnx", action="store_false",
                   help="skip the batch-1 CPU latency of the ONNX export against PyTorch (needs onnx, onnxscript, "
                        "onnxruntime)")
    _common(q)
    q.set_defaults(_bench="sample")
    q = bench.add_parser("threads", help="demo training throughput idle and beside busy processes, per thread "
                         "setting", description="Each measurement is a fresh process that picks its threads as "
                         "`distill fit` does (DISTILL_NUM_THREADS=auto: distill/threads.py's policy; a number: "
                         "fixed); busy processes are single-threaded spin loops. Wall-clock steps/s.")
    q.add_argument("--size", default="demo", choices=("demo", "tiny"))
    q.add_argument("--steps", type=int, default=150, help="timed training steps per measurement")
    q.add_argument("--warmup", type=int, default=10, help="untimed first steps")
    q.add_argument("--busy", default="0,1", help="comma-separated numbers of busy processes (0: idle)")
    q.add_argument("--threads", default="auto,1,2", help="comma-separated settings: auto or a number")
    q.add_argument("--repeats", type=int, default=1, help="measurements per setting (median)")
    q.add_argument("--json", default=None)
    q.set_defaults(_bench="threads")
    q = bench.add_parser("quality", help="cd, ct, ict, ect, scd, sct on the digits benchmark, same budget each")
    q.add_argument("--method", default="cd,ct,ict,ect", help="comma-separated: cd, ct, ict, ect, scd, sct")
    q.add_argument("--teacher", default="exact", choices=("exact", "network"),
                   help="exact: the digits mixture; network: a digits teacher trained by recipes/digits_teacher.yaml "
                        "(cached under $DISTILL_CACHE/teachers), students copied from its backbone")
    q.add_argument("--sweep", action="store_true",
                   help="also the 2-step FID at 10 second sigmas log-spaced over [0.2, 10]")
    q.add_argument("--steps", type=int, default=None,
                   help="optimizer steps per method (default: 1500 exact; digits_edm_cd.yaml's with --teacher network)")
    q.add_argument("--ect-pretrain-steps", type=int, default=1000,
                   help="denoiser steps that make ECT's pretrained diffusion model")
    q.add_argument("--num", type=int, default=1000, help="samples per evaluation")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--threads", type=int, default=1, help="intra-op threads (1: steadiest on a shared CPU)")
    q.add_argument("--json", default=None)
    q.add_argument("overrides", nargs="*", metavar="key=value",
                   help="recipe overrides for every method, after the bench's own settings "
                        "(e.g. method.mu_schedule=none)")
    q.set_defaults(_bench="quality")
    return p


def _common(q) -> None:
    q.add_argument("--threads", type=int, default=1,
                   help="intra-op threads (1: steadiest on a shared CPU; 0: torch's default)")
    q.add_argument("--clock", default="auto", choices=("auto", "cpu", "wall"),
                   help="auto: this process's CPU time on the CPU (robust to other processes), wall on GPUs")
    q.add_argument("--json", default=None)


def _run_performance(args, mod):
    from distill.cli import BadInput

    if args._bench == "sample":
        if args.batch < 1 or args.repeats < 1:
            raise BadInput("--batch and --repeats must be positive")
        if args.onnx:
            from distill.export.onnx import OnnxUnavailable, require_onnx

            try:
                require_onnx()
            except OnnxUnavailable as err:
                raise BadInput(f"{err}; or pass --no-onnx") from None
        return mod.run_sample(args.size, batch=args.batch, repeats=args.repeats, threads=args.threads,
                              clock=args.clock, device=args.device, onnx=args.onnx)
    from distill.bench.common import SIZES

    sizes = [x.strip() for x in args.size.split(",") if x.strip()]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not sizes or any(x not in SIZES for x in sizes):
        raise BadInput(f"--size {args.size!r}: choose from {', '.join(SIZES)}")
    if not methods or any(m not in mod.METHODS for m in methods):
        raise BadInput(f"--methods {args.methods!r}: choose from {', '.join(mod.METHODS)}")
    result = {}
    for size in sizes:  # CIFAR-10-size steps take seconds each on a CPU: fewer repeats by default
        big = size == "cifar10"
        repeats = args.repeats or (3 if big else 30)
        warmup = args.warmup if args.warmup is not None else (1 if big else 3)
        if repeats < 1 or warmup < 0:
            raise BadInput("--repeats must be positive and --warmup not negative")
        extra = {"student": {"compile": True}} if args.compile else None
        result.update(mod.run_step((size,), methods, repeats=repeats, warmup=warmup, extra=extra,
                                   threads=args.threads, clock=args.clock)[0])
    return result


def _run_threads(args) -> int:
    from distill.bench.common import write_json
    from distill.bench.threads import run_threads
    from distill.cli import BadInput

    try:
        busy = [int(b) for b in args.busy.split(",") if b.strip()]
    except ValueError:
        raise BadInput(f"--busy {args.busy!r}: comma-separated numbers of busy processes, e.g. 0,1") from None
    settings = [t.strip() for t in args.threads.split(",") if t.strip()]
    if not busy or min(busy) < 0 or not settings or any(t != "auto" and not (t.isdigit() and int(t) > 0)
                                                        for t in settings):
        raise BadInput("--busy takes counts >= 0 and --threads 'auto' or positive numbers, e.g. --busy 0,1 "
                       "--threads auto,1,2")
    if args.steps < 1 or args.warmup < 1 or args.repeats < 1:
        raise BadInput("--steps, --warmup and --repeats must be positive")
    write_json(run_threads(args.size, args.steps, args.warmup, busy, settings, args.repeats), args.json)
    return 0


def run(args) -> int:
    from distill.cli import BadInput

    if args._bench == "quality":
        import torch

        try:
            from distill.bench.quality import METHOD_OVERRIDES, format_methods_table, run_quality
        except ModuleNotFoundError as err:
            if err.name != "distill.bench.quality":
                raise
            raise BadInput("`distill bench quality` is not available in this checkout "
                           "(distill/bench/quality.py is missing)") from None

        methods = [m.strip() for m in args.method.split(",") if m.strip()]
        unknown = [m for m in methods if m not in METHOD_OVERRIDES]
        if unknown or not methods:
            raise BadInput(f"--method {args.method!r}: choose from {', '.join(METHOD_OVERRIDES)}")
        if args.steps is not None and args.steps < 1:
            raise BadInput(f"--steps must be positive, got {args.steps}")
        if args.threads:
            torch.set_num_threads(args.threads)  # the line `distill` printed first was its own automatic choice
            plural = "s" if args.threads != 1 else ""
            print(f"distill: --threads {args.threads}: {args.threads} intra-op thread{plural}", file=sys.stderr,
                  flush=True)
        steps = args.steps if args.steps is not None or args.teacher == "network" else 1500
        result = run_quality(methods, args.json, steps=steps, ect_pretrain_steps=args.ect_pretrain_steps,
                             num=args.num, seed=args.seed, teacher=args.teacher, sweep=args.sweep,
                             extra=args.overrides)
        print(format_methods_table(result))
        return 0
    if args._bench == "threads":
        return _run_threads(args)
    # step and sample belong to the performance benchmarks (distill/bench/common.py and its siblings).
    module_name = {"step": "distill.bench.step", "sample": "distill.bench.sample"}[args._bench]
    try:
        mod = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name != module_name:
            raise
        raise BadInput(f"`distill bench {args._bench}` is not in this checkout yet ({module_name})") from None
    from distill.bench.common import write_json

    try:
        result = _run_performance(args, mod)
    except ValueError as err:  # e.g. a size whose network this checkout does not have
        raise BadInput(str(err)) from None
    write_json(result, args.json)
    return 0
