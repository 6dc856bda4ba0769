"""The learning-rate schedule: linear warm-up, then constant, cosine or linear decay to the run's last step.

A pure function of the optimizer step, so a resumed run continues on the same curve. Short CPU runs gain from
decay: the averaged weights settle while the step size shrinks (measured on the digits demo,
docs/benchmarks.md, "Demo recipe").
"""

from __future__ import annotations

import math


def lr_factor(step: int, *, warmup: int = 0, total: int = 0, schedule: str = "constant",
              final_ratio: float = 0.0) -> float:
    """The multiplier of optim.lr at optimizer step `step` (0-based)."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant" or total <= warmup:
        return 1.0
    frac = min(max(step - warmup, 0) / (total - warmup), 1.0)
    shape = 0.5 * (1 + math.cos(math.pi * frac)) if schedule == "cosine" else 1.0 - frac
    return final_ratio + (1.0 - final_ratio) * shape
