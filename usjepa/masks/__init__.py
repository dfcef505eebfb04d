"""Masks are index sets, not modules: samplers for the published recipes and a seeded batch collator.

`mask.sampler=reference` (default) reproduces the reference collators (I-JEPA for the usjepa / ijepa / custom
presets, V-JEPA for salt, MAE for random); `per_sample` draws every image's blocks on their own and pads.
"""

from __future__ import annotations

from usjepa.lazy import lazy_exports
from usjepa.masks.spec import CUSTOM, MASK_PRESETS, SAMPLERS

_EXPORTS = {
    "MaskBatch": "usjepa.masks.collator",
    "MaskCollator": "usjepa.masks.collator",
    "PerSampleSampler": "usjepa.masks.collator",
    "collate_masks": "usjepa.masks.collator",
    "patch_validity": "usjepa.masks.collator",
    "ComplementMasker": "usjepa.masks.multiblock",
    "MultiBlockMasker": "usjepa.masks.multiblock",
    "RandomMasker": "usjepa.masks.multiblock",
    "IJepaMultiBlock": "usjepa.masks.reference",
    "MAERandom": "usjepa.masks.reference",
    "VJepaMultiBlock": "usjepa.masks.reference",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)


def build_masker(mask_cfg, grid: tuple[int, int]):
    """The batch sampler for the `mask:` config section on a patch grid: `sampler(seeds, valid) -> [MaskBatch]`."""
    from usjepa.masks.collator import PerSampleSampler
    from usjepa.masks.multiblock import ComplementMasker, MultiBlockMasker, RandomMasker
    from usjepa.masks.reference import IJepaMultiBlock, MAERandom, VJepaMultiBlock

    region = mask_cfg.region
    tau = int(region.tau) if region.enabled else 1
    if mask_cfg.preset == CUSTOM:
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


__all__ = ["MASK_PRESETS", "SAMPLERS", "build_masker", *_EXPORTS]
