"""The teacher zoo: load any frozen teacher checkpoint strictly and safely, behind one registry.

    teacher = teachers.load("urfm", "mae_vit_base_patch16_dec768d8b_all_biomedclip_1199.pth")
    tokens = teacher(images)  # [B, N, D] patch tokens, images in [0, 1] with 1 or 3 channels

Families: usjepa, timm, vit, mae, urfm, dinov2, ijepa, usfm, random (see teachers/README.md).
"""

from teachers import dinov2, ijepa, mae, random_vit, timm_family, urfm, usfm, usjepa_family, vit_family  # noqa: F401
from teachers.frozen import PRESETS, FrozenTeacher
from teachers.registry import FAMILIES, Built, Family, get_family, load, load_spec, register

__all__ = ["FAMILIES", "PRESETS", "Built", "Family", "FrozenTeacher", "get_family", "load", "load_spec", "register"]
