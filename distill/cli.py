"""`distill` command line. Each subcommand lives in distill/commands/<name>.py with `add_parser` and `run`.

Exit codes (DESIGN.md): 0 ok, 2 bad input (recipe, path, checkpoint, image) with a message that names
the problem and the fix, 1 anything else.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> module; a module that is not there yet is skipped (its issue adds it).
COMMANDS = {
    "fit": "distill.commands.fit",
    "sample": "distill.commands.sample",
    "eval": "distill.commands.eval",
    "edit": "distill.commands.edit",
    "bench": "distill.commands.bench",
    "shards": "distill.commands.shards",
    "train-teacher": "distill.commands.train_teacher",
    "export": "distill.commands.export",
}


class BadInput(Exception):
    """Raised by commands for input the user must fix; printed without a traceback, exit 2."""


def bad_input_types() -> tuple[type[BaseException], ...]:
    from distill.config import ConfigError
    from distill.export import StudentLoadError
    from teachers.registry import TeacherSpecError

    return (BadInput, ConfigError, StudentLoadError, TeacherSpecError, FileNotFoundError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="distill", description="Distil diffusion models into "
                                     "one- and two-step consistency models.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, mod_name in COMMANDS.items():
        try:
            mod = importlib.import_module(mod_name)
        except ModuleNotFoundError as err:
            if err.name == mod_name:
                continue
            raise
        p = mod.add_parser(sub, name)
        p.set_defaults(_run=mod.run)
    return parser


def set_threads() -> None:
    """Intra-op threads from the CPUs actually free (distill/threads.py); DISTILL_NUM_THREADS overrides."""
    from distill import threads

    try:
        threads.apply(log=lambda message: print(f"distill: {message}", file=sys.stderr, flush=True))
    except ValueError as err:
        raise BadInput(str(err)) from None


def main(argv: list[str] | None = None) -> int:
    from distill.quiet import quiet_third_party

    quiet_third_party()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        set_threads()
        return int(args._run(args) or 0)
    except bad_input_types() as err:
        print(f"distill {args.command}: error: {err}", file=sys.stderr)
        return 2
    except (NotADirectoryError, FileExistsError, IsADirectoryError, PermissionError) as err:
        # A path the user gave that cannot be used: a file among an output's folders, a folder where a file
        # goes, no permission.
        print(f"distill {args.command}: error: {err.filename}: {err.strerror}; check the paths given (a file "
              "where a folder is needed, or the reverse, or no permission)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
