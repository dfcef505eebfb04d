"""Masks are index sets, not modules: samplers for the published recipes and a seeded batch collator."""

from __future__ import annotations

from usjepa.masks.collator import MaskBatch, MaskCollator, collate_masks, patch_validity
from usjepa.masks.multiblock import ComplementMasker, MultiBlockMasker, RandomMasker

# the published recipes (method.md): US-JEPA / I-JEPA multi-block, SALT / V-JEPA long-short complement, MAE random
MASK_PRESETS: dict[str, dict] = {
    "usjepa": dict(
        kind="multiblock",
        context_scale=(0.85, 1.0),
        context_aspect=(1.0, 1.0),
        target_scale=(0.075, 0.125),
        target_aspect=(0.75, 1.5),
        num_targets=4,
        min_keep=10,
    ),
    "ijepa": dict(
        kind="multiblock",
        context_scale=(0.85, 1.0),
        context_aspect=(1.0, 1.0),
        target_scale=(0.15, 0.2),
        target_aspect=(0.75, 1.5),
        num_targets=4,
        min_keep=10,
    ),
    "salt": dict(kind="complement", generators=((8, 0.15), (2, 0.7)), aspect=(0.75, 1.5)),
    "random": dict(kind="random"),
}


def build_masker(mask_cfg, grid: tuple[int, int]):
    """A sampler for the `mask:` config section on a patch grid."""
    region = mask_cfg.region
    tau = int(region.tau) if region.enabled else 1
    if mask_cfg.preset == "custom":
        p = dict(
            kind="multiblock",
            context_scale=tuple(mask_cfg.context_scale),
            context_aspect=tuple(mask_cfg.context_aspect),
            target_scale=tuple(mask_cfg.target_scale),
            target_aspect=tuple(mask_cfg.target_aspect),
            num_targets=mask_cfg.num_targets,
            min_keep=mask_cfg.min_keep,
        )
    else:
        p = dict(MASK_PRESETS[mask_cfg.preset])
    kind = p.pop("kind")
    if kind == "multiblock":
        return MultiBlockMasker(
            grid=grid, allow_overlap=mask_cfg.allow_overlap, tau=tau, max_tries=region.max_tries, **p
        )
    if kind == "complement":
        return ComplementMasker(grid=grid, tau=tau, max_tries=region.max_tries, **p)
    return RandomMasker(grid=grid, ratio=mask_cfg.random_ratio)


__all__ = [
    "MASK_PRESETS",
    "MaskBatch",
    "MaskCollator",
    "MultiBlockMasker",
    "ComplementMasker",
    "RandomMasker",
    "build_masker",
    "collate_masks",
    "patch_validity",
]
