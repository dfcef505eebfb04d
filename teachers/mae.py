"""Family `mae`: MAE-style ViTs as published by MAE, USF-MAE and UltraFedFM.

Files are flat state dicts or hold them under `model` (MAE, UltraFedFM); they may carry the pixel
decoder (`decoder_*`) and `mask_token` (MAE "full" files, USF-MAE), which a teacher drops. Encoder keys
are timm ViT names with a CLS token and a fixed sin-cos `pos_embed` that has a (zero) CLS slot.
"""

from __future__ import annotations

from collections.abc import Sequence

from teachers.loading import PREFIXES, WRAPPER_KEYS
from teachers.registry import Built, register
from teachers.vit_state import bicubic_resample, build_timm_vit, read_state

MAE_DROP = ("mask_token", "decoder_*", "decoder.*")
# head counts of the published MAE-style encoders at their widths (MAE, USF-MAE, UltraFedFM, URFM)
MAE_HEADS = {768: (12, "MAE-style ViT-B/16 (MAE, USF-MAE, UltraFedFM, URFM)"), 1024: (16, "MAE-style ViT-L/16"),
             1280: (16, "MAE ViT-H/14")}


def build_mae_style(checkpoint: str, *, family: str, drop: Sequence[str], unwrap_keys: Sequence[str], strict: bool,
                    which: str, prefixes: Sequence[str], **arch) -> Built:
    """Shared by `mae` and `urfm`: unwrap, strip, then a strict timm ViT with the MAE position convention."""
    state, report = read_state(checkpoint, unwrap_keys=unwrap_keys, which=which, prefixes=tuple(prefixes) or PREFIXES)
    return build_timm_vit(state, report, family=family, drop=drop, strict=strict, resample=bicubic_resample,
                          family_heads=MAE_HEADS, **arch)


@register("mae", default_norm="imagenet", drop=MAE_DROP,
          summary="MAE-style ViT (MAE, USF-MAE, UltraFedFM): flat or under 'model'; decoder and mask_token dropped")
def build_mae(checkpoint: str, *, strict: bool = True, arch: str = "", embed_dim: int = 0, depth: int = 0,
              num_heads: int = 0, patch_size: int = 0, which: str = "", drop: Sequence[str] = (),
              prefixes: Sequence[str] = (), native_grid: Sequence[int] = ()) -> Built:
    return build_mae_style(checkpoint, family="mae", drop=MAE_DROP + tuple(drop), unwrap_keys=WRAPPER_KEYS,
                           strict=strict, which=which, prefixes=prefixes, arch=arch, embed_dim=embed_dim,
                           depth=depth, num_heads=num_heads, patch_size=patch_size, native_grid=native_grid)
