"""One optimizer step over its micro-batches: shared by the training loop and the benchmarks (same code path)."""

from __future__ import annotations

import contextlib

import torch
from torch import nn


def autocast_context(device: torch.device, enabled: bool):
    """bf16 autocast (CUDA, or a CPU with bf16 units when asked) or nothing."""
    if enabled:
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def train_step(
    model: nn.Module,
    micro_batches,
    params: list[torch.Tensor],
    clip_grad: float,
    amp: bool,
    device: torch.device,
    distributed: bool = False,
) -> tuple[torch.Tensor, dict, torch.Tensor]:
    """Forward/backward every micro-batch (gradients averaged), clip. Returns (loss, logs, grad norm).

    `model` is the objective itself or its DDP wrapper; gradient sync happens on the last micro-batch only.
    The optimizer step and the EMA hook follow in `apply_update`.
    """
    losses, logs = [], {}
    n = len(micro_batches)
    for a, batch in enumerate(micro_batches):
        sync = model.no_sync() if (distributed and a < n - 1) else contextlib.nullcontext()
        with sync:
            with autocast_context(device, amp):
                loss, logs = model(batch)
            (loss / n).backward()
        losses.append(loss.detach().float())
    gnorm = torch.nn.utils.clip_grad_norm_(params, clip_grad if clip_grad > 0 else float("inf"))
    if hasattr(gnorm, "full_tensor"):  # FSDP2 shards: the norm is a replicated DTensor
        gnorm = gnorm.full_tensor()
    return torch.stack(losses).mean(), logs, gnorm


def apply_update(objective: nn.Module, optimizer: torch.optim.Optimizer, step: int) -> None:
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    objective.after_step(step)
