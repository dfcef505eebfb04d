"""The teacher zoo's names, importable without torch: families and the module that builds each, input
normalisation presets, precisions and grid resampling modes.

A family module registers its builder with `@teachers.registry.register(name, ...)`; the name must be listed
here too, with the module that holds it, so that configs can be checked (and the zoo loaded) lazily.
"""

from __future__ import annotations

from usjepa.registry import Registry

FAMILY_MODULES = Registry("teacher family")
FAMILY_MODULES.register("native", "teachers.native",
                        "a checkpoint this framework wrote (latest.pt, step_N.pt, best.pt, encoder.safetensors)")
FAMILY_MODULES.alias("usjepa", "native")  # its name until 2026-12: "usjepa" now names only the paper's recipes
FAMILY_MODULES.register("timm", "teachers.timm_family", "any timm model")
FAMILY_MODULES.register("vit", "teachers.vit_family", "plain timm-keyed ViT state dict")
FAMILY_MODULES.register("mae", "teachers.mae", "MAE checkpoint")
FAMILY_MODULES.register("urfm", "teachers.urfm", "URFM ultrasound MAE")
FAMILY_MODULES.register("dinov2", "teachers.dinov2", "DINOv2")
FAMILY_MODULES.register("ijepa", "teachers.ijepa", "I-JEPA target encoder")
FAMILY_MODULES.register("usfm", "teachers.usfm", "USFM ultrasound foundation model")
FAMILY_MODULES.register("random", "teachers.random_vit", "randomly initialised ViT (smoke tests, baselines)")

# name -> (mean, std) per channel in [0, 1] units; "zscore" and "none" are handled in `FrozenTeacher.normalise`.
NORM_PRESETS: dict[str, tuple[tuple[float, ...], tuple[float, ...]] | None] = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    "minus_one_one": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "zscore": None,
    "none": None,
}
MODEL_NORM = "model"  # the statistics the checkpoint (or its timm config) provides
GRID_RESAMPLE = ("auto", "area", "bilinear")
PRECISIONS = ("auto", "bf16", "fp32")
