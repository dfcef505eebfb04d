"""SALT (stage 2): a frozen teacher sees the whole image; the student sees the context; the predictor regresses
the teacher's (layer-normalised) latents at the target patches. No EMA, no stop-gradient games."""

from __future__ import annotations

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


class SALT(Objective):
    name = "salt"

    def __init__(
        self,
        student: nn.Module,
        predictor: nn.Module,
        teacher: nn.Module | None,
        loss: str = "l1",
        target_norm: str = "layernorm",
        smooth_l1_beta: float = 1.0,
        cache=None,
    ):
        super().__init__()
        if teacher is None and cache is None:
            raise ValueError("SALT needs a frozen teacher or a target cache")
        self.student = student
        self.predictor = predictor
        # the teacher is held outside the module tree: it is not in state_dict(), the optimizer, DDP or .train()
        self.__dict__["teacher"] = teacher
        self.cache = cache
        self.loss_kind = loss
        self.beta = smooth_l1_beta
        self.target_norm = target_norm

    def trainable_modules(self) -> dict[str, nn.Module]:
        return {"model": self.student, "predictor": self.predictor}

    def _apply(self, fn, recurse=True):  # keep the teacher on the student's device/dtype moves
        super()._apply(fn, recurse)
        if self.teacher is not None:
            self.teacher._apply(fn)
        return self

    @torch.no_grad()
    def targets(self, batch: dict, grid: tuple[int, int]) -> Tensor:
        """[B, N, D] teacher targets on the student's patch grid, normalised."""
        if self.cache is not None:
            return self.cache.get(batch["index"]).to(batch["image"].device)  # stored normalised
        h = self.teacher.tokens_on_grid(batch["image"], grid)
        return normalise_targets(h, self.target_norm)

    def forward(self, batch: dict) -> tuple[Tensor, dict]:
        images = batch["image"]
        grid = self.student.grid(images.shape[-2:])
        full = self.targets(batch, grid)
        losses, feats = [], []
        for i, m in enumerate(batch["masks"]):
            z = self.student(images, m.context, m.context_valid, m.context_lengths)  # [B, Kc, D]
            pred = self.predictor(z, m.context, m.targets, grid, m.context_valid, m.targets_valid, mask_index=i,
                                  context_lengths=m.context_lengths, targets_lengths=m.targets_lengths)
            losses.append(masked_token_loss(pred, gather_targets(full, m), m.targets_valid, self.loss_kind, self.beta))
            feats.append(pooled_features(z.detach(), m.context_valid))
        return torch.stack(losses).mean(), {"features": feats[0]}


def from_config(cfg, parts: Parts) -> SALT:
    """SALT from a run config: the frozen teacher (or its target cache) and a predictor onto its width."""
    oc = cfg.objective
    cache = teacher = None
    if cfg.teacher.cache:
        from teachers.cache import TargetCache, expected_cache_identity

        cache = TargetCache(cfg.teacher.cache, expected=expected_cache_identity(cfg))
        out_dim = cache.embed_dim
    else:
        teacher = parts.teacher()
        out_dim = teacher.embed_dim
    return SALT(parts.student, parts.predictor(out_dim), teacher, loss=oc.loss, target_norm=oc.target_norm,
                smooth_l1_beta=oc.smooth_l1_beta, cache=cache)
