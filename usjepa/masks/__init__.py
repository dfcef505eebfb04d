"""Masks are index sets, not modules: samplers for the published recipes and a seeded batch collator.

`mask.sampler=reference` (default) reproduces the reference collators (I-JEPA for the usjepa / ijepa / custom
presets, V-JEPA for salt, MAE for random); `per_sample` draws every image's blocks on their own and pads.
"""

from __future__ import annotations

from usjepa.masks.collator import MaskBatch, MaskCollator, PerSampleSampler, collate_masks, patch_validity
from usjepa.masks.multiblock import ComplementMasker, MultiBlockMasker, RandomMasker
from usjepa.masks.reference import IJepaMultiBlock, MAERandom, VJepaMultiBlock

SAMPLERS = ("reference", "per_sample")

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
    """The batch sampler for the `mask:` config section on a patch grid: `sampler(seeds, valid) -> [MaskBatch]`."""
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
    reference = getattr(mask_cfg, "sampler", "reference") == "reference"
    if kind == "multiblock":
        cls = IJepaMultiBlock if reference else MultiBlockMasker
        masker = cls(grid=grid, allow_overlap=mask_cfg.allow_overlap, tau=tau, max_tries=region.max_tries, **p)
    elif kind == "complement":
        cls = VJepaMultiBlock if reference else ComplementMasker
        masker = cls(grid=grid, tau=tau, max_tries=region.max_tries, **p)
    else:
        masker = (MAERandom if reference else RandomMasker)(grid=grid, ratio=mask_cfg.random_ratio)
    return masker if reference else PerSampleSampler(masker)


__all__ = [
    "MASK_PRESETS",
    "SAMPLERS",
    "IJepaMultiBlock",
    "VJepaMultiBlock",
    "MAERandom",
    "PerSampleSampler",
    "MaskBatch",
    "MaskCollator",
    "MultiBlockMasker",
    "ComplementMasker",
    "RandomMasker",
    "build_masker",
    "collate_masks",
    "patch_validity",
]
