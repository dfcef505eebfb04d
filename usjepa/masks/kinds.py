"""The implementations the mask registries (`usjepa.masks.spec`) name: a preset's recipe, a kind's settings, and
a sampler that builds the kind's class.

`build_masker` reads them in a fixed order: preset -> recipe (`kind` + settings) -> MASK_KINDS[kind] turns the
recipe and the `mask:` section into constructor arguments -> MASK_SAMPLERS[sampler] builds the batch sampler.
A new kind or sampler is a function here (or anywhere importable) plus one `register` line in the spec module.
"""

from __future__ import annotations

from typing import Any

from usjepa.masks.spec import MASK_KINDS


def custom_recipe(mask_cfg) -> dict[str, Any]:
    """`mask.preset=custom`: the multi-block settings of the `mask:` section itself."""
    return dict(
        kind="multiblock",
        context_scale=tuple(mask_cfg.context_scale),
        context_aspect=tuple(mask_cfg.context_aspect),
        target_scale=tuple(mask_cfg.target_scale),
        target_aspect=tuple(mask_cfg.target_aspect),
        num_targets=mask_cfg.num_targets,
        min_keep=mask_cfg.min_keep,
    )


def _region(mask_cfg) -> dict[str, int]:
    """USrc-JEPA region settings: a block needs `tau` valid patches (1, i.e. any, when the region is off)."""
    region = mask_cfg.region
    return {"tau": int(region.tau) if region.enabled else 1, "max_tries": region.max_tries}


def multiblock_settings(recipe: dict, mask_cfg) -> dict[str, Any]:
    return {**recipe, "allow_overlap": mask_cfg.allow_overlap, **_region(mask_cfg)}


def complement_settings(recipe: dict, mask_cfg) -> dict[str, Any]:
    return {**recipe, **_region(mask_cfg)}


def random_settings(recipe: dict, mask_cfg) -> dict[str, Any]:
    return {**recipe, "ratio": mask_cfg.random_ratio}


def reference_sampler(kind: str, grid: tuple[int, int], settings: dict):
    """`mask.sampler=reference`: the kind's published collator (one block shape per batch, truncation)."""
    return MASK_KINDS.get(kind, "reference")(grid=grid, **settings)


def per_sample_sampler(kind: str, grid: tuple[int, int], settings: dict):
    """`mask.sampler=per_sample`: the kind's per-image sampler, lists padded to the batch's longest."""
    from usjepa.masks.collator import PerSampleSampler

    return PerSampleSampler(MASK_KINDS.get(kind, "per_sample")(grid=grid, **settings))
