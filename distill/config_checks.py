"""Value checks of a typed recipe: the schema (distill/config.py) checks names and types, these check ranges.

Each failing key gets a ConfigError that names it, the value and what is allowed, before anything is built:
an out-of-range value otherwise ends as a traceback deep in Lightning or torch, or, worse, as a run that
trains NaN (a learning rate of inf) or never stops.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


# key -> (test, what is allowed); values already have the schema's types.
SCALARS: dict[str, tuple[Callable[[object], bool], str]] = {
    "trainer.max_steps": (lambda v: v == -1 or v >= 1, "a positive number of optimizer steps, or -1 (no limit)"),
    "trainer.accumulate_grad_batches": (lambda v: v >= 1, "at least 1"),
    "trainer.log_every_n_steps": (lambda v: v >= 1, "at least 1"),
    "trainer.num_nodes": (lambda v: v >= 1, "at least 1"),
    "trainer.gradient_clip_val": (lambda v: v is None or (_finite(v) and v >= 0), "a finite value >= 0, or null"),
    "optim.lr": (lambda v: _finite(v) and v > 0, "a finite value > 0 (e.g. 5e-4)"),
    "optim.eps": (lambda v: _finite(v) and v > 0, "a finite value > 0"),
    "optim.weight_decay": (lambda v: _finite(v) and v >= 0, "a finite value >= 0"),
    "optim.warmup_steps": (lambda v: v >= 0, ">= 0"),
    "student.sigma_min": (lambda v: _finite(v) and v > 0, "a finite value > 0 (0.002 in EDM units)"),
    "student.sigma_max": (lambda v: _finite(v) and v > 0, "a finite value > 0 (80 in EDM units)"),
    "method.rho": (lambda v: _finite(v) and v > 0, "a finite value > 0"),
    "method.solver_steps": (lambda v: v >= 1, "at least 1"),
    "method.skip": (lambda v: v >= 1, "at least 1"),
    "method.mu0": (lambda v: _finite(v) and 0 < v < 1, "a rate in (0, 1), e.g. 0.9"),
    "method.mu_ref_steps": (lambda v: v is None or v >= 1, "a positive number of steps (800000), or null"),
    "method.total_steps": (lambda v: v is None or v >= 1, "a positive number of steps, or null (trainer.max_steps)"),
    "data.num_workers": (lambda v: v >= 0, ">= 0"),
    "eval.every_n_steps": (lambda v: v >= 0, ">= 0 (0: only at the end)"),
    "eval.grid_every_n_steps": (lambda v: v >= 0, ">= 0 (0: only at the end)"),
    "eval.num": (lambda v: v >= 0, ">= 0"),
    "eval.grid_num": (lambda v: v >= 1, "at least 1"),
    "checkpoint.every_n_steps": (lambda v: v >= 0, ">= 0 (0: only at the end)"),
}


def _sigmas(steps: int) -> Callable[[list], bool]:
    """k-step sampling sigmas: k finite values > 0, strictly decreasing."""
    return lambda v: (len(v) == steps and all(_finite(s) and s > 0 for s in v)
                      and all(a > b for a, b in zip(v[:-1], v[1:])))


LISTS: dict[str, tuple[Callable[[list], bool], str]] = {
    "eval.steps": (lambda v: len(v) > 0 and all(k >= 1 for k in v), "a non-empty list of step counts >= 1"),
    "ema.rates": (lambda v: all(_finite(r) and 0 <= r < 1 for r in v), "rates in [0, 1), e.g. [0.999]"),
    "optim.betas": (lambda v: len(v) == 2 and all(_finite(b) and 0 <= b < 1 for b in v),
                    "two values in [0, 1), e.g. [0.9, 0.999]"),
    "student.sigmas_2": (_sigmas(2), "two finite sigmas > 0, decreasing, the first being sigma_max (80.0)"),
    "student.sigmas_3": (_sigmas(3), "three finite sigmas > 0, decreasing, the first being sigma_max (80.0)"),
}


def check_resolvable(cfg) -> None:
    """Every `${...}` interpolation resolves (a missing key or environment variable, a wrong type)."""
    from distill.config import ConfigError

    try:
        OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or "?"
        raise ConfigError(f"{key}: cannot resolve its value ({str(err).splitlines()[0]}); fix the ${{...}} "
                          "interpolation or write the value itself") from None


def check_values(cfg) -> None:
    from distill.config import ConfigError

    for key, (ok, allowed) in SCALARS.items():
        value = OmegaConf.select(cfg, key)
        if not ok(value):
            raise ConfigError(f"{key}: {value!r} is out of range; it must be {allowed}")
    for key, (ok, allowed) in LISTS.items():
        value = list(OmegaConf.select(cfg, key))
        if not ok(value):
            raise ConfigError(f"{key}: {value!r} is out of range; it must be {allowed}")
