"""The teacher zoo: load any frozen teacher checkpoint strictly and safely, behind one registry.

    teacher = teachers.load("urfm", "mae_vit_base_patch16_dec768d8b_all_biomedclip_1199.pth")
    tokens = teacher(images)  # [B, N, D] patch tokens, images in [0, 1] with 1 or 3 channels

Families: native, timm, vit, mae, urfm, dinov2, ijepa, usfm, random (see teachers/README.md).
Importing the package is light: the names below (and the family modules, which register themselves) load on
first use, so `teachers.spec` and `teachers.catalog` can be read without torch.
"""

from __future__ import annotations

from typing import Any

from usjepa.lazy import lazy_exports

_EXPORTS = {
    "PRESETS": "teachers.frozen",
    "FrozenTeacher": "teachers.frozen",
    "FAMILIES": "teachers.registry",
    "Built": "teachers.registry",
    "Family": "teachers.registry",
    "get_family": "teachers.registry",
    "load": "teachers.registry",
    "load_spec": "teachers.registry",
    "register": "teachers.registry",
}
_lazy, __dir__ = lazy_exports(__name__, _EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:  # the zoo is used: every family registers first
        from teachers.registry import load_families

        load_families()
    return _lazy(name)


__all__ = list(_EXPORTS)
