"""The `mask:` config section, the published mask recipes (`MASK_PRESETS`) and the samplers (light: no torch)."""

from __future__ import annotations

from dataclasses import dataclass, field

from usjepa.registry import Registry
from usjepa.spec import Spec, at_least, choice, interval, within

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
CUSTOM = "custom"  # mask.preset: the multi-block settings of the `mask:` section itself

MASK_SAMPLERS = Registry("mask sampler")
MASK_SAMPLERS.register("reference", summary="the published collators: one block shape per batch, truncated lists")
MASK_SAMPLERS.register("per_sample", summary="shapes per block and image, lists padded")
SAMPLERS = MASK_SAMPLERS.names()


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
        choice(self.preset, (*MASK_PRESETS, CUSTOM), "preset")
        MASK_SAMPLERS.check(self.sampler, "sampler")
        interval(self.context_scale, "context_scale", 0.0, 1.0, open_lo=True)
        interval(self.target_scale, "target_scale", 0.0, 1.0, open_lo=True)
        interval(self.context_aspect, "context_aspect", 0.0, open_lo=True)
        interval(self.target_aspect, "target_aspect", 0.0, open_lo=True)
        at_least(self.num_targets, 1, "num_targets")
        at_least(self.min_keep, 0, "min_keep")
        within(self.random_ratio, 0.0, 1.0, "random_ratio", "()")
