"""From a config to the pieces of a run: objective (student, predictor, teacher...), masker, datasets."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np

from usjepa.masks import MaskCollator, build_masker
from usjepa.models import Predictor, build_encoder
from usjepa.objectives.base import Objective, Parts
from usjepa.objectives.spec import OBJECTIVES

if TYPE_CHECKING:
    from usjepa.config import PretrainConfig

log = logging.getLogger(__name__)


def build_teacher(cfg: PretrainConfig):
    import teachers

    return teachers.load_spec(cfg.teacher)


def build_objective(cfg: PretrainConfig, total_steps: int, masker=None) -> Objective:
    student = build_encoder(cfg.model)
    masker = masker or build_masker(cfg.mask, student.grid(cfg.model.img_size))
    n_pairs = masker.num_pairs
    backend = cfg.model.attn_backend

    def predictor(out_dim: int) -> Predictor:
        p = cfg.predictor
        return Predictor(
            in_dim=student.embed_dim,
            out_dim=out_dim,
            embed_dim=p.embed_dim,
            depth=p.depth,
            num_heads=p.num_heads,
            num_mask_tokens=n_pairs,
            per_block=p.per_block,
            attn_backend=backend,
            pos_embed=cfg.model.pos_embed,
            zero_init_mask_tokens=p.zero_init_mask_tokens,
        )

    parts = Parts(student, predictor, lambda: build_teacher(cfg), total_steps)
    return OBJECTIVES.get(cfg.objective.name)(cfg, parts)


def effective_precision(objective: Objective, cfg: PretrainConfig, device, amp: bool) -> dict:
    """What the student and the teacher actually run in on `device` (the teacher says its own), for env.json."""
    student = "bf16" if amp else "fp32"
    teacher = getattr(objective, "teacher", None)
    cache = getattr(objective, "cache", None)
    if teacher is not None and hasattr(teacher, "runs_bf16"):
        teacher_prec = "bf16" if teacher.runs_bf16(device) else "fp32"
    elif cache is not None:
        teacher_prec = f"cached targets ({cache.meta.get('dtype', '?')})"
    elif cfg.objective.name == "ema_jepa":
        teacher_prec = f"{student} (EMA target encoder, under the student's autocast)"
    else:
        teacher_prec = None  # mae: no teacher
    return {"student": student, "teacher": teacher_prec, "device": str(device)}


def build_mask_collator(cfg: PretrainConfig, base_collate) -> MaskCollator:
    """The collator training uses: the configured sampler on the model's patch grid, around `base_collate`."""
    grid = tuple(int(s) // int(cfg.model.patch_size) for s in cfg.model.img_size)
    region = cfg.mask.region
    return MaskCollator(build_masker(cfg.mask, grid), cfg.model.patch_size, base_collate,
                        use_region=region.enabled, min_fraction=region.min_fraction)


def holdout_split(num_items: int, patient_ids, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Carve a held-out validation subset (patient-grouped when patient ids exist): (train idx, val idx)."""
    from usjepa.data.splits import holdout

    return holdout(num_items, patient_ids, fraction, seed + 17)
