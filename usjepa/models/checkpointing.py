"""Activation checkpointing per transformer block: keep each block's input, recompute its inside in backward.

    from usjepa.models import apply_activation_checkpointing
    apply_activation_checkpointing(objective)        # every Block of the student, predictor or MAE decoder

The switch lives on the blocks (`Block.grad_checkpointing`), not in wrapper modules, so parameter names and
state-dict keys (timm's) do not change, checkpoints written with and without it load into each other, and it
composes with `torch.compile` and FSDP2's per-block `fully_shard`. It only acts while gradients are recorded: a
frozen teacher or an EMA target under `torch.no_grad()` runs as before. The recomputation restores the RNG
state (`torch.utils.checkpoint`, non-reentrant), so drop-path draws and gradients equal those of a plain run.
"""

from __future__ import annotations

from torch import nn

from usjepa.models.layers import Block


def apply_activation_checkpointing(module: nn.Module, enable: bool = True) -> int:
    """Turn per-block checkpointing on (or off) for every `Block` inside `module`; returns how many blocks.

    A SALT objective keeps its teacher outside its module tree, so `apply_activation_checkpointing(objective)`
    reaches the student and the predictor only.
    """
    blocks = [m for m in module.modules() if isinstance(m, Block)]
    for blk in blocks:
        blk.grad_checkpointing = bool(enable)
    return len(blocks)


def checkpointed_blocks(module: nn.Module) -> int:
    """How many blocks inside `module` recompute in backward (for logs and tests)."""
    return sum(1 for m in module.modules() if isinstance(m, Block) and m.grad_checkpointing)
