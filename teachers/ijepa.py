"""Family `ijepa`: I-JEPA training checkpoints (`.pth.tar` with encoder / predictor / target_encoder / opt ...).

The teacher is `target_encoder` (the EMA network I-JEPA evaluates) unless `which=encoder`. Modules were
saved inside DDP, so keys start with `module.`. The ViT has no CLS token and a fixed sin-cos `pos_embed`
without a CLS slot; other grids are reached by bicubic interpolation by output size. (I-JEPA's own
`interpolate_pos_encoding` treats the first position as a CLS slot, which it is not; we do not copy that.)
"""

from __future__ import annotations

from collections.abc import Sequence

from teachers.loading import PREFIXES
from teachers.registry import Built, register
from teachers.vit_state import bicubic_resample, build_timm_vit, read_state

IJEPA_UNWRAP = ("target_encoder", "encoder", "model", "state_dict")
IJEPA_HEADS = {1280: (16, "I-JEPA ViT-H"), 1408: (16, "I-JEPA ViT-g/16")}


@register("ijepa", default_norm="imagenet", drop=(),
          summary="I-JEPA checkpoint: 'target_encoder' (or which=encoder), 'module.' prefixes, no CLS token")
def build_ijepa(checkpoint: str, *, strict: bool = True, arch: str = "", embed_dim: int = 0, depth: int = 0,
                num_heads: int = 0, patch_size: int = 0, which: str = "", drop: Sequence[str] = (),
                prefixes: Sequence[str] = (), native_grid: Sequence[int] = ()) -> Built:
    state, report = read_state(checkpoint, unwrap_keys=IJEPA_UNWRAP, which=which, prefixes=tuple(prefixes) or PREFIXES)
    return build_timm_vit(state, report, family="ijepa", drop=tuple(drop), strict=strict, resample=bicubic_resample,
                          arch=arch, embed_dim=embed_dim, depth=depth, num_heads=num_heads, patch_size=patch_size,
                          native_grid=native_grid, family_heads=IJEPA_HEADS)
