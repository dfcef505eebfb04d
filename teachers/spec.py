"""The `teacher:` config section (owned by the teacher zoo; light: reads teachers.catalog, no torch)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from teachers.catalog import FAMILY_MODULES, GRID_RESAMPLE, MODEL_NORM, NORM_PRESETS, PRECISIONS
from usjepa.spec import Spec, at_least, choice, key

log = logging.getLogger(__name__)


@dataclass
class TeacherConfig(Spec):
    family: str = ""  # native | timm | vit | mae | urfm | dinov2 | ijepa | usfm | random
    checkpoint: str = ""
    arch: str = ""  # architecture name where the family needs one (timm model name, vit_base, ...)
    patch_size: int = 0  # 0 = the family's default
    norm: str = ""  # preset: imagenet | clip | minus_one_one | zscore | none | model ("" = family default)
    layer: int = -1  # block whose output is the target (-1 = last)
    mean_last_k: int = 1  # average the outputs of the last k blocks
    final_norm: bool = True  # apply the encoder's final norm to the chosen layer
    precision: str = "auto"  # auto (bf16 where the GPU / CPU has bf16 units) | bf16 | fp32; targets are float32
    cache: str = ""  # directory of precomputed targets (usjepa teacher cache); "" = run the teacher live
    # family options (which, drop, prefixes, num_heads, native_grid, seed, img_size, ...) and grid_resample
    options: dict = field(default_factory=dict)

    def check(self) -> None:
        if self.family:
            FAMILY_MODULES.check(self.family, "family")
            current = FAMILY_MODULES.canonical(self.family)
            if current != self.family:  # a former name: the spec (and what the run writes) says the current one
                log.warning("%s=%s is now called %s (the old name still works)", key("family"), self.family, current)
                object.__setattr__(self, "family", current)
        if self.norm:  # "": the family's default
            choice(self.norm, (*NORM_PRESETS, MODEL_NORM), "norm")
        choice(self.precision, PRECISIONS, "precision")
        at_least(self.patch_size, 0, "patch_size", " (0: the family's default)")
        at_least(self.mean_last_k, 1, "mean_last_k")
        if "grid_resample" in self.options:
            choice(self.options["grid_resample"], GRID_RESAMPLE, "options.grid_resample")
