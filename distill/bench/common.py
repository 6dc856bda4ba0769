"""Shared pieces of `distill bench step|sample`: benchmark sizes, a random-weight network teacher, timers.

Benchmarks are not timed tests (DESIGN.md, "Measuring"): they report ratios of times measured in one
process, as medians over repeats, so that load from other processes on a shared machine moves both
sides of a ratio alike. The step benchmark lives in `distill.bench.step`, the sampling one in
`distill.bench.sample`.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from teachers.base import BackboneFeeding, Teacher

# The demo recipe's conv UNet student (until issue 11 moved the demo to an MLP; kept so that docs/benchmarks.md's
# step and sampling tables stay reproducible); its sampling benchmark uses a teacher of the same backbone.
SMALL_UNET = {"name": "small_unet", "width": 32, "channel_mult": [1, 2], "num_blocks": 1, "in_channels": 1}
DEMO_MLP = {"name": "mlp", "dim": 64, "width": 512, "depth": 4}  # today's recipes/demo.yaml student
# NVlabs EDM's CIFAR-10 "vp" backbone (FACTS.md): DDPM++ SongUNet, 55.7M parameters, 42.4 GFLOP per image.
# (Its augmentation-label input, augment_dim 9, is left out: a 9-to-512 linear layer, no cost to speak of.)
DDPMPP_CIFAR10 = {"name": "ddpmpp", "img_resolution": 32, "in_channels": 3, "model_channels": 128,
                  "channel_mult": [2, 2, 2], "num_blocks": 4, "attn_resolutions": [16], "dropout": 0.13}

# size -> what a step (and a sample) is made of. `teacher: digits` is the demo recipe's exact mixture
# teacher; `teacher: network` is a randomly initialised copy of the student's backbone (the cost of a
# pass does not depend on the weights).
SIZES = {
    "demo": {"image_shape": (1, 8, 8), "network": SMALL_UNET, "teacher": "digits", "batch": 32,
             "data": "digits"},
    "demo_mlp": {"image_shape": (1, 8, 8), "network": DEMO_MLP, "teacher": "digits", "batch": 32, "data": "digits"},
    "cifar10": {"image_shape": (3, 32, 32), "network": DDPMPP_CIFAR10, "teacher": "network", "batch": 2,
                "data": "synthetic"},
    # For tests: seconds, not minutes.
    "tiny": {"image_shape": (1, 8, 8), "network": {**SMALL_UNET, "width": 8}, "teacher": "digits",
             "batch": 4, "data": "digits"},
}


class NetworkTeacher(Teacher):
    """An EDM-preconditioned teacher around a freshly initialised network from `teachers.networks`.

    Inputs are cast to the network's dtype (as NVlabs EDM's precond does), so float64 CD targets and
    the float64 Heun sampler run it as they would run a real network teacher.
    """

    def __init__(self, network: dict, image_shape: tuple[int, ...], sigma_min: float = 0.002,
                 sigma_max: float = 80.0, sigma_data: float = 0.5):
        from teachers.networks import build_network

        super().__init__(sigma_min=sigma_min, sigma_max=sigma_max, sigma_data=sigma_data,
                         image_shape=image_shape)
        self.backbone = build_network(**network)
        self.feeding = BackboneFeeding(sigma_data)
        self.requires_grad_(False).eval()
        self.spec = {"name": "bench_random_network", "network": dict(network)}

    def _denoise(self, x: torch.Tensor, sigma: torch.Tensor, cond) -> torch.Tensor:
        dtype = next(self.backbone.parameters()).dtype
        return self.feeding.denoise(self.backbone, x.to(dtype), sigma.to(dtype), cond)


def size_spec(size: str) -> dict:
    if size not in SIZES:
        raise ValueError(f"unknown benchmark size {size!r}; choose one of {', '.join(SIZES)}")
    spec = dict(SIZES[size])
    if spec["network"]["name"] not in _available_networks():
        raise ValueError(f"--size {size} needs the {spec['network']['name']!r} network, which this checkout "
                         f"does not have yet (teachers/networks/); choose --size demo")
    return spec


def _available_networks() -> list[str]:
    from teachers.networks import available_networks

    return available_networks()


def build_teacher(spec: dict):
    if spec["teacher"] == "digits":
        import teachers

        return teachers.load({"name": "digits", "sigma0": 0.0})
    return NetworkTeacher(spec["network"], spec["image_shape"])


def sync(device: torch.device) -> None:
    """Wait for queued device work, so that a wall-clock interval covers it (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def clock_for(device: torch.device, kind: str = "auto") -> Callable[[], float]:
    """The clock a benchmark reads. `auto`: this process's CPU time on the CPU, wall time on a GPU.

    On a shared machine wall time also counts the time slices other processes get (we saw step times
    quantised in ~4 ms scheduler ticks and overheads swinging 5-25%); CPU time counts only this
    process's work, which with one intra-op thread is the wall time it would take on an idle machine.
    """
    if kind == "wall" or (kind == "auto" and device.type != "cpu"):
        return time.perf_counter
    if kind in ("cpu", "auto"):
        return time.process_time
    raise ValueError(f"unknown clock {kind!r}; choose auto, cpu or wall")


def timed(fn: Callable[[], object], device: torch.device, now: Callable[[], float] = time.perf_counter) -> float:
    sync(device)
    start = now()
    fn()
    sync(device)
    return now() - start


def say(message: str) -> None:
    """Progress and human-readable results go to stderr; stdout carries only the JSON."""
    print(message, file=sys.stderr, flush=True)


def median(values) -> float:
    return float(statistics.median(values))


def write_json(result: dict, path: str | None) -> None:
    """Print the result; also write it to `path` when given (its folder is created)."""
    text = json.dumps(result, indent=2)
    print(text)
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text + "\n")
