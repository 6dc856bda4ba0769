"""Recipe switches for large runs: compile, activation checkpointing, teacher precision, strategy checks.

Each keeps checkpoint keys unchanged, so a run can turn a switch on or off across a resume.
"""

from __future__ import annotations

import functools

import torch
from torch import nn


def compile_student(student: nn.Module, **compile_kwargs) -> None:
    """`student.compile: true`. In place (`nn.Module.compile`): `torch.compile(m)` would return a wrapper
    whose state-dict keys gain `_orig_mod.` (FACTS.md), breaking checkpoints and exports."""
    student.net.compile(**compile_kwargs)


def checkpoint_blocks(net: nn.Module) -> int:
    """`student.checkpointing: true`: recompute each block's activations in the backward pass.

    The blocks are the entries of the network's ModuleLists/ModuleDicts (SongUNet's enc/dec, ADM's
    input/output blocks, the MLP's layers): checkpointing the whole network at once would rebuild every
    activation at once in the backward pass and save nothing. torch's CheckpointWrapper (the one
    Lightning's FSDP `activation_checkpointing_policy` uses) strips its own prefix from state-dict keys, so
    checkpoints and exports keep their names; non-reentrant checkpointing works under DDP, FSDP and
    compile, and a deep copy of the wrapped network stays correct. Returns the number of blocks wrapped.
    """
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
        CheckpointImpl,
        apply_activation_checkpointing,
        checkpoint_wrapper,
    )

    blocks = {id(block) for m in net.modules() if isinstance(m, (nn.ModuleList, nn.ModuleDict))
              for block in (m.values() if isinstance(m, nn.ModuleDict) else m)
              if any(True for _ in block.parameters())}
    wrap = functools.partial(checkpoint_wrapper, checkpoint_impl=CheckpointImpl.NO_REENTRANT)
    apply_activation_checkpointing(net, checkpoint_wrapper_fn=wrap, check_fn=lambda m: id(m) in blocks)
    return len(blocks)


def teacher_outside_autocast(teacher) -> None:
    """Keep the teacher in its own precision under `trainer.precision: *-mixed`.

    Lightning runs training_step under torch.autocast, which would run the teacher's matmuls in
    bf16/fp16 and put that rounding into the CD target; the target is meant to be computed in
    method.target_dtype. Set `teacher.autocast: true` in the recipe to let it run in mixed precision
    (faster for big teachers)."""
    inner = teacher.denoise

    @functools.wraps(inner)
    def denoise(x, sigma, cond=None):
        with torch.autocast(x.device.type, enabled=False):
            return inner(x, sigma, cond)

    teacher.denoise = denoise


def check_strategy(trainer_cfg) -> None:
    """Fail early, naming the key, where Lightning would fail late or obscurely."""
    from distill.config import ConfigError

    strategy = str(trainer_cfg.strategy)
    if strategy.startswith("fsdp"):
        on_cpu = trainer_cfg.accelerator == "cpu" or (trainer_cfg.accelerator == "auto" and
                                                       not torch.cuda.is_available())
        if on_cpu:
            # lightning 2.6 refuses it (trainer/connectors/accelerator_connector.py: "requires a GPU
            # accelerator"); say so before anything is built.
            raise ConfigError("trainer.strategy=fsdp needs CUDA GPUs: Lightning's FSDP strategy does not "
                              "run on the CPU accelerator. Use trainer.strategy=ddp on CPUs; on a GPU machine "
                              "run scripts/fsdp_gpu_check.py to check FSDP there.")
