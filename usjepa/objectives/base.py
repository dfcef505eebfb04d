"""What every objective shares: the latent regression loss, per-sample averaging, and the module interface."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from usjepa.masks import MaskBatch
from usjepa.models.layers import gather_tokens
from usjepa.objectives.spec import LOSSES, TARGET_NORMS


@dataclass
class Parts:
    """What `build_objective` hands an objective's `from_config`: the student and builders of shared pieces."""

    student: nn.Module
    predictor: Callable[[int], nn.Module]  # out_dim -> a predictor from the student's tokens
    teacher: Callable[[], nn.Module]  # the configured frozen teacher (built only when called)
    total_steps: int


class Objective(nn.Module):
    """A training method as a small module: `forward(batch) -> (loss, logs)` plus the bits the loop needs.

    Subclasses set `student` (the encoder being trained) and list their trainable parts in
    `trainable_modules`; frozen parts (a teacher, an EMA target) are held but never optimised.
    """

    name = "base"
    student: nn.Module

    def trainable_modules(self) -> dict[str, nn.Module]:
        raise NotImplementedError

    def frozen_state(self) -> dict[str, nn.Module]:
        """Non-trained modules whose state must be checkpointed (e.g. an EMA target); not a frozen teacher."""
        return {}

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        """Called after each optimizer step (EMA updates)."""


def masked_token_loss(pred: Tensor, target: Tensor, valid: Tensor | None, kind: str, beta: float = 1.0) -> Tensor:
    """pred/target [B, T, K, D], valid [B, T, K] -> scalar.

    Mean over features, then over each block's real tokens, then over blocks, then over samples: every
    sample weighs the same whatever its mask size, which keeps DDP and accumulation exact.
    """
    pred = pred.float()
    target = target.float()
    if kind not in _ELEMENTWISE:
        raise ValueError(f"unknown loss '{kind}'; use one of {', '.join(LOSSES)}")
    elem = _ELEMENTWISE[kind](pred, target, beta)  # [B, T, K, D]
    per_token = elem.mean(-1)  # [B, T, K]
    if valid is None:
        per_block = per_token.mean(-1)
    else:
        w = valid.float()
        per_block = (per_token * w).sum(-1) / w.sum(-1).clamp_min(1.0)  # [B, T]
    return per_block.mean(-1).mean()


def l1_elements(pred: Tensor, target: Tensor, beta: float) -> Tensor:
    return (pred - target).abs()


def smooth_l1_elements(pred: Tensor, target: Tensor, beta: float) -> Tensor:
    return F.smooth_l1_loss(pred, target, reduction="none", beta=beta)


def l2_elements(pred: Tensor, target: Tensor, beta: float) -> Tensor:
    return (pred - target).pow(2)


# name -> elementwise loss, resolved once from the LOSSES registry (a plain dict lookup in the step, compile-friendly)
_ELEMENTWISE = {name: LOSSES.get(name) for name in LOSSES}


def normalise_targets(h: Tensor, kind: str) -> Tensor:
    """Non-affine LayerNorm per token (I-JEPA / V-JEPA targets), or nothing; float32 either way. The one
    definition: the objectives and the teacher's target cache both use it, so cached targets match live ones."""
    if kind not in TARGET_NORMS:
        raise ValueError(f"unknown target norm '{kind}'; use one of {', '.join(TARGET_NORMS)}")
    return F.layer_norm(h.float(), (h.shape[-1],)) if kind == "layernorm" else h.float()


def gather_targets(full: Tensor, m: MaskBatch) -> Tensor:
    """full [B, N, D] teacher tokens -> [B, T, Kt, D] at the target indices of one mask pair."""
    B, T, Kt = m.targets.shape
    return gather_tokens(full, m.targets.reshape(B, T * Kt)).reshape(B, T, Kt, -1)


def pooled_features(z: Tensor, valid: Tensor | None) -> Tensor:
    """Mean of a sample's real tokens: [B, K, D] -> [B, D] (for collapse diagnostics)."""
    if valid is None:
        return z.mean(1)
    w = valid.unsqueeze(-1).to(z.dtype)
    return (z * w).sum(1) / w.sum(1).clamp_min(1.0)
