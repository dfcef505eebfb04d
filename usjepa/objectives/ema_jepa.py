"""I-JEPA baseline: the target encoder is an EMA of the student (momentum schedule), targets layer-normalised."""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import Tensor, nn

from usjepa.objectives.base import (
    Objective,
    Parts,
    gather_targets,
    masked_token_loss,
    normalise_targets,
    pooled_features,
)


class EMAJEPA(Objective):
    name = "ema_jepa"

    def __init__(
        self,
        student: nn.Module,
        predictor: nn.Module,
        total_steps: int,
        momentum: tuple[float, float],
        loss: str = "smooth_l1",
        target_norm: str = "layernorm",
        smooth_l1_beta: float = 1.0,
    ):
        super().__init__()
        self.student = student
        self.predictor = predictor
        self.target_encoder = copy.deepcopy(student)
        self.target_encoder.requires_grad_(False)
        self.momentum = np.linspace(momentum[0], momentum[1], total_steps + 1)  # indexed by step
        self.loss_kind = loss
        self.beta = smooth_l1_beta
        self.target_norm = target_norm

    def trainable_modules(self) -> dict[str, nn.Module]:
        return {"model": self.student, "predictor": self.predictor}

    def frozen_state(self) -> dict[str, nn.Module]:
        return {"target_encoder": self.target_encoder}

    def train(self, mode: bool = True):
        super().train(mode)
        self.target_encoder.eval()
        return self

    def forward(self, batch: dict) -> tuple[Tensor, dict]:
        images = batch["image"]
        grid = self.student.grid(images.shape[-2:])
        with torch.no_grad():
            full = normalise_targets(self.target_encoder(images), self.target_norm)
        losses, feats = [], []
        for i, m in enumerate(batch["masks"]):
            z = self.student(images, m.context, m.context_valid, m.context_lengths)
            pred = self.predictor(z, m.context, m.targets, grid, m.context_valid, m.targets_valid, mask_index=i,
                                  context_lengths=m.context_lengths, targets_lengths=m.targets_lengths)
            losses.append(masked_token_loss(pred, gather_targets(full, m), m.targets_valid, self.loss_kind, self.beta))
            feats.append(pooled_features(z.detach(), m.context_valid))
        return torch.stack(losses).mean(), {"features": feats[0]}

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        m = float(self.momentum[min(step, len(self.momentum) - 1)])
        s_params = list(self.student.parameters())
        t_params = list(self.target_encoder.parameters())
        torch._foreach_mul_(t_params, m)
        torch._foreach_add_(t_params, s_params, alpha=1.0 - m)


def from_config(cfg, parts: Parts) -> EMAJEPA:
    """EMA-JEPA from a run config: a predictor back onto the student's width, momentum over `total_steps`."""
    oc = cfg.objective
    return EMAJEPA(parts.student, parts.predictor(parts.student.embed_dim), total_steps=parts.total_steps,
                   momentum=(oc.ema.momentum_start, oc.ema.momentum_end), loss=oc.loss, target_norm=oc.target_norm,
                   smooth_l1_beta=oc.smooth_l1_beta)
