"""Masks are index sets, not modules: samplers for the published recipes and a seeded batch collator.

`mask.sampler=reference` (default) reproduces the reference collators (I-JEPA for the usjepa / ijepa / custom
presets, V-JEPA for salt, MAE for random); `per_sample` draws every image's blocks on their own and pads.
"""

from __future__ import annotations

from usjepa.lazy import lazy_exports
from usjepa.masks.spec import CUSTOM, MASK_KINDS, MASK_PRESETS, MASK_SAMPLERS, SAMPLERS, preset_recipe

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
    """The batch sampler for the `mask:` config section on a patch grid: `sampler(seeds, valid) -> [MaskBatch]`.

    Every name is looked up in the registries of `usjepa.masks.spec` (see `usjepa.masks.kinds`)."""
    recipe = preset_recipe(mask_cfg.preset, mask_cfg)
    kind = recipe.pop("kind")
    settings = MASK_KINDS.get(kind)(recipe, mask_cfg)
    return MASK_SAMPLERS.get(getattr(mask_cfg, "sampler", "reference"))(kind, grid, settings)


__all__ = ["CUSTOM", "MASK_KINDS", "MASK_PRESETS", "MASK_SAMPLERS", "SAMPLERS", "build_masker", "preset_recipe",
           *_EXPORTS]
