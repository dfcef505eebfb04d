"""The `mask:` config section and the registries of mask presets, kinds and samplers (light: no torch)."""

from __future__ import annotations

from dataclasses import dataclass, field

from usjepa.registry import Registry
from usjepa.spec import Spec, at_least, interval, within

# the published recipes (method.md): US-JEPA / I-JEPA multi-block, SALT / V-JEPA long-short complement, MAE random.
# A preset's facts are its recipe (`kind` names a MASK_KINDS entry, the rest are that kind's settings); a preset
# with a target builds its recipe from the `mask:` section instead (`custom`).
MASK_PRESETS = Registry("mask preset")
MASK_PRESETS.register(
    "usjepa", summary="US-JEPA multi-block (I-JEPA with smaller targets)",
    kind="multiblock", context_scale=(0.85, 1.0), context_aspect=(1.0, 1.0), target_scale=(0.075, 0.125),
    target_aspect=(0.75, 1.5), num_targets=4, min_keep=10,
)
MASK_PRESETS.register(
    "ijepa", summary="I-JEPA multi-block",
    kind="multiblock", context_scale=(0.85, 1.0), context_aspect=(1.0, 1.0), target_scale=(0.15, 0.2),
    target_aspect=(0.75, 1.5), num_targets=4, min_keep=10,
)
MASK_PRESETS.register("salt", summary="SALT / V-JEPA long-short complement",
                      kind="complement", generators=((8, 0.15), (2, 0.7)), aspect=(0.75, 1.5))
MASK_PRESETS.register("random", summary="MAE random patches (mask.random_ratio)", kind="random")
CUSTOM = "custom"  # mask.preset: the multi-block settings of the `mask:` section itself
MASK_PRESETS.register(CUSTOM, "usjepa.masks.kinds:custom_recipe", summary="the multi-block settings of `mask:`")

# what a recipe's `kind` builds: the target turns (recipe, mask section) into the settings of the kind's classes;
# the facts named like a MASK_SAMPLERS entry name the class that sampler uses for this kind
MASK_KINDS = Registry("mask kind")
MASK_KINDS.register("multiblock", "usjepa.masks.kinds:multiblock_settings", summary="context block minus targets",
                    reference="usjepa.masks.reference:IJepaMultiBlock",
                    per_sample="usjepa.masks.multiblock:MultiBlockMasker")
MASK_KINDS.register("complement", "usjepa.masks.kinds:complement_settings", summary="context = complement of targets",
                    reference="usjepa.masks.reference:VJepaMultiBlock",
                    per_sample="usjepa.masks.multiblock:ComplementMasker")
MASK_KINDS.register("random", "usjepa.masks.kinds:random_settings", summary="a random share of patches",
                    reference="usjepa.masks.reference:MAERandom", per_sample="usjepa.masks.multiblock:RandomMasker")

# a sampler's target: (kind, grid, settings) -> batch sampler `sampler(seeds, valid) -> [MaskBatch]`
MASK_SAMPLERS = Registry("mask sampler")
MASK_SAMPLERS.register("reference", "usjepa.masks.kinds:reference_sampler",
                       summary="the published collators: one block shape per batch, truncated lists")
MASK_SAMPLERS.register("per_sample", "usjepa.masks.kinds:per_sample_sampler",
                       summary="shapes per block and image, lists padded")
SAMPLERS = MASK_SAMPLERS.names()


def preset_recipe(name: str, mask_cfg=None) -> dict:
    """The recipe of mask preset `name` as a new dict (`kind` plus that kind's settings); a preset with a target
    (`custom`) reads it from the `mask:` section `mask_cfg`."""
    if MASK_PRESETS.entry(name).target:
        return dict(MASK_PRESETS.get(name)(mask_cfg))
    return dict(MASK_PRESETS.entry(name).facts)


@dataclass
class RegionMaskConfig(Spec):
    """USrc-JEPA: restrict context and targets to patches inside the ultrasound region (fan)."""

    enabled: bool = False
    min_fraction: float = 0.0  # a patch is valid when more than this share of its pixels is in the region
    tau: int = 4  # a block needs at least tau valid patches, else it is resampled
    max_tries: int = 20

    def check(self) -> None:
        within(self.min_fraction, 0.0, 1.0, "min_fraction", "[)")
        at_least(self.tau, 1, "tau")
        at_least(self.max_tries, 1, "max_tries")


@dataclass
class MaskConfig(Spec):
    preset: str = "usjepa"  # usjepa | ijepa | salt | random | custom
    # reference: the published collators (one block shape per batch, truncation to the batch minimum);
    # per_sample: shapes per block and image, lists padded (milder masking; see the README)
    sampler: str = "reference"
    # custom multi-block settings (used when preset == custom; presets fill these in)
    context_scale: list[float] = field(default_factory=lambda: [0.85, 1.0])
    context_aspect: list[float] = field(default_factory=lambda: [1.0, 1.0])
    target_scale: list[float] = field(default_factory=lambda: [0.075, 0.125])
    target_aspect: list[float] = field(default_factory=lambda: [0.75, 1.5])
    num_targets: int = 4
    min_keep: int = 10
    allow_overlap: bool = False
    random_ratio: float = 0.75  # preset `random`: share of patches masked
    region: RegionMaskConfig = field(default_factory=RegionMaskConfig)

    def check(self) -> None:
        MASK_PRESETS.check(self.preset, "preset")
        MASK_SAMPLERS.check(self.sampler, "sampler")
        interval(self.context_scale, "context_scale", 0.0, 1.0, open_lo=True)
        interval(self.target_scale, "target_scale", 0.0, 1.0, open_lo=True)
        interval(self.context_aspect, "context_aspect", 0.0, open_lo=True)
        interval(self.target_aspect, "target_aspect", 0.0, open_lo=True)
        at_least(self.num_targets, 1, "num_targets")
        at_least(self.min_keep, 0, "min_keep")
        within(self.random_ratio, 0.0, 1.0, "random_ratio", "()")
