"""From a config to the pieces of a run: objective (student, predictor, teacher...), masker, datasets."""

from __future__ import annotations

import logging

import numpy as np
from omegaconf import DictConfig

from usjepa.masks import ComplementMasker, build_masker
from usjepa.models import Predictor, build_encoder
from usjepa.models.mae import MAEDecoder
from usjepa.objectives import EMAJEPA, MAE, SALT, Objective

log = logging.getLogger(__name__)


def build_teacher(cfg: DictConfig):
    import teachers

    return teachers.load_spec(cfg.teacher)


def build_objective(cfg: DictConfig, total_steps: int, masker=None) -> Objective:
    student = build_encoder(cfg.model)
    masker = masker or build_masker(cfg.mask, student.grid(cfg.model.img_size))
    n_pairs = len(masker.generators) if isinstance(masker, ComplementMasker) else 1
    oc = cfg.objective
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
        )

    if oc.name == "salt":
        cache = teacher = None
        if cfg.teacher.cache:
            from teachers.cache import TargetCache, expected_cache_identity

            cache = TargetCache(cfg.teacher.cache, expected=expected_cache_identity(cfg))
            out_dim = cache.embed_dim
        else:
            teacher = build_teacher(cfg)
            out_dim = teacher.embed_dim
        return SALT(
            student,
            predictor(out_dim),
            teacher,
            loss=oc.loss,
            target_norm=oc.target_norm,
            smooth_l1_beta=oc.smooth_l1_beta,
            cache=cache,
        )
    if oc.name == "ema_jepa":
        return EMAJEPA(
            student,
            predictor(student.embed_dim),
            total_steps=total_steps,
            momentum=(oc.ema.momentum_start, oc.ema.momentum_end),
            loss=oc.loss,
            target_norm=oc.target_norm,
            smooth_l1_beta=oc.smooth_l1_beta,
        )
    if oc.name == "mae":
        m = oc.mae
        dec = MAEDecoder(
            student.embed_dim,
            student.patch_size,
            student.in_chans,
            embed_dim=m.decoder_dim,
            depth=m.decoder_depth,
            num_heads=m.decoder_heads,
            attn_backend=backend,
        )
        return MAE(student, dec, norm_pix_loss=m.norm_pix_loss)
    raise ValueError(f"unknown objective '{oc.name}'")


def holdout_split(num_items: int, patient_ids, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Carve a held-out validation subset (patient-grouped when patient ids exist): (train idx, val idx)."""
    from usjepa.data.splits import holdout

    return holdout(num_items, patient_ids, fraction, seed + 17)
